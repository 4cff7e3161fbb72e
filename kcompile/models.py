"""Models: `Model`, the base of trainable stacks of layers, and `Sequential`.

A model is a layer (it traces like one) plus the trainer (compile / fit / evaluate / predict).  A
Sequential model knows its input shape from an `Input(...)` first element, `input_shape=` on its
first layer, `model.build(...)`, or else the first data it sees (as Keras builds it on first call);
it builds each layer as soon as the shape reaching it is known, drawing the weights in layer order.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import weakref

import numpy as np

from ir import Node
from ir import build as B

from kcompile import layers as layers_module
from kcompile import saving
from kcompile.saving import load_model, model_from_json  # noqa: F401  (as keras.models)


def save_model(model, filepath, overwrite=True, **kwargs):
    """`model.save(filepath)` (Keras's `keras.models.save_model`)."""
    model.save(filepath, overwrite=overwrite, **kwargs)

from kcompile.layers.core import InputLayer, SymbolicTensor
from kcompile.layers.layer import Layer, format_shape, normalize_input_shape, weight_list
from kcompile.trainer import Trainer, _holding_state
from kcompile.inspection import InspectionMixin


class _Unsupported(AttributeError, NotImplementedError):
    """An attribute of Keras that kcompile does not have: `hasattr` is False, and the message says
    why."""


class _NoLayers(IndexError, TypeError):
    """pop() on a Sequential model without layers."""


@contextlib.contextmanager
def _keras_file():
    """A path for a `.keras` file in a temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="kcompile-pickle-") as directory:
        yield os.path.join(directory, "model.keras")


def _from_keras_bytes(data: bytes):
    """The model whose `.keras` file holds `data` (how Model.__reduce__ unpickles)."""
    with _keras_file() as path:
        with open(path, "wb") as f:
            f.write(data)
        return load_model(path)


def _owners(layer) -> "weakref.WeakSet":
    """The models that hold `layer` (Layer._on_structure_change tells each of them)."""
    owners = layer.__dict__.get("_models")
    if owners is None:
        owners = layer._models = weakref.WeakSet()
    return owners


class Model(InspectionMixin, Trainer, Layer):
    """Base class of models.  Use `Sequential`; the functional API is not supported yet."""

    _is_model = True   # (its layers are its own: see Layer._refuse_sublayers)

    def __init__(self, *args, name=None, trainable=True, **kwargs):
        if args or "inputs" in kwargs or "outputs" in kwargs:
            raise NotImplementedError("Model(inputs, outputs) (the functional API) is not supported yet; "
                                      "use Sequential([Input(shape=...), layer, ...]).")
        if type(self) is not Model and not isinstance(self, Sequential):
            raise NotImplementedError(
                f"{type(self).__name__} subclasses kcompile.Model: a model defined by its own call() "
                "is not supported yet. Subclass Sequential instead, or put the layers in "
                "Sequential([Input(shape=...), layer, ...]) (a custom step of layers can be one "
                "custom Layer with a call()).")
        Layer.__init__(self, name=name, trainable=trainable, **kwargs)
        Trainer.__init__(self)

    @property
    def layers(self) -> list:
        return []

    def _set_trainable(self, value: bool):
        # As Keras: freezing (or unfreezing) a model sets every layer's flag, so a frozen
        # BatchNormalization also runs in inference mode and keeps its moving statistics.
        for layer in self.layers:
            layer.trainable = value
        Layer._set_trainable(self, value)

    @property
    def weights(self) -> list:
        return [w for layer in self.layers for w in layer.weights]

    @property
    def inputs(self):
        raise _Unsupported("model.inputs and model.outputs are symbolic tensors of the functional API, "
                           "which kcompile does not support yet; use model.input_shape / "
                           "model.output_shape, or model.layers")

    outputs = inputs
    input = output = inputs     # (Keras's single-tensor spellings)

    def reset_metrics(self):
        """Metrics are computed afresh by every fit, evaluate and *_on_batch; what is left to reset
        is the last result, which `get_metrics_result()` and the objects in `metrics` then give as
        zeros (as Keras's reset state reads)."""
        if getattr(self, "_metrics_result", None):
            self._metrics_result = {name: 0.0 for name in self._metrics_result}
        self._reset_metric_objects()

    @property
    def trainable_weights(self) -> list:
        if not self.trainable:
            return []
        return [w for layer in self.layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self) -> list:
        if not self.trainable:
            return self.weights
        return [w for layer in self.layers for w in layer.non_trainable_weights]

    def _known_input_shape(self):
        return None

    def _ensure_built(self, input_shape):
        if not self.built:
            self.build(input_shape)

    def get_layer(self, name=None, index=None):
        if name is not None and index is not None:
            raise ValueError("Provide only a layer name or a layer index. Received: "
                             f"index={index}, name={name!r}.")
        if name is None and index is None:
            raise ValueError("Provide either a layer name or layer index at `get_layer`.")
        if index is not None:
            if not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"Was asked to retrieve layer at index {index} but model only has "
                                 f"{len(self.layers)} layers.")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"No such layer: {name!r}. Existing layers are: "
                         f"{[layer.name for layer in self.layers]}.")

    # NOTE: reading or writing the weights and optimizer state holds the model's state lock, as
    # each training step does (trainer._state_lock): a copy, a file or a list of weights taken
    # while another thread trains the model falls between two steps.

    @_holding_state
    def get_weights(self) -> list:
        return Layer.get_weights(self)

    @_holding_state
    def set_weights(self, weights):
        """Assign every weight (Keras order: per layer, kernel then bias); checked before writing."""
        own = self.weights
        weights = weight_list(weights, f"model {self.name!r}", len(own))
        if len(weights) != len(own):
            raise ValueError(f"You called `set_weights(weights)` on model {self.name!r} with a weight "
                             f"list of length {len(weights)}, but the model was expecting {len(own)} "
                             f"weights ({', '.join(format_shape(w.shape) for w in own)}).")
        start = 0
        checked = []
        for layer in self.layers:
            count = len(layer.weights)
            for variable, value in zip(layer.weights, weights[start:start + count]):
                array = _as_weight(value, variable)
                checked.append((variable, array))
            start += count
        for variable, array in checked:
            variable.assign(array)

    # -- saving (kcompile.saving has the format) -----------------------------------------------

    @_holding_state
    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Save config, compile arguments, weights and optimizer state to a `.keras` file."""
        saving.save_model(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    save.writes_atomically = True   # (ModelCheckpoint calls it directly)

    def __deepcopy__(self, memo):
        # (a model copies as it pickles, not by Layer.__deepcopy__'s attribute by attribute)
        function, arguments = self.__reduce__()
        memo[id(self)] = copy = function(*arguments)
        return copy

    def __reduce__(self):
        """pickle and copy.deepcopy, as in Keras 3: the model travels as the bytes of its `.keras`
        file (config, weights, compile arguments, optimizer state) and is loaded from them, so a
        copy trains on exactly as the original would.  Custom layers, losses and metrics must be
        registered (`kcompile.saving.register_keras_serializable`) where the copy is loaded.  A
        model another thread trains is copied between two steps (save holds the state lock)."""
        with _keras_file() as path:
            self.save(path)
            with open(path, "rb") as f:
                return _from_keras_bytes, (f.read(),)

    def regularization(self):
        """The sum of every layer's weight penalties (traced), or None when no weight has one."""
        total = Layer.regularization(self)
        for layer in self.layers:
            penalty = layer.regularization()
            if penalty is not None:
                total = penalty if total is None else B.add(total, penalty)
        return total

    @property
    def losses(self) -> list:
        """Every layer's regularization penalties now (Keras's `model.losses`), as float32 scalars."""
        return Layer.losses.fget(self) + [value for layer in self.layers for value in layer.losses]

    def to_json(self, **kwargs) -> str:
        """The architecture as JSON text (no weights); `kcompile.models.model_from_json` reads it."""
        return saving.model_to_json(self, **kwargs)

    @_holding_state
    def save_weights(self, filepath, overwrite=True):
        """Save every weight, by path 'layer/weight', to a `.weights.npz` file (`.weights.h5`, Keras
        3's name, writes the same kcompile file under that name: not HDF5)."""
        saving.save_weights(self, filepath, overwrite=overwrite)

    save_weights.writes_atomically = True

    @_holding_state
    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Load weights by path from a `.weights.npz` (or `.weights.h5`) file kcompile saved, or a
        `.keras` file; all checked before any is set."""
        saving.load_weights(self, filepath, skip_mismatch=skip_mismatch, **kwargs)

    # -- summary --------------------------------------------------------------------------------

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        """Print the layers, their output shapes and parameter counts, as Keras 3 does."""
        text = _summary_text(self, line_length, positions, show_trainable, layer_range)
        if print_fn is None:
            stream = sys.stdout
            encoding = getattr(stream, "encoding", None) or "ascii"
            try:
                text.encode(encoding)
            except (UnicodeEncodeError, LookupError):
                text = text.translate(_ASCII_BOX)
            stream.write(text)
            stream.flush()
        else:
            print_fn(text.rstrip("\n"))


def _as_weight(value, variable):
    import numpy as np
    array = np.asarray(value)
    if array.shape != variable.shape:
        raise ValueError(f"Layer weight shape {variable.shape} of {variable.path!r} is not compatible "
                         f"with provided weight shape {array.shape}.")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"weight for {variable.path!r} has non-numeric dtype {array.dtype}")
    return array


class Sequential(Model):
    """A linear stack of layers: `Sequential([Flatten(input_shape=(28, 28)), Dense(10)])` or `.add`."""

    def __init__(self, layers=None, trainable=True, name=None):
        super().__init__(name=name, trainable=trainable)
        self._layers: list[Layer] = []
        self._input_layer: InputLayer | None = None
        if layers is not None:
            if isinstance(layers, (Layer, SymbolicTensor)):
                layers = [layers]
            for layer in layers:
                self.add(layer, rebuild=False)
            self._maybe_build()

    @property
    def layers(self) -> list:
        return list(self._layers)

    def add(self, layer, rebuild=True):
        """Append a layer (or an `Input(...)` as the first element)."""
        if isinstance(layer, SymbolicTensor):
            if layer._input_layer is None:
                raise ValueError(f"{layer!r} describes a model's input or output (model.inputs, "
                                 "model.outputs): it cannot be added to a Sequential model (there "
                                 f"is no functional API); use Input(shape={layer.shape[1:]})")
            layer = layer._input_layer
        if not isinstance(layer, Layer):
            raise ValueError("Only instances of kcompile.layers.Layer can be added to a Sequential "
                             f"model. Received: {layer!r} (of type {type(layer).__name__})")
        if isinstance(layer, Model):
            if not isinstance(layer, Sequential) or type(layer).call is not Sequential.call:
                raise NotImplementedError(f"nesting {type(layer).__name__} model {layer.name!r} "
                                          "inside a Sequential model is not supported; add its layers "
                                          "instead")
            self._add_model(layer, rebuild)
            return
        if isinstance(layer, InputLayer):
            if self._layers or self._input_layer is not None:
                raise ValueError(f"Sequential model {self.name!r} already has an input shape; an Input "
                                 "or InputLayer can only be its first element.")
            self._input_layer = layer
            self._on_structure_change()
            if rebuild:
                self._maybe_build()
            return
        if any(existing is layer for existing in self._layers):
            raise ValueError(f"Layer {layer.name!r} is already in model {self.name!r}; a layer can be "
                             "added once.")
        self._give_unique_name(layer)
        if not self._layers and self._input_layer is None and layer._batch_input_shape is not None:
            self._input_layer = InputLayer(batch_shape=layer._batch_input_shape)
        self._layers.append(layer)
        _owners(layer).add(self)
        self._on_structure_change()
        if rebuild:
            try:
                self._maybe_build()
            except Exception:
                # Leave the model as it was: the new layer does not fit the shape reaching it.
                self._layers.pop()
                _owners(layer).discard(self)
                if not self._layers and self._input_layer is not None \
                        and layer._batch_input_shape is not None:
                    self._input_layer = None
                self.built = bool(self._layers) and all(x.built for x in self._layers)
                raise

    def _add_model(self, model, rebuild):
        """A Sequential inside a Sequential (`Sequential([trained, Softmax()])`, as Keras tutorials
        wrap a model): Keras keeps it as one layer; here its layers are added one by one, the same
        objects, so the weights are shared and the outputs are the nested model's."""
        if not model._layers:
            raise ValueError(f"Sequential model {model.name!r} has no layers to add to {self.name!r}")
        input_layer, layers = self._input_layer, list(self._layers)
        if not self._layers and self._input_layer is None:
            shape = model._known_input_shape()
            if shape is not None:
                dtype = model._input_layer.input_dtype if model._input_layer is not None else None
                self._input_layer = InputLayer(batch_shape=shape, dtype=dtype)
        try:
            for inner in model._layers:
                self.add(inner, rebuild=False)
            if rebuild:
                self._maybe_build()
        except Exception:
            for inner in self._layers[len(layers):]:
                _owners(inner).discard(self)
            self._layers[:] = layers
            self._input_layer = input_layer
            self._on_structure_change()
            self.built = bool(self._layers) and all(x.built for x in self._layers)
            raise

    def _give_unique_name(self, layer):
        taken = {existing.name for existing in self._layers}
        if layer.name not in taken:
            return
        if not layer._auto_named:
            raise ValueError("All layers added to a Sequential model should have unique names. Name "
                             f"{layer.name!r} is already the name of a layer in this model. Update the "
                             "`name` argument to pass a unique name.")
        base = layer.name
        index = 1
        while f"{base}_{index}" in taken:
            index += 1
        layer.name = f"{base}_{index}"

    def pop(self, rebuild=True):
        if not self._layers:
            # Keras 3 raises IndexError (from list.pop), Keras 2 TypeError: both catch it
            raise _NoLayers("There are no layers in the model to pop.")
        layer = self._layers.pop()
        _owners(layer).discard(self)
        self._on_structure_change()
        if not self._layers:
            self.built = False
        return layer

    def _known_input_shape(self):
        if self._input_layer is not None:
            return self._input_layer.batch_shape
        return self._build_input_shape

    @property
    def input_shape(self) -> tuple:
        shape = self._known_input_shape()
        if shape is None:
            raise AttributeError(f"Sequential model {self.name!r} has no input shape yet: give the first "
                                 "layer input_shape=..., start with Input(shape=...), or call build().")
        return shape

    @property
    def output_shape(self) -> tuple:
        if not self.built:
            raise AttributeError(f"Sequential model {self.name!r} is not built yet, so its output shape "
                                 "is unknown.")
        return self._layers[-1].output_shape

    @property
    def inputs(self) -> list:
        """[the input's symbolic tensor] (its shape, dtype and name), as Keras's `model.inputs`."""
        if self._input_layer is not None:
            return [self._input_layer.output]
        return [SymbolicTensor(shape=self.input_shape, name=f"{self.name}_input")]

    @property
    def outputs(self) -> list:
        """[the output's symbolic tensor] (shape, dtype, the last layer's name), as Keras's."""
        return [SymbolicTensor(shape=self.output_shape, name=self._layers[-1].name)]

    @property
    def input(self):
        return self.inputs[0]

    @property
    def output(self):
        return self.outputs[0]

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._layers:
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def _maybe_build(self):
        shape = self._known_input_shape()
        if shape is not None and self._layers:
            self.build(shape)

    def build(self, input_shape=None):
        """Build every layer for batched `input_shape` (e.g. (None, 28, 28)); checks all shapes first."""
        if input_shape is None:
            input_shape = self._known_input_shape()
            if input_shape is None:
                raise ValueError(f"Sequential model {self.name!r} has no input shape; call "
                                 "build((None, ...)) with one.")
        given = input_shape
        try:
            dims = tuple(input_shape)
        except TypeError:
            dims = None
        if not dims:
            raise ValueError(f"build takes the batched input shape, such as (None, 28, 28); got "
                             f"input_shape={given!r}")
        # every dimension but the batch's is a positive integer, checked before any layer is built
        try:
            input_shape = (None,) + normalize_input_shape(dims[1:])
        except ValueError:
            raise ValueError(f"build takes the batched input shape, every dimension after the "
                             f"batch's a positive integer, such as (None, 28, 28); got "
                             f"input_shape={given!r}") from None
        known = self._known_input_shape()
        if known is not None and input_shape != known:
            raise ValueError(f"Sequential model {self.name!r} expects inputs of shape "
                             f"{format_shape(known)}; cannot build it for {format_shape(input_shape)}")
        if not self._layers:
            raise ValueError(f"Sequential model {self.name!r} has no layers; add some with "
                             "model.add(...) before building it.")
        # every shape checked before any weight is drawn, up to a layer whose shape is inferred by
        # building it (Layer.compute_output_shape): its weights are drawn in layer order, below
        checked = input_shape
        for layer in self._layers:
            if not layer.built and type(layer).compute_output_shape is Layer.compute_output_shape:
                break
            checked = tuple(layer.compute_output_shape(checked))
        shape = input_shape
        for layer in self._layers:
            shape = layer.build_for(shape)
        self._build_input_shape = input_shape
        self._output_shape = shape
        self.built = True

    def build_for(self, input_shape):
        self._ensure_built((None,) + tuple(input_shape)[1:])
        return self.output_shape

    def _ensure_built(self, input_shape):
        if not self.built or any(not layer.built for layer in self._layers):
            self.build(input_shape)

    def __call__(self, inputs, training=None):
        """On an array in inference mode: the compiled predict function (compiled on first use),
        as predict_on_batch; while tracing or with training=True: as any layer.  An array (or a
        list, or [x]) is checked against the model's input shape first, on every path, as
        predict checks it."""
        if isinstance(inputs, Node):
            return super().__call__(inputs, training=training)
        if not training and self.target == "llvm" and isinstance(inputs, np.ndarray) \
                and inputs.ndim >= 1 and len(inputs) > 0:
            # (predict_on_batch's fast path takes only what fits the compiled program as it is)
            out = self._predict_fast(inputs, len(inputs))
            if out is not None:
                return out
        try:
            inputs = self._input_array(inputs, "inputs")
        except ValueError as error:      # (as a layer says it: the model named)
            raise type(error)(f"layer {self.name!r} ({type(self).__name__}): {error}") from None
        self._check_inputs(inputs, "inputs")
        if not training and inputs.ndim >= 1 and len(inputs) > 0 and self.target == "llvm":
            return self.predict_on_batch(inputs)
        return super().__call__(inputs, training=training)

    def call(self, inputs, training=False):
        x = inputs
        for layer in self._layers:
            x = layer(x, training=training)
        return x

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"You tried to call `count_params` on model {self.name!r}, but the model "
                             "isn't built. Give it an input shape (input_shape= on the first layer, "
                             "Input(shape=...), or build()) or train it first.")
        return int(sum(math.prod(w.shape) for w in self.weights))

    def get_config(self) -> dict:
        configs = []
        if self._input_layer is not None:
            configs.append(layers_module.serialize(self._input_layer))
        configs += [layers_module.serialize(layer) for layer in self._layers]
        config = {"name": self.name, "trainable": self.trainable, "layers": configs}
        if self._input_layer is None and self._build_input_shape is not None:
            # built by build() or a first call: Keras's key, so that from_config builds the copy
            config["build_input_shape"] = tuple(self._build_input_shape)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        for layer_config in config.get("layers", []):
            model.add(layers_module.deserialize(layer_config, custom_objects), rebuild=False)
        build_input_shape = config.get("build_input_shape")
        if model._known_input_shape() is None and build_input_shape is not None and model._layers:
            model.build(tuple(build_input_shape))
        model._maybe_build()
        return model

    def _on_structure_change(self):
        Trainer._on_structure_change(self)
        if getattr(self, "_layers", None) is not None and self.built:
            if any(not layer.built for layer in self._layers):
                self.built = False


# ----------------------------------------------------------------------------------------------
# summary()
# ----------------------------------------------------------------------------------------------

_ASCII_BOX = str.maketrans("┏┳┓┃┡╇┩│├┼┤└┴┘━─", "+++|+++|++++++=-")


def _readable_memory_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size / 1024 < 1:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} PB"


def _count(variables) -> int:
    return int(sum(math.prod(v.shape) for v in variables))


def _bytes(variables) -> int:
    return int(sum(math.prod(v.shape) * v.buffer.itemsize for v in variables))


def _layer_range(layers, layer_range) -> tuple:
    """Keras's `layer_range`: [first, last] layer names (or regular expressions, matched from the
    start of a name), both included, as a slice of `layers`."""
    import re
    if layer_range is None:
        return 0, len(layers)
    if not isinstance(layer_range, (list, tuple)) or len(layer_range) != 2 \
            or not all(isinstance(name, str) for name in layer_range):
        raise ValueError("layer_range must be a list or tuple of 2 layer names (strings). Received: "
                         f"layer_range={layer_range!r}")
    lower = [i for i, layer in enumerate(layers) if re.match(layer_range[0], layer.name)]
    upper = [i for i, layer in enumerate(layers) if re.match(layer_range[1], layer.name)]
    if not lower or not upper:
        raise ValueError(f"layer_range={list(layer_range)} does not match the layer names of the "
                         f"model: {[layer.name for layer in layers]}")
    if min(lower) > max(upper):
        return min(upper), max(lower) + 1
    return min(lower), max(upper) + 1


def _ratio_reduce(total: int, widths: list) -> list:
    """rich's ratio_reduce with equal ratios: take `total` off `widths`, spread as evenly as
    rounding allows (the first columns give the rounded-down share)."""
    result, remaining, count = [], total, len(widths)
    for width in widths:
        taken = min(width, round(remaining / count))
        result.append(width - taken)
        remaining -= taken
        count -= 1
    return result


def _column_widths(line_length: int, positions) -> list:
    """The content width of each column of Keras 3's summary table: Keras gives rich a table of
    `line_length` with columns of int(position * line_length) characters, which rich then
    narrows by the borders and padding (3 per column and 1) through ratio_reduce."""
    widths, previous = [], 0
    for position in positions:
        width = int(position * line_length) - previous
        if width < 4:
            raise ValueError("Insufficient console width to print summary.")
        widths.append(width)
        previous += width
    padded = _ratio_reduce(3 * len(widths) + 1, [width + 2 for width in widths])
    return [max(width - 2, 1) for width in padded]


def _summary_text(model, line_length=None, positions=None, show_trainable=False,
                  layer_range=None) -> str:
    """Keras 3's summary table (rich's box style with lines between rows) as plain text."""
    positions = list(positions or [0.45, 0.80, 1.0])
    headers = ["Layer (type)", "Output Shape", "Param #"]
    default_length = 88
    if show_trainable:
        # Keras widens the table by 12 and gives the new column the last tenth.
        default_length += 12
        positions = [p * 0.90 for p in positions] + [1.0]
        headers.append("Trainable")
    if line_length is None:
        line_length = min(default_length, shutil.get_terminal_size().columns - 4)
    first, stop = _layer_range(model.layers, layer_range)
    rows = []
    for layer in model.layers[first:stop]:
        name = f"{layer.name} ({type(layer).__name__})"
        shape = format_shape(layer._output_shape) if layer._output_shape is not None else "?"
        params = f"{layer.count_params():,}" if layer.built else "0 (unbuilt)"
        rows.append([name, shape, params])
        if show_trainable:
            rows[-1].append(("Y" if layer.trainable else "N") if layer.weights else "-")
    widths = _column_widths(line_length, positions)
    for row in [headers] + rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(left, fill, middle, right):
        return left + middle.join(fill * (w + 2) for w in widths) + right

    def cells(row, border):
        parts = [f" {row[0]:<{widths[0]}} ", f" {row[1]:<{widths[1]}} ", f" {row[2]:>{widths[2]}} "]
        parts += [f" {cell:^{width}} " for cell, width in zip(row[3:], widths[3:])]
        return border + border.join(parts) + border

    out = [f'Model: "{model.name}"', line("┏", "━", "┳", "┓"), cells(headers, "┃"),
           line("┡", "━", "╇", "┩")]
    for index, row in enumerate(rows):
        if index:
            out.append(line("├", "─", "┼", "┤"))
        out.append(cells(row, "│"))
    out.append(line("└", "─", "┴", "┘"))

    trainable, non_trainable = model.trainable_weights, model.non_trainable_weights
    optimizer = getattr(model, "optimizer", None)
    optimizer_variables = optimizer.variables if optimizer is not None and optimizer.built else []
    total = _count(trainable) + _count(non_trainable) + _count(optimizer_variables)
    total_bytes = _bytes(trainable) + _bytes(non_trainable) + _bytes(optimizer_variables)
    out.append(f" Total params: {total:,} ({_readable_memory_size(total_bytes)})")
    out.append(f" Trainable params: {_count(trainable):,} "
               f"({_readable_memory_size(_bytes(trainable))})")
    out.append(f" Non-trainable params: {_count(non_trainable):,} "
               f"({_readable_memory_size(_bytes(non_trainable))})")
    if optimizer_variables:
        out.append(f" Optimizer params: {_count(optimizer_variables):,} "
                   f"({_readable_memory_size(_bytes(optimizer_variables))})")
    return "\n".join(out) + "\n"


def clone_model(model, input_tensors=None, clone_function=None, **kwargs):
    """A new model of the same architecture with fresh weights, as `keras.models.clone_model`:
    compiled with the original's compile arguments (and a new optimizer) when it was compiled.
    `clone_function(layer)` makes each new layer (default: the layer's class from its config)."""
    if input_tensors is not None or kwargs.get("call_function") is not None:
        raise NotImplementedError("clone_model of a Sequential model takes no input_tensors or "
                                  "call_function")
    unknown = set(kwargs) - {"call_function", "recursive"}
    if unknown:
        raise TypeError(f"clone_model() got unexpected keyword arguments {sorted(unknown)}")
    if not isinstance(model, Sequential):
        raise ValueError(f"clone_model expects a kcompile Sequential model; got {type(model).__name__}")
    if clone_function is None:
        classes = {type(layer).__name__: type(layer) for layer in model.layers}   # custom layers too
        classes[type(model).__name__] = type(model)
        clone = saving.model_from_json(model.to_json(), classes)
    else:
        if not callable(clone_function):
            raise ValueError(f"clone_function must be callable; got {clone_function!r}")
        clone = Sequential(name=model.name, trainable=model.trainable)
        if model._input_layer is not None:
            clone.add(layers_module.deserialize(layers_module.serialize(model._input_layer)),
                      rebuild=False)
        for layer in model.layers:
            new = clone_function(layer)
            if not isinstance(new, Layer):
                raise ValueError(f"clone_function must return a layer; got {new!r} for {layer.name!r}")
            clone.add(new, rebuild=False)
        clone._maybe_build()
    if model.compiled:
        # as Keras 3: compiled as the original was, with an optimizer of its own (fresh state)
        try:
            clone.compile_from_config(model.get_compile_config())
        except (TypeError, ValueError):
            # a custom loss or metric the registry does not know by name: the original's objects
            optimizer = model.optimizer
            clone.compile(optimizer=type(optimizer).from_config(optimizer.get_config()),
                          loss=model.loss, loss_weights=model.loss_weight,
                          metrics=list(model._metric_identifiers),
                          weighted_metrics=list(model._weighted_metric_identifiers),
                          target=model._compiled_target, run_eagerly=model._run_eagerly,
                          steps_per_execution=model.steps_per_execution)
    return clone
