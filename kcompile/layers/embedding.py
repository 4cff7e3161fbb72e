"""Embedding, as `keras.layers.Embedding`: integer ids -> rows of a trainable table.

The lookup is the `gather` primitive; its gradient is `scatter_add`, the sum of the gradient rows
of every occurrence of an id, so the optimizer updates the whole (dense) table.  Models are fed
float32 arrays (an `Input(dtype='int32')` takes integer ids and feeds them as float32, exact below
2**24), so the ids arrive as floats holding integers and are cast to i32 in the graph.

Ids outside [0, input_dim): when the model's input feeds the Embedding directly (ids straight from
the user's data), fit, evaluate, predict and the *_on_batch methods raise a ValueError naming the
id and its position (`Embedding.check_ids`), before any step runs.  Ids computed inside the model
(an Embedding after other layers) are clamped to the nearest row: a negative id or -inf reads row 0,
an id past the end or +inf row input_dim - 1, and NaN row 0.  The clamp is done on the floats,
before the cast to i32, because converting a float outside the i32 range (an id >= 2**31, +-inf,
NaN) is undefined (LLVM's fptosi gives poison).  Keras differs by backend there: on JAX an id past
the end gives NaN and a negative id counts from the end; on TensorFlow both raise.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from ir import build as B
from ir import build_nn as NN

from kcompile import initializers, regularizers
from kcompile.layers.layer import Layer, refuse_unsupported

# ids travel as float32 (see the module docstring): every id below this is exact
MAX_INPUT_DIM = 2 ** 24

# Keras's short names for its default embedding initializer
_ALIASES = {"uniform": "random_uniform", "normal": "random_normal"}


class Embedding(Layer):
    """Maps each integer id in [0, input_dim) to a vector of `output_dim` values:
    (batch, ...) -> (batch, ..., output_dim).

    Args:
        input_dim: the number of ids (rows of the table).
        output_dim: the size of each vector.
        embeddings_initializer: default uniform on [-0.05, 0.05], as Keras.
        mask_zero: id 0 is padding: the output's mask (`compute_mask`) is `ids != 0`, so the
            layers after it that support masking skip those steps (an RNN carries its state over
            them, GlobalAveragePooling1D leaves them out of the mean).  Id 0 still has its row,
            as in Keras.
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero=False,
                 weights=None, lora_rank=None, activity_regularizer=None, quantization_config=None,
                 **kwargs):
        refuse_unsupported("Embedding", {"embeddings_constraint": embeddings_constraint,
                                         "lora_rank": lora_rank,
                                         "quantization_config": quantization_config})
        if kwargs.pop("input_length", None) is not None:
            warnings.warn("Embedding's `input_length` argument is deprecated (as in Keras 3); give "
                          "the model an input shape instead", stacklevel=2)
        for argument, value in [("input_dim", input_dim), ("output_dim", output_dim)]:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"Embedding: `{argument}` must be a positive integer; got "
                                 f"{argument}={value!r}")
        if input_dim > MAX_INPUT_DIM:
            raise ValueError(f"Embedding: input_dim={input_dim} is more ids than kcompile can feed "
                             f"exactly: ids travel as float32, exact up to 2**24 = {MAX_INPUT_DIM}; "
                             "hash or bucket the ids into at most that many rows")
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        if isinstance(embeddings_initializer, str):
            embeddings_initializer = _ALIASES.get(embeddings_initializer, embeddings_initializer)
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)
        # (Layer.__call__ adds its penalty of the output, divided by the batch size, as Dense's)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero     # (as Keras: without it, a mask is dropped)
        self.embeddings = None
        self._initial_weights = weights

    def compute_output_shape(self, input_shape):
        if not input_shape:
            raise ValueError(f"Embedding layer {self.name!r} needs inputs with a batch axis")
        return tuple(input_shape) + (self.output_dim,)

    def build(self, input_shape):
        self.embeddings = self.add_weight((self.input_dim, self.output_dim),
                                          self.embeddings_initializer, name="embeddings",
                                          regularizer=self.embeddings_regularizer)
        if self._initial_weights is not None:
            self.set_weights(self._initial_weights)
            self._initial_weights = None
        self.built = True

    def call(self, inputs):
        if inputs.dtype == "i32":
            ids = inputs  # (gather clamps i32 ids itself)
        else:
            # NOTE: clamp before the cast (see the module docstring).  A comparison with NaN is
            # false, so the first select sends NaN (and negative ids, -inf) to row 0.
            ids = B.select(B.ge(inputs, B.scalar(0, inputs)), inputs, 0)
            last = self.input_dim - 1
            ids = B.cast(B.select(B.le(ids, B.scalar(last, ids)), ids, last), "i32")
        return NN.gather(self.embeddings.value, ids)

    def compute_mask(self, inputs, previous_mask=None):
        if not self.mask_zero:
            return None
        return B.ne(inputs, 0)

    def check_ids(self, ids: np.ndarray, argument: str) -> None:
        """A clear error for ids (a model input feeding this layer directly) outside
        [0, input_dim), NaN included; nothing is copied unless one is out of range."""
        if ids.size == 0:
            return
        low, high = ids.min(), ids.max()
        if low >= 0 and high < self.input_dim:   # (false for NaN)
            return
        from kcompile.predictor import first_id_outside
        position, value, shown, count = first_id_outside(ids, self.input_dim)
        more = f" (and {count - 1} more)" if count > 1 else ""
        if np.isnan(value):
            fix = "replace the NaN ids (missing values) with an id of their own"
        elif value < 0:
            fix = "ids are never negative: map them to 0, 1, ... first"
        elif value < MAX_INPUT_DIM:
            fix = (f"make the table larger (Embedding(input_dim={int(value) + 1}, ...) or more) or "
                   "map the ids into range")
        else:
            fix = "map the ids into range (hash or bucket them)"
        raise ValueError(f"Embedding layer {self.name!r} looks up ids in [0, {self.input_dim}) "
                         f"(input_dim={self.input_dim}), but `{argument}` holds the id {shown} at "
                         f"position [{', '.join(map(str, position))}] (sample {position[0]}){more}: "
                         f"{fix}.")

    def get_config(self):
        config = super().get_config()
        config.update({
            "input_dim": self.input_dim, "output_dim": self.output_dim,
            "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": regularizers.serialize(self.embeddings_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            "embeddings_constraint": None,
            "mask_zero": self.mask_zero,
            "quantization_config": None,
        })
        return config
