"""The `Layer` base class, weight `Variable`s, and the scope that binds variables while tracing.

A layer's `call` is written once, in IR ops (`ir.build`), and serves every purpose: the trainer traces
it into the predict/eval/train graphs, and a call on a numpy array traces it on the spot and runs the
reference interpreter (`call_eagerly`).  Inside `call` a weight is read as `self.kernel.value`, which a
`TraceScope` resolves to the graph input standing for it (Keras 3's StatelessScope does the same for
its JAX trainer: variables in, values out).

A `Variable` owns one float32 numpy buffer for its whole life: `assign` and the compiled train step
write into it in place, so runners may keep its address.
"""
from __future__ import annotations

import inspect
import math
import numbers
import operator
import re
import threading
import warnings
import zlib

import numpy as np

import ir
from ir import Node
from ir import build as B
from ir.graph import refuse_truth
from ir.ops import as_traced

from codegen.buffers import aligned_copy, note_write
from kcompile import initializers

_local = threading.local()


def to_snake_case(name: str) -> str:
    """'InputLayer' -> 'input_layer', 'Conv2D' -> 'conv2d', '<lambda>' -> 'lambda', as Keras derives
    default names."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    # NOTE: a digit does not end a word ('MaxPooling2D' -> 'max_pooling2d'), as in Keras
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def format_shape(shape) -> str:
    """(None, 28, 28) as Keras prints it."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# ----------------------------------------------------------------------------------------------
# Variables and the trace scope
# ----------------------------------------------------------------------------------------------

class TraceScope:
    """While active, `variable.value` is the graph value bound to the variable.

    Args:
        bindings: dict Variable -> ir Node (the graph input standing for it).
        seed: the u32[] graph input that random layers (Dropout) draw from, or None when the traced
            function is deterministic (inference).

    `updates` collects (Variable, new value) pairs that layers record with `add_update` while
    tracing in training mode (BatchNormalization's moving statistics): the train step outputs each
    under the variable's path, an in-place update of its buffer.
    """

    def __init__(self, bindings: dict, seed: Node | None = None):
        self.bindings = bindings
        self.seed = seed
        self.updates: list = []
        self.added_losses: list = []     # scalar losses layers add while traced (Layer.add_loss)
        # the Keras mask of traced values (Keras keeps it on the tensor as `_keras_mask`; IR nodes
        # are immutable, so it is kept here): id(node) -> (node, bool [batch, steps] mask)
        self.masks: dict = {}

    def add_update(self, variable: "Variable", value: Node) -> None:
        """Record that the traced step assigns `value` to the (non-trainable) `variable`."""
        if any(v is variable for v, _ in self.updates):
            raise ValueError(f"variable {variable.path!r} is updated twice in one traced step")
        self.updates.append((variable, value))

    def __enter__(self):
        stack = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        stack.append(self)
        self._no_branching = refuse_truth()
        self._no_branching.__enter__()
        return self

    def __exit__(self, *exc):
        self._no_branching.__exit__(*exc)
        _local.stack.pop()

    def lookup(self, variable: "Variable") -> Node:
        try:
            return self.bindings[variable]
        except KeyError:
            raise ValueError(f"variable {variable.path!r} is not an input of the graph being traced; "
                             "a layer used outside the model it belongs to?") from None


def random_stream(layer, *parts: str) -> int:
    """The random stream of `layer`'s draws (a Dropout's mask, an RNN cell's): crc32 of its name,
    `parts` and seed, so distinct per layer of a model.  The layers a wrapper holds
    (TimeDistributed's, Bidirectional's; `wrap`) also have the wrapper's name: two wrappers' inner
    layers are named alike (two TimeDistributed(Dropout(0.5)) each hold a 'dropout'), and had
    drawn one mask."""
    key = [layer.name, *parts, str(layer.seed)]
    outer = layer.__dict__.get("_wrapped_by")
    return zlib.crc32("/".join(key if outer is None else [outer, *key]).encode()) & 0xFFFFFFFF


def check_seed(seed, layer: str):
    """A layer's `seed=` argument (None or an integer) as a Python int (a numpy integer would not
    go into JSON), or a ValueError naming the layer."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"{layer} seed must be an integer or None; got seed={seed!r}")
    return None if seed is None else int(seed)


def training_seed(layer) -> Node:
    """The traced step's seed, which a layer's draws in training start from (see random_stream)."""
    scope = current_scope()
    if scope is None or scope.seed is None:
        raise RuntimeError(f"{type(layer).__name__} layer {layer.name!r} was traced in training mode "
                           "without a seed")
    return scope.seed


def wrap(outer, inner) -> None:
    """`inner` is held by the wrapper `outer` (see random_stream)."""
    inner.__dict__["_wrapped_by"] = outer.name


def _layer_inside_layer(outer, inner, verb: str, where: str) -> NotImplementedError:
    return NotImplementedError(
        f"layer {outer.name!r} ({type(outer).__name__}) {verb} the layer {inner.name!r} "
        f"({type(inner).__name__}) {where}: layers inside layers are not supported yet; put the "
        "inner layers in the Sequential model itself (Sequential([..., inner_1, inner_2, ...])), "
        "or give this layer weights of its own with add_weight")


def current_scope() -> TraceScope | None:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


def get_keras_mask(value):
    """The mask of the traced `value` (which of its timesteps later layers skip), or None: as
    Keras's `backend.get_keras_mask`."""
    scope = current_scope()
    entry = None if scope is None else scope.masks.get(id(value))
    return None if entry is None or entry[0] is not value else entry[1]


def set_keras_mask(value, mask) -> None:
    """Attach `mask` (bool [batch, steps]) to the traced `value`, as Keras's `set_keras_mask`."""
    scope = current_scope()
    if scope is not None:
        scope.masks[id(value)] = (value, mask)


def refuse_unsupported(layer: str, arguments: dict) -> None:
    """NotImplementedError for the first of `arguments` (name -> value) that is not None: the
    Keras arguments a layer does not support yet (constraints, lora_rank, ...)."""
    for argument, value in arguments.items():
        if value is not None:
            raise NotImplementedError(f"{layer}({argument}=...) is not supported yet")


class Variable:
    """A weight: a persistent float32 buffer plus a name and a trainable flag.

    `value` is the traced IR value inside a `TraceScope` and a read-only view of the buffer outside;
    `numpy()` returns a copy; `assign(value)` writes in place.
    """

    def __init__(self, value, name: str, trainable: bool = True, owner=None, dtype=np.float32):
        self._buffer = aligned_copy(value, dtype)   # whole vectors of it start on a cache line
        self.name = name
        self._trainable = bool(trainable)
        self._owner = owner

    @property
    def path(self) -> str:
        """'dense/kernel': the owning layer's name and the weight's; also the graph input's name."""
        return f"{self._owner.name}/{self.name}" if self._owner is not None else self.name

    @property
    def shape(self) -> tuple:
        return self._buffer.shape

    @property
    def dtype(self) -> str:
        return self._buffer.dtype.name

    @property
    def ndim(self) -> int:
        return self._buffer.ndim

    @property
    def size(self) -> int:
        return self._buffer.size

    @property
    def trainable(self) -> bool:
        """Whether training updates it: its own flag, and its layer's (a frozen layer's weights
        say False, as Keras's)."""
        return self._trainable and (self._owner is None or bool(self._owner.trainable))

    @trainable.setter
    def trainable(self, value: bool):
        self._trainable = bool(value)
        if self._owner is not None:
            self._owner._on_structure_change()  # the train step's gradient list changes

    # Keras's other attributes of a variable: kcompile weights have no constraint (add_weight
    # refuses one) and are not distributed
    constraint = None
    aggregation = "none"
    synchronization = "auto"

    @property
    def buffer(self) -> np.ndarray:
        """The persistent array itself (what runners read and the train step updates in place)."""
        return self._buffer

    @property
    def value(self):
        scope = current_scope()
        if scope is not None:
            return scope.lookup(self)
        view = self._buffer.view()
        view.flags.writeable = False
        return view

    def numpy(self) -> np.ndarray:
        self._refuse_numpy_in_trace("numpy()")
        return self._buffer.copy()

    def _refuse_numpy_in_trace(self, what):
        if current_scope() is not None:
            raise TypeError(f"{what} of weight {self.path!r} inside a traced call: the graph would "
                            "hold its current value as a constant, which never trains. Use the "
                            "weight itself (x * self.w, x @ self.kernel)")

    def assign(self, value):
        """Set the variable's value.  The value is converted in full before anything is written, so
        a value that cannot be converted leaves the variable as it was.

        Inside a traced call (a layer's `call` in training) the assignment is recorded as an update
        of the step (`TraceScope.add_update`), as Keras layers update counters and statistics; a
        trainable weight cannot be assigned there (the optimizer writes it)."""
        scope = current_scope()
        if scope is not None:
            return self._assign_in_trace(scope, value)
        value = np.asarray(value)
        if value.shape != self._buffer.shape:
            raise ValueError(f"cannot assign a value of shape {value.shape} to variable {self.path!r} "
                             f"of shape {self._buffer.shape}")
        try:
            converted = value.astype(self._buffer.dtype, copy=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"cannot assign to variable {self.path!r}: the value (dtype {value.dtype}) "
                             f"does not convert to {self._buffer.dtype}: {error}") from None
        self._buffer[...] = converted
        note_write()
        return self.numpy()     # as Keras: the value assigned

    def _assign_in_trace(self, scope, value):
        if self.trainable:
            raise TypeError(f"assigning trainable weight {self.path!r} inside a traced call is not "
                            "supported: the optimizer updates it. Make it non-trainable "
                            "(add_weight(..., trainable=False)) to update it in call")
        current = scope.lookup(self)
        node = as_traced(value)
        if not isinstance(node, Node):
            node = B.const(np.asarray(value, np.float32))
        if node.dtype != current.dtype:
            node = B.cast(node, current.dtype)
        try:
            node = B.broadcast(node, current.shape)
        except (TypeError, ValueError):
            raise ValueError(f"cannot assign a value of shape {node.shape} to variable {self.path!r} "
                             f"of shape {current.shape}") from None
        scope.add_update(self, node)
        return node

    def assign_add(self, delta):
        if current_scope() is not None:
            return self.assign(self._operand() + delta)
        return self.assign(self._buffer + np.asarray(delta))

    def assign_sub(self, delta):
        if current_scope() is not None:
            return self.assign(self._operand() - delta)
        return self.assign(self._buffer - np.asarray(delta))

    def __ir_node__(self):
        """While a layer's call is traced, the graph input this weight is (ir.ops.as_traced): so
        `x * self.w` and `B.matmul(x, self.kernel)` train the weight instead of baking its value."""
        scope = current_scope()
        return None if scope is None else scope.lookup(self)

    def __array__(self, dtype=None, copy=None):
        self._refuse_numpy_in_trace("np.asarray")
        return self._buffer.copy() if dtype is None else self._buffer.astype(dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if current_scope() is None:   # numpy on the value, as on an array
            inputs = tuple(x._buffer if isinstance(x, Variable) else x for x in inputs)
            return getattr(ufunc, method)(*inputs, **kwargs)
        operator = _TRACED_UFUNCS.get(ufunc)
        if operator is None or method != "__call__" or kwargs:
            self._refuse_numpy_in_trace(f"numpy's {ufunc.__name__}")
        return operator(*(as_traced(x) for x in inputs))

    # Arithmetic, comparisons and indexing as Keras variables have them: on the traced value inside
    # a layer's call, on a read-only view of the buffer outside.  == and hashing stay identity.
    def _operand(self):
        return self.value

    def __add__(self, other): return self._operand() + other          # noqa: E704
    def __radd__(self, other): return other + self._operand()         # noqa: E704
    def __sub__(self, other): return self._operand() - other          # noqa: E704
    def __rsub__(self, other): return other - self._operand()         # noqa: E704
    def __mul__(self, other): return self._operand() * other          # noqa: E704
    def __rmul__(self, other): return other * self._operand()         # noqa: E704
    def __truediv__(self, other): return self._operand() / other      # noqa: E704
    def __rtruediv__(self, other): return other / self._operand()     # noqa: E704
    def __matmul__(self, other): return self._operand() @ other       # noqa: E704
    def __rmatmul__(self, other): return other @ self._operand()      # noqa: E704
    def __pow__(self, other): return self._operand() ** other         # noqa: E704
    def __rpow__(self, other): return other ** self._operand()        # noqa: E704
    def __neg__(self): return -self._operand()                        # noqa: E704
    def __pos__(self): return +self._operand()                        # noqa: E704
    def __abs__(self): return abs(self._operand())                    # noqa: E704
    def __lt__(self, other): return self._operand() < other           # noqa: E704
    def __le__(self, other): return self._operand() <= other          # noqa: E704
    def __gt__(self, other): return self._operand() > other           # noqa: E704
    def __ge__(self, other): return self._operand() >= other          # noqa: E704

    def __getitem__(self, index):
        if current_scope() is not None:
            raise TypeError(f"indexing weight {self.path!r} inside a traced call is not supported; "
                            "use its whole value")
        return self._operand()[index]

    def __float__(self):
        self._refuse_numpy_in_trace("float()")
        return float(self._buffer)

    def __int__(self):
        self._refuse_numpy_in_trace("int()")
        return int(self._buffer)

    def __repr__(self):
        # as Keras 3's, with the value (numpy's summary of a large one)
        value = np.array2string(np.asarray(self._buffer), separator=", ", threshold=20)
        return f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype}, value={value}>"


class DTypePolicy:
    """What `layer.dtype_policy` gives, as Keras's `DTypePolicy`: kcompile layers compute and keep
    their weights in float32, so the policy is float32's."""

    def __init__(self, name="float32"):
        if not _is_float32(name):
            raise ValueError(f"kcompile layers compute in float32; got a dtype policy {name!r}")
        self._name = "float32"

    name = property(lambda self: self._name)
    compute_dtype = property(lambda self: self._name)
    variable_dtype = property(lambda self: self._name)
    quantization_mode = None

    def get_config(self) -> dict:
        return {"name": self._name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        if type(other).__name__ != "DTypePolicy":
            return NotImplemented
        return getattr(other, "name", None) == self.name

    def __hash__(self):
        return hash(self._name)

    def __repr__(self):
        return f'<DTypePolicy "{self._name}">'


def _plain_data(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    return False


# numpy's arithmetic on a weight inside a traced call (np.float32(2) * self.w) is the operator on its
# traced value; any other ufunc is refused (its result would be a constant)
_TRACED_UFUNCS = {np.add: operator.add, np.subtract: operator.sub, np.multiply: operator.mul,
                  np.true_divide: operator.truediv, np.matmul: operator.matmul,
                  np.negative: operator.neg}


def call_eagerly(fn, *arrays, variables=(), training: bool = False):
    """Trace `fn` on IR inputs shaped like `arrays` and run it with the reference interpreter.

    Floats become f32 and integers i32; axis 0 of every array of rank >= 1 is the batch axis.  Returns
    the numpy value of `fn`'s result.
    """
    feeds, args = {}, []
    for index, array in enumerate(arrays):
        array = np.asarray(array)
        if array.dtype.kind in "iu":
            dtype, np_dtype = "i32", np.int32
        elif array.dtype.kind in "fb":
            dtype, np_dtype = "f32", np.float32
        else:
            raise TypeError(f"expected a numeric array, got dtype {array.dtype}")
        shape = (None,) + array.shape[1:] if array.ndim else ()
        name = f"input_{index}"
        args.append(B.arg(name, dtype, shape))
        feeds[name] = array.astype(np_dtype)
    bindings = {}
    for index, variable in enumerate(variables):
        name = f"weight_{index}"
        bindings[variable] = B.arg(name, "f32", variable.shape)
        feeds[name] = variable.buffer
    seed = None
    if training:
        from kcompile.utils.random import next_seed
        seed = B.arg("seed", "u32", ())
        feeds["seed"] = np.uint32(next_seed())
    with TraceScope(bindings, seed=seed) as scope:
        out = fn(*args)
    if not isinstance(out, Node):
        raise TypeError(f"{fn!r} returned {type(out).__name__}, expected an IR value")
    # State the call updates (BatchNormalization's moving statistics in training): written back
    # after the run, as a Keras eager call updates its variables.
    updates = [(variable, value) for variable, value in scope.updates if variable in bindings]
    inputs = args + list(bindings.values()) + ([seed] if seed is not None else [])
    outputs = [("out", out)] + [(f"update_{index}", value) for index, (_, value) in enumerate(updates)]
    results = ir.run(ir.Graph("eager", inputs, outputs), feeds)
    for index, (variable, _) in enumerate(updates):
        variable.assign(results[f"update_{index}"])
    return results["out"]


# ----------------------------------------------------------------------------------------------
# Layer
# ----------------------------------------------------------------------------------------------

def normalize_input_shape(shape, argument: str = "input_shape") -> tuple:
    """A user's per-sample shape ((28, 28), [784], 784 is refused) as a tuple of positive ints."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        raise ValueError(f"{argument} must be a tuple of dimensions, e.g. {argument}=({int(shape)},); "
                         f"got {argument}={shape!r}")
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"{argument} must be a tuple of dimensions such as (28, 28); got "
                         f"{argument}={shape!r}") from None
    for d in dims:
        if d is None:
            raise ValueError(f"kcompile needs every dimension but the batch dimension known in "
                             f"advance; got {argument}={shape!r}")
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"{argument} must hold positive integers; got {argument}={shape!r}")
    return tuple(int(d) for d in dims)


def _is_float32(dtype) -> bool:
    """Does a layer's `dtype` (a numpy dtype or name, or a Keras dtype policy such as
    'mixed_float16', which numpy does not know) name float32?"""
    if isinstance(dtype, dict):     # a DTypePolicy as Keras 3's configs write it
        dtype = (dtype.get("config") or {}).get("name", dtype.get("name"))
    try:
        return np.dtype(getattr(dtype, "name", dtype)) == np.float32
    except (TypeError, ValueError):
        return False


def weight_list(weights, owner: str, count: int) -> list:
    """set_weights' argument as a list, or a TypeError saying what it must be (`owner`: "layer
    'dense'", "model 'sequential'"; `count`: how many weights it has)."""
    if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__iter__"):
        raise TypeError(f"set_weights takes a list of arrays, one per weight of {owner} ({count}: "
                        f"as get_weights() returns them); got {type(weights).__name__}")
    return list(weights)


def _recording_build_shape(build):
    """A layer class's build that also records the input shape it was called with (Keras 3 does:
    get_build_config() gives it), when nothing recorded one before."""
    import functools

    @functools.wraps(build)
    def recording(self, *args, **kwargs):
        result = build(self, *args, **kwargs)
        shape = args[0] if args else kwargs.get("input_shape")
        if self.__dict__.get("_build_input_shape") is None and isinstance(shape, (tuple, list)):
            self._build_input_shape = tuple(shape)
        return result
    recording._records_shape = True
    return recording


def _checking_output_shape(compute_output_shape):
    """A user's compute_output_shape that says what is wrong with what it returned: a tuple (or
    list) of sizes, None for the batch dimension."""
    import functools

    @functools.wraps(compute_output_shape)
    def checked(self, input_shape):
        shape = compute_output_shape(self, input_shape)
        problem = None
        if shape is None:
            problem = "returned None (a missing `return`?)"
        elif not isinstance(shape, (tuple, list)) and not hasattr(shape, "as_list"):
            problem = f"returned a {type(shape).__name__} ({shape!r})"
        else:
            sizes = shape.as_list() if hasattr(shape, "as_list") else shape
            if any(d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Integral))
                   for d in sizes):
                problem = f"returned {shape!r}, whose sizes are not all integers or None"
        if problem is not None:
            raise TypeError(f"layer {self.name!r} ({type(self).__name__}): compute_output_shape "
                            f"{problem}; for input shape {format_shape(tuple(input_shape))} it "
                            "must return the output shape as a tuple whose first entry is the "
                            "batch dimension, None (e.g. (None, 8)), or be left out (the shape is "
                            "then inferred by tracing call)")
        return shape
    checked._checks_its_result = True
    return checked


class Layer:
    """Base class of layers, as `keras.layers.Layer`.

    Subclasses create weights in `build(input_shape)` with `add_weight`, compute their output in
    `call(inputs, training=False)` with IR ops, and say their output shape in
    `compute_output_shape(input_shape)`.  Shapes include the batch dimension as None.

    Keyword arguments (as Keras): `name`, `trainable`, `dtype` (float32 only), and on the first layer of
    a Sequential model `input_shape` (per sample, e.g. (28, 28)), `input_dim`, `batch_input_shape` or
    `batch_size`.
    """

    _LEGACY_KWARGS = ("input_shape", "input_dim", "batch_input_shape", "batch_size")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A user's compute_output_shape is checked where it returns (every caller, the model's
        # shape pre-check included, then gets a shape or a clear error, not `tuple(None)`'s).
        build = cls.__dict__.get("build")
        if build is not None and not getattr(build, "_records_shape", False):
            cls.build = _recording_build_shape(build)
        defined = cls.__dict__.get("compute_output_shape")
        if defined is not None and not cls.__module__.startswith("kcompile.") \
                and not getattr(defined, "_checks_its_result", False):
            cls.compute_output_shape = _checking_output_shape(defined)

    def __new__(cls, *args, **kwargs):
        # The constructor's arguments, for the config of a custom layer that defines no get_config
        # (as Keras 3 records them)
        layer = super().__new__(cls)
        layer._init_arguments = (args, kwargs)
        return layer

    def __init__(self, *, name=None, trainable=True, dtype=None, **kwargs):
        unknown = {k: v for k, v in kwargs.items() if k not in self._LEGACY_KWARGS}
        if unknown:
            raise ValueError(f"Unrecognized keyword arguments passed to {type(self).__name__}: {unknown}")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"Argument `name` must be a non-empty string without '/'; got name={name!r}")
        if dtype is not None and not _is_float32(dtype):
            raise ValueError(f"kcompile layers compute in float32; got dtype={dtype!r} (leave "
                             "dtype unset, or give 'float32')")
        self._auto_named = name is None
        self.name = name if name is not None else to_snake_case(type(self).__name__)
        self._trainable = bool(trainable)
        self._weights: list[Variable] = []
        self._regularized: list = []      # (variable, regularizer) pairs: see regularization()
        self.built = False
        self._build_input_shape = None
        self._output_shape = None
        self._batch_input_shape = self._batch_shape_from_kwargs(kwargs)

    @staticmethod
    def _batch_shape_from_kwargs(kwargs) -> tuple | None:
        if kwargs.get("batch_input_shape") is not None:
            shape = tuple(kwargs["batch_input_shape"])
            if not shape:
                raise ValueError("batch_input_shape must include the batch dimension, e.g. (None, 784)")
            return (None,) + normalize_input_shape(shape[1:], "batch_input_shape[1:]")
        if kwargs.get("input_shape") is not None:
            return (None,) + normalize_input_shape(kwargs["input_shape"])
        if kwargs.get("input_dim") is not None:
            return (None,) + normalize_input_shape((kwargs["input_dim"],), "input_dim")
        return None

    # -- weights ------------------------------------------------------------------------------

    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True, name=None, **kwargs):
        """Create a weight of `shape`, drawn from `initializer` (default glorot_uniform)."""
        from kcompile import regularizers
        regularizer = regularizers.get(kwargs.pop("regularizer", None))
        if kwargs.pop("constraint", None) is not None:
            raise NotImplementedError("add_weight(constraint=...) is not supported yet")
        kwargs.pop("autocast", None)
        kwargs.pop("aggregation", None)
        if kwargs:
            raise TypeError(f"add_weight got unexpected arguments {sorted(kwargs)}")
        shape = () if shape is None else tuple(int(d) for d in shape)
        if name is None:
            name = f"variable_{len(self._weights)}" if self._weights else "variable"
        if any(w.name == name for w in self._weights):
            raise ValueError(f"layer {self.name!r} already has a weight named {name!r}")
        init = initializers.get("glorot_uniform" if initializer is None else initializer)
        variable = Variable(init(shape, dtype or "float32"), name, trainable, owner=self)
        self._weights.append(variable)
        if regularizer is not None:
            self._regularized.append((variable, regularizer))
        return variable

    def regularization(self):
        """The sum of this layer's weight penalties (traced: call inside a trace), or None."""
        total = None
        for variable, regularizer in self._regularized:
            penalty = regularizer(variable.value)
            if not isinstance(penalty, Node):
                raise TypeError(f"the regularizer of {variable.path!r} returned {penalty!r}; it must "
                                "compute a penalty from the weight it is given")
            if penalty.type.rank:
                penalty = B.reduce_sum(penalty)      # Keras sums a non-scalar penalty
            total = penalty if total is None else B.add(total, penalty)
        return total

    # kcompile layers compute and keep their weights in float32 (the constructor refuses other
    # dtypes), so these are Keras's names for that one policy.
    @property
    def dtype(self) -> str:
        """The dtype of the layer's weights, 'float32' (Keras's `layer.dtype`)."""
        return "float32"

    @property
    def dtype_policy(self) -> "DTypePolicy":
        """The layer's dtype policy, float32's (Keras's `layer.dtype_policy`)."""
        return DTypePolicy("float32")

    @property
    def compute_dtype(self) -> str:
        return "float32"

    @property
    def variable_dtype(self) -> str:
        return "float32"

    @property
    def losses(self) -> list:
        """Keras's `layer.losses`: the current penalty of each regularized weight of this layer,
        as a float32 numpy scalar each (evaluated now by the reference interpreter)."""
        values = []
        for variable, regularizer in self._regularized:
            def penalty(variable=variable, regularizer=regularizer):
                value = regularizer(variable.value)
                return B.reduce_sum(value) if isinstance(value, Node) and value.type.rank else value
            values.append(np.float32(call_eagerly(penalty, variables=(variable,))))
        return values

    @property
    def weights(self) -> list:
        return list(self._weights)

    @property
    def variables(self) -> list:
        return self.weights

    @property
    def trainable_weights(self) -> list:
        return [w for w in self.weights if w.trainable] if self.trainable else []

    @property
    def non_trainable_weights(self) -> list:
        if not self.trainable:
            return self.weights
        return [w for w in self.weights if not w.trainable]

    @property
    def trainable_variables(self) -> list:
        return self.trainable_weights

    @property
    def non_trainable_variables(self) -> list:
        return self.non_trainable_weights

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool):
        self._set_trainable(value)

    def _set_trainable(self, value: bool):
        self._trainable = bool(value)
        self._on_structure_change()

    def _on_structure_change(self):
        """Hook for models: traced graphs depending on this layer are stale, in every model that
        holds it (a layer may be shared: a GAN's discriminator sits in two models)."""
        for owner in list(getattr(self, "_models", ())):
            owner._on_structure_change()

    def get_weights(self) -> list:
        return [w.numpy() for w in self.weights]

    def set_weights(self, weights):
        """Assign every weight; all shapes are checked before anything is written."""
        own = self.weights
        weights = weight_list(weights, f"layer {self.name!r}", len(own))
        if len(weights) != len(own):
            raise ValueError(f"You called `set_weights(weights)` on layer {self.name!r} with a weight "
                             f"list of length {len(weights)}, but the layer was expecting {len(own)} "
                             f"weights ({', '.join(w.path for w in own) or 'none'}).")
        arrays = []
        for variable, value in zip(own, weights):
            array = np.asarray(value)
            if array.shape != variable.shape:
                raise ValueError(f"Layer {self.name!r} weight {variable.path!r} has shape "
                                 f"{variable.shape}, which is not compatible with the provided weight "
                                 f"shape {array.shape}.")
            if array.dtype.kind not in "biuf":
                raise ValueError(f"weight for {variable.path!r} has non-numeric dtype {array.dtype}")
            arrays.append(array)
        for variable, array in zip(own, arrays):
            variable.assign(array)

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"You tried to call `count_params` on layer {self.name!r}, but the layer "
                             "isn't built. Build it first with `layer.build(input_shape)` or give the "
                             "model an input shape.")
        return int(sum(math.prod(w.shape) for w in self.weights))

    # -- shapes and building ------------------------------------------------------------------

    @_recording_build_shape
    def build(self, input_shape):
        self.built = True

    def compute_output_shape(self, input_shape):
        """The output shape for `input_shape`.  A layer that does not define it gets it as Keras 3
        does, by calling the layer on a symbolic input: `call` is traced (built first, in inference
        mode, in a scope of its own, so nothing it records reaches a model's step)."""
        input_shape = tuple(input_shape)
        inferred = self.__dict__.setdefault("_inferred_output_shapes", {})
        if input_shape not in inferred:
            self._refuse_sublayers()
            self._build_once(input_shape)
            self._refuse_sublayers()          # (one made in build)
            x = B.arg("inputs", "f32", input_shape)
            bindings = {v: B.arg(v.path, "f32", v.shape) for v in self.weights}
            with TraceScope(bindings, seed=B.arg("seed", "u32", ())):
                output = self._traced_call(x, False)
            inferred[input_shape] = tuple(self._traced_output(output).shape)
        return inferred[input_shape]

    @property
    def output_shape(self) -> tuple:
        if self._output_shape is None:
            raise AttributeError(f"The layer {self.name!r} has never been built on an input shape and "
                                 "thus has no defined output shape.")
        return self._output_shape

    # -- the layer's place in a built model: Keras's layer.input / layer.output -----------------

    def _place_in_model(self):
        """(model, index) of a built model that holds this layer, or None."""
        for model in list(self.__dict__.get("_models", ())):
            if not model.built:
                continue
            for index, layer in enumerate(model.layers):
                if layer is self:
                    return model, index
        return None

    @property
    def input(self):
        """The symbolic tensor this layer reads in the built model that holds it (shape, dtype and
        name, as Keras's `layer.input`; there is no functional API to compute with it)."""
        explicit = self.__dict__.get("_symbolic_input")
        if explicit is not None:
            return explicit
        place = self._place_in_model()
        if place is None:
            raise AttributeError(f"The layer {self.name} has never been called and thus has no "
                                 "defined input.")
        model, index = place
        return model.inputs[0] if index == 0 else model.layers[index - 1].output

    @input.setter
    def input(self, value):
        self.__dict__["_symbolic_input"] = value

    @property
    def output(self):
        """The symbolic tensor of this layer's output in the built model that holds it (shape,
        dtype and name, as Keras's `layer.output`)."""
        explicit = self.__dict__.get("_symbolic_output")
        if explicit is not None:
            return explicit
        if self._place_in_model() is None or self._output_shape is None:
            raise AttributeError(f"The layer {self.name} has never been called and thus has no "
                                 "defined output.")
        from kcompile.layers.core import SymbolicTensor    # (core imports this module)
        return SymbolicTensor(shape=self._output_shape, name=self.name)

    @output.setter
    def output(self, value):
        self.__dict__["_symbolic_output"] = value

    def build_for(self, input_shape) -> tuple:
        """Check `input_shape`, build the weights if not built yet, and return the output shape."""
        input_shape = tuple(input_shape)
        try:
            output_shape = tuple(self.compute_output_shape(input_shape))  # validates before any weight exists
        except AttributeError:
            if self.built:
                raise
            # a custom compute_output_shape that reads its weights (self.kernel.shape): build first
            self._build_once(input_shape)
            output_shape = tuple(self.compute_output_shape(input_shape))
        self._build_once(input_shape)
        self._output_shape = output_shape
        return output_shape

    def _build_once(self, input_shape):
        if not self.built:
            self.build(input_shape)
            self.built = True
            self._build_input_shape = input_shape

    # -- calling ------------------------------------------------------------------------------

    def call(self, inputs, training=False):
        raise NotImplementedError(f"{type(self).__name__} does not define call")

    def _call_takes(self, argument: str) -> bool:
        """Whether the class's call takes `argument` ('training', or 'mask': Keras passes the
        inputs' mask to such a call), cached per class."""
        cls = type(self)
        cached = cls.__dict__.get("_call_arguments")
        if cached is None:
            cached = cls._call_arguments = frozenset(inspect.signature(cls.call).parameters)
        return argument in cached

    def _accepts_training(self) -> bool:
        return self._call_takes("training")

    # -- masking ------------------------------------------------------------------------------

    @property
    def supports_masking(self) -> bool:
        """Whether the layer passes on (or makes) a mask with compute_mask, as Keras's: a layer
        that sets it, or one whose class overrides compute_mask.  A layer without it drops the
        mask of its inputs, with Keras's warning."""
        value = self.__dict__.get("_supports_masking", getattr(type(self), "_supports_masking", None))
        if value is None:
            return type(self).compute_mask is not Layer.compute_mask
        return bool(value)

    @supports_masking.setter
    def supports_masking(self, value):
        self.__dict__["_supports_masking"] = bool(value)

    def compute_mask(self, inputs, previous_mask):
        """The mask of the output, from the inputs and their mask: by default the inputs' mask,
        unchanged (a layer acting on each timestep alone)."""
        return previous_mask

    def _is_users(self) -> bool:
        """A layer class of the user's (kcompile's own wrappers call the layers they hold)."""
        return not (type(self).__module__.startswith("kcompile.") or getattr(self, "_is_model", False))

    def _refuse_sublayers(self):
        """A user's layer that holds other layers (Keras's MLPBlock pattern) would call them with
        weights the model does not know of: refused with the way out, not a tracing error."""
        if not self._is_users():
            return
        for name, value in vars(self).items():
            items = value if isinstance(value, (list, tuple)) else (
                value.values() if isinstance(value, dict) else (value,))
            inner = next((item for item in items if isinstance(item, Layer)), None)
            if inner is not None:
                raise _layer_inside_layer(self, inner, "holds", f"in self.{name}")

    def _traced_call(self, inputs, training, mask=None):
        """self.call on a traced value.  A layer with weights called while a user's layer's call
        runs (one it made in call) is refused as _refuse_sublayers refuses one it holds (its
        weights are none of the model's); one without weights (an Activation) is just called."""
        calling = getattr(_local, "calling", None)    # the user's layer whose call runs
        if calling is not None and self.weights:
            raise _layer_inside_layer(calling, self, "calls", "in its call")
        users = self._is_users() and calling is None
        if users:
            _local.calling = self
        kwargs = {}
        if self._accepts_training():
            kwargs["training"] = bool(training)
        if mask is not None and self._call_takes("mask"):
            kwargs["mask"] = mask
        try:
            return self.call(inputs, **kwargs)
        finally:
            if users:
                _local.calling = None

    def __call__(self, inputs, training=None, mask=None):
        """On an IR value (while tracing): the traced output.  On an array: run eagerly, return numpy.

        While tracing, the inputs' mask (`mask=`, else the one attached to `inputs`) is passed to a
        call that takes `mask=`, and the output gets `compute_mask`'s, as Keras's Layer.__call__."""
        if isinstance(inputs, Node):
            self._refuse_sublayers()
            if not self.built:
                self.build_for(inputs.shape)
                self._refuse_sublayers()      # (one made in build)
            previous_mask = mask if mask is not None else get_keras_mask(inputs)
            output = self._checked_output(self._traced_call(inputs, training, previous_mask),
                                          inputs.shape)
            self._set_output_mask(inputs, output, previous_mask)
            self._add_activity_penalty(output)
            return output
        if hasattr(inputs, "_input_layer"):
            raise NotImplementedError("Calling layers on `Input(...)` tensors (the functional API) is not "
                                      "supported yet; put the layers in a Sequential model instead: "
                                      "Sequential([Input(shape=...), layer1, layer2, ...]).")
        from kcompile.trainer import numeric_array     # (the trainer imports this module)
        try:
            array = numeric_array(inputs, "inputs")
        except ValueError as error:
            raise type(error)(f"layer {self.name!r} ({type(self).__name__}): "
                              f"{error}") from None
        self.build_for((None,) + array.shape[1:])
        if array.dtype.kind in "biu" and self.weights:
            # as Keras: integer (or boolean) inputs meet float32 weights as float32 (a model feeds
            # its inputs so too; an Embedding's ids are exact below 2**24)
            array = array.astype(np.float32)
        return call_eagerly(lambda x: self(x, training=training), array, variables=self.weights,
                            training=bool(training))

    def _add_activity_penalty(self, output) -> None:
        """The layer's activity_regularizer penalty of its traced `output`, as a loss of the step
        (a wrapper calls it for the layers it calls)."""
        regularizer = self.__dict__.get("activity_regularizer")
        if regularizer is not None:
            # as Keras 3: the penalty of the output, divided by the batch size
            penalty = as_traced(regularizer(output))
            if output.type.rank:
                penalty = B.div(penalty, B.dim_size(output, 0, penalty.dtype))
            self.add_loss(penalty)

    def _set_output_mask(self, inputs, output, previous_mask) -> None:
        if self.supports_masking:
            if get_keras_mask(output) is None:
                output_mask = self.compute_mask(inputs, previous_mask)
                if output_mask is not None:
                    set_keras_mask(output, output_mask)
        elif previous_mask is not None:
            # (Keras 3's warning, word for word)
            warnings.warn(f"Layer '{self.name}' (of type {type(self).__name__}) was passed an input "
                          "with a mask attached to it. However, this layer does not support masking "
                          "and will therefore destroy the mask information. Downstream layers will "
                          "not see the mask.", stacklevel=3)

    def add_loss(self, loss):
        """Add a loss (a value computed in `call` from its inputs or weights) to the model's loss,
        as Keras's `add_loss`: fit trains on, and fit and evaluate report, the compiled loss plus
        every such loss of the step (a value with several entries counts as their sum)."""
        scope = current_scope()
        nodes = [as_traced(value) for value in (loss if isinstance(loss, (list, tuple)) else [loss])]
        if scope is None or not all(isinstance(node, Node) for node in nodes):
            raise ValueError("add_loss() can only be called from inside call(), on a value computed "
                             f"from the layer's inputs or weights (with kcompile.ops); got {loss!r}")
        for node in nodes:
            if node.dtype not in ("f32", "f64"):
                node = B.cast(node, "f32")
            scope.added_losses.append(B.reduce_sum(node) if node.type.rank else node)

    def __deepcopy__(self, memo):
        """A copy of the layer (its weights and settings), belonging to no model: the models that
        hold this one are not copied along."""
        import copy
        import weakref
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = weakref.WeakSet() if key == "_models" else copy.deepcopy(value, memo)
        return clone

    def __getstate__(self):
        """What pickle keeps of the layer: everything but the (weak) set of models holding it; an
        unpickled layer, like a deep copy, belongs to no model."""
        state = dict(self.__dict__)
        state.pop("_models", None)
        return state

    def __setstate__(self, state):
        import weakref
        self.__dict__.update(state)
        self.__dict__["_models"] = weakref.WeakSet()

    # -- configuration ------------------------------------------------------------------------

    def _traced_output(self, output) -> Node:
        """What call returned, as the traced value it must be."""
        traced = as_traced(output)
        if not isinstance(traced, Node):
            raise TypeError(f"layer {self.name!r} ({type(self).__name__}): call returned "
                            f"{type(output).__name__}; it must return the traced value it computes "
                            "from its inputs (a missing `return`?)")
        return traced

    def _checked_output(self, output, input_shape):
        """What call returned, checked to be a traced value of the shape compute_output_shape says
        (the model sizes its buffers and the next layer's weights from the latter)."""
        traced = self._traced_output(output)
        expected = tuple(None if d is None else int(d)
                         for d in self.compute_output_shape(tuple(input_shape)))
        if expected != tuple(traced.shape):
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}): call returned shape "
                             f"{format_shape(traced.shape)}, but compute_output_shape gives "
                             f"{format_shape(expected)}; make the two agree")
        return traced

    def get_build_config(self) -> dict | None:
        """The input shape the layer (or model) was built for, as Keras 3 gives it:
        {"input_shape": (None, ...)}; None when it is not built."""
        shape = self.__dict__.get("_build_input_shape")
        if not self.built or shape is None:
            return None
        return {"input_shape": tuple(shape)}

    def build_from_config(self, config) -> None:
        """Build as `get_build_config()` recorded it (Keras 3's counterpart; None or {}: nothing to
        build)."""
        if not config:
            return
        if not isinstance(config, dict) or "input_shape" not in config:
            raise ValueError(f"build_from_config takes the dict get_build_config() returns, "
                             f"{{'input_shape': (None, ...)}}; got {config!r}")
        shape = config["input_shape"]
        if not isinstance(shape, (list, tuple)):
            raise ValueError(f"build_from_config: input_shape must be a list or tuple such as "
                             f"(None, 28, 28); got {shape!r}")
        self.build_for(tuple(shape))

    def get_config(self) -> dict:
        config = {"name": self.name, "trainable": self.trainable, "dtype": "float32"}
        if self._batch_input_shape is not None:
            config["batch_input_shape"] = self._batch_input_shape
        if type(self).get_config is Layer.get_config and type(self).__init__ is not Layer.__init__:
            config = {**self._recorded_arguments(), **config}
        return config

    def _recorded_arguments(self) -> dict:
        """A custom layer's constructor arguments, when they are plain data (Keras 3's auto config);
        saving it otherwise needs its own get_config."""
        args, kwargs = getattr(self, "_init_arguments", ((), {}))
        signature = inspect.signature(type(self).__init__)
        arguments = {}
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            bound = None
        else:
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    if value:
                        bound = None   # unnamed arguments: no keyword to record them under
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(value)
                else:
                    arguments[name] = value
        if bound is None or not all(_plain_data(value) for value in arguments.values()):
            raise NotImplementedError(
                f"Layer {type(self).__name__} does not define get_config(), and its constructor's "
                f"arguments {args!r} {kwargs!r} are not plain data (numbers, strings, lists, dicts) "
                "that can be recorded for it: define get_config() returning them, with "
                "super().get_config(), to save or clone this layer")
        return arguments

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"
