"""Recurrent layers: SimpleRNN, LSTM and GRU, as ``keras.layers`` (Keras 3 semantics and weights).

The number of timesteps is static, so `call` unrolls the recurrence into the traced graph: a Python
loop over time builds each step's matmuls and gates from IR ops, and `ir.gradients` on the result is
backpropagation through time.  Timestep t of the input is `take(x, t)` (a `slice`), a step's gates
are `slice`s of its matmul's output, and `return_sequences` stacks the steps with `concat`
(`ir.ops_seq`).  Each step computes `x_t @ kernel` and `h @ recurrent_kernel` as Keras's cells do;
the first step starts from zero state, so it skips the recurrent matmul and the terms it would zero.

The weights have Keras 3's names, shapes and layout, so weights copied from Keras give the same
outputs: `kernel` (features, k*units), `recurrent_kernel` (units, k*units) and `bias` with the gates
side by side in Keras's order -- LSTM i, f, c, o (k=4; bias (4*units,), the forget part initialized
to ones by `unit_forget_bias`); GRU z, r, h (k=3; bias (2, 3*units) with `reset_after=True`, the
Keras 3 default: input bias and recurrent bias; (3*units,) otherwise).

Dropout in training multiplies the inputs (`dropout`) and the state fed to the recurrent matmul
(`recurrent_dropout`) by masks drawn once per batch and shared by every step.  With
`recurrent_dropout`, LSTM and GRU use one mask per gate for each, with one matmul per gate, as
Keras 3's cells do then (their `implementation=1`).
"""
from __future__ import annotations

import numbers

import numpy as np

from ir import build as B
from ir import build_seq as S

from kcompile import activations, initializers, regularizers
from kcompile.layers.layer import (Layer, check_seed, format_shape, random_stream, training_seed,
                                   wrap)
from kcompile.layers.wrappers import SubOwner, inner_regularization


def _check_rate(argument: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"Argument `{argument}` must be a float in [0, 1) (the fraction of units to "
                         f"drop); got {argument}={value!r}")
    return float(value)


def project(value, kernel, kernel_gates, masks):
    """value @ kernel, with dropout: (value * mask) @ kernel for one mask, or with one mask per
    gate, the gates' (value * mask_g) @ kernel_g side by side (`kernel_gates`: kernel's blocks)."""
    if masks is None:
        return B.matmul(value, kernel)
    if len(masks) == 1:
        return B.matmul(B.mul(value, masks[0]), kernel)
    return S.concat([B.matmul(B.mul(value, mask), block)
                     for mask, block in zip(masks, kernel_gates)], 1)


class _Recurrent(Layer):
    """What the three layers share: arguments, input checks, the unrolled loop, dropout, config.

    A subclass sets `GATES` (how many units-wide blocks its kernels hold) and writes `step`."""

    GATES = 1
    _NOT_SUPPORTED = ("kernel_constraint", "recurrent_constraint", "bias_constraint")

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, **kwargs):
        for argument in self._NOT_SUPPORTED:
            if kwargs.pop(argument, None) is not None:
                raise NotImplementedError(f"{type(self).__name__}({argument}=...) is not supported yet")
        for argument in ("use_cudnn", "implementation"):
            kwargs.pop(argument, None)      # backend choices of Keras: one implementation here
        zero_output_for_mask = bool(kwargs.pop("zero_output_for_mask", False))
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units <= 0:
            raise ValueError("Received an invalid value for argument `units`, expected a positive "
                             f"integer, got {units!r}.")
        if return_state:
            raise NotImplementedError(f"{type(self).__name__}(return_state=True) is not supported: a "
                                      "Sequential model passes one value from layer to layer. Use "
                                      "return_sequences=True to get every step's output.")
        if stateful:
            raise NotImplementedError(f"{type(self).__name__}(stateful=True) is not supported: every "
                                      "batch starts from zero state")
        seed = check_seed(seed, type(self).__name__)
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        # (the penalties of the whole kernels and bias, as Keras's cells regularize them; the
        # activity penalty is Layer.__call__'s, of the layer's output)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self.dropout = _check_rate("dropout", dropout)
        self.recurrent_dropout = _check_rate("recurrent_dropout", recurrent_dropout)
        self.seed = seed
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)
        # NOTE: the loop is always unrolled (the sequence length is static); `unroll` is kept
        # only so configs round-trip with Keras's.
        self.unroll = bool(unroll)
        # what return_sequences outputs at a masked step: zeros, or (False, Keras's default) the
        # state carried over it
        self.zero_output_for_mask = zero_output_for_mask
        self.kernel = self.recurrent_kernel = self.bias = None

    # -- shapes and weights -------------------------------------------------------------------

    def _check_input(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or any(d is None for d in input_shape[1:]):
            raise ValueError(f"{type(self).__name__} layer {self.name!r} needs inputs of shape "
                             f"(batch, timesteps, features) with a known number of timesteps and "
                             f"features; got {format_shape(input_shape)}")
        if self.kernel is not None and input_shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"Input of layer {self.name!r} is incompatible with the layer: expected "
                             f"{self.kernel.shape[0]} features, got input shape "
                             f"{format_shape(input_shape)}")

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    def _bias_shape(self) -> tuple:
        return (self.GATES * self.units,)

    def _bias_initial_value(self, shape, dtype="float32"):
        return self.bias_initializer(shape, dtype)

    def build(self, input_shape):
        self._check_input(input_shape)
        k = self.GATES * self.units
        self.kernel = self.add_weight(shape=(input_shape[-1], k), initializer=self.kernel_initializer,
                                      name="kernel", regularizer=self.kernel_regularizer)
        self.recurrent_kernel = self.add_weight(shape=(self.units, k),
                                                initializer=self.recurrent_initializer,
                                                name="recurrent_kernel",
                                                regularizer=self.recurrent_regularizer)
        if self.use_bias:
            self.bias = self.add_weight(shape=self._bias_shape(), name="bias",
                                        initializer=self._bias_initial_value,
                                        regularizer=self.bias_regularizer)
        self.built = True

    # -- the unrolled loop --------------------------------------------------------------------

    def _masks(self, width: int, rate: float, kind: str, count: int) -> list:
        """Keras's dropout masks of an RNN cell, `count` of them (one per gate, or one for all):
        0 or 1/(1-rate) of shape (batch, width), drawn once and shared by every timestep, from
        a stream of this layer's own (distinct per layer name, seed and kind)."""
        stream = random_stream(self, kind)
        uniform = B.random_uniform(training_seed(self), (None, count * width), stream)
        mask = B.select(B.ge(uniform, rate), B.full_like(uniform, 1.0 / (1.0 - rate)), 0.0)
        return [mask] if count == 1 else S.split(mask, count, 1)

    def _mask_count(self) -> int:
        """How many dropout masks the inputs and the state each get (SimpleRNN: one)."""
        return 1

    def compute_mask(self, inputs, previous_mask):
        return previous_mask if self.return_sequences else None

    def call(self, inputs, training=False, mask=None):
        self._check_input(inputs.shape)
        steps = inputs.shape[1]
        input_masks = state_masks = None
        count = self._mask_count()
        if training and self.dropout > 0:
            input_masks = self._masks(inputs.shape[2], self.dropout, "dropout", count)
        if training and self.recurrent_dropout > 0:
            state_masks = self._masks(self.units, self.recurrent_dropout, "recurrent_dropout", count)
        weights = self._step_weights()
        if count > 1 and (input_masks or state_masks):
            weights["kernel_gates"] = S.split(weights["kernel"], self.GATES, 1)
            weights["recurrent_kernel_gates"] = S.split(weights["recurrent_kernel"], self.GATES, 1)
        state, outputs = None, []
        order = range(steps - 1, -1, -1) if self.go_backwards else range(steps)
        # NOTE: x_t @ kernel step by step, as Keras's cells compute it.  One matmul over all steps
        # ([batch, T, F] @ kernel) measured 15% slower per train step (LSTM(128), T=28, one
        # thread): its gradient sums T pads of the steps' gradients along the time axis.
        for t in order:
            x_t = S.take(inputs, t, 1)
            previous = state
            projected = project(x_t, weights["kernel"], weights.get("kernel_gates"), input_masks)
            output, state = self.step(projected, state, weights, state_masks)
            if mask is not None:
                output, state = self._masked_step(S.take(mask, t, 1), output, state, previous)
            outputs.append(output)
        if self.return_sequences:
            return S.stack(outputs, 1)
        return outputs[-1]

    def _masked_step(self, keep, output, state, previous):
        """Keras's masked step (`backend.rnn` on JAX): where `keep` (bool [batch]) is false the
        state is carried over unchanged (zero before the first step) and the output is the carried
        h, or zeros with zero_output_for_mask."""
        keep = B.reshape(keep, keep.shape + (1,))
        if isinstance(state, tuple):
            olds = (None,) * len(state) if previous is None else previous
            state = tuple(B.select(keep, new, 0.0 if old is None else old)
                          for new, old in zip(state, olds))
            carried = state[0]
        else:
            state = carried = B.select(keep, state, 0.0 if previous is None else previous)
        # NOTE: Keras's unrolled loop (unroll=True) ignores zero_output_for_mask
        if self.zero_output_for_mask and not self.unroll:
            return B.select(keep, output, 0.0), state
        return carried, state

    def _step_weights(self) -> dict:
        """The weights' traced values, and any fixed slices of them, made once for all steps."""
        return {"kernel": self.kernel.value, "recurrent_kernel": self.recurrent_kernel.value,
                "bias": self.bias.value if self.use_bias else None}

    def step(self, projected, state, weights, state_masks):
        """One timestep: (output, new state) from the step's input times the kernel and the state
        (None at the first step, when the state is zero); `state_masks` are the recurrent dropout
        masks (see `project`), or None."""
        raise NotImplementedError

    # -- configuration ------------------------------------------------------------------------

    def get_config(self):
        # Keras 3's keys in Keras's order; the constraints are always None here.  (Keras's
        # SimpleRNN config has no `seed`: kcompile's keeps it, so that a saved layer, or a
        # Bidirectional's copies, draw the same dropout masks.)
        config = super().get_config()
        config.update({
            "return_sequences": self.return_sequences,
            "return_state": False,
            "go_backwards": self.go_backwards,
            "stateful": False,
            "unroll": self.unroll,
            "zero_output_for_mask": self.zero_output_for_mask,
            "units": self.units,
            "activation": activations.serialize(self.activation),
        })
        config.update(self._gate_config())
        config.update({
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
        })
        config.update(self._bias_config())
        config.update({
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            "kernel_constraint": None,
            "recurrent_constraint": None,
            "bias_constraint": None,
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
        })
        config.update(self._last_config())
        config["seed"] = self.seed
        return config

    def _gate_config(self) -> dict:
        return {}

    def _bias_config(self) -> dict:
        return {}

    def _last_config(self) -> dict:
        return {}


class SimpleRNN(_Recurrent):
    """A fully connected RNN: h_t = activation(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel).

    Args (as `keras.layers.SimpleRNN`):
        units: size of the output and the state.
        activation: default 'tanh'.
        use_bias, kernel_initializer ('glorot_uniform'), recurrent_initializer ('orthogonal'),
        bias_initializer ('zeros').
        kernel_regularizer, recurrent_regularizer, bias_regularizer: penalties of the weights,
        added to the loss; activity_regularizer: of the layer's output (divided by the batch).
        dropout: fraction of the inputs dropped in training (one mask for every timestep);
        recurrent_dropout: the same for the state fed to the recurrent matmul (LSTM and GRU:
        one mask per gate, and then one per gate for `dropout` too, as Keras 3).
        return_sequences: output every step, (batch, timesteps, units), instead of the last one.
        go_backwards: read the sequence from its end (the steps are output in that order).
        seed: mixed into the dropout masks' random stream.
    """

    GATES = 1

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, seed=None, **kwargs):
        super().__init__(units, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, seed=seed,
                         return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll, **kwargs)

    def step(self, projected, h, weights, state_masks):
        z = projected
        if weights["bias"] is not None:
            z = B.add(z, weights["bias"])
        if h is not None:
            z = B.add(z, project(h, weights["recurrent_kernel"], None, state_masks))
        h = self.activation(z)
        return h, h


class _Gated(_Recurrent):
    """LSTM and GRU: a recurrent activation for the gates; with recurrent dropout, one dropout
    mask per gate (see `_mask_count`)."""

    def _mask_count(self) -> int:
        # Keras 3's LSTM and GRU switch to their `implementation=1` when recurrent_dropout is set:
        # each gate's copy of the inputs and of the state is dropped by a mask of its own (input
        # dropout alone keeps one mask for all gates, as `implementation=2`).
        return self.GATES if self.recurrent_dropout > 0 else 1

    def _gate_config(self) -> dict:
        return {"recurrent_activation": activations.serialize(self.recurrent_activation)}


class LSTM(_Gated):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), as `keras.layers.LSTM`.

    z = x_t @ kernel + h @ recurrent_kernel + bias, split into gates i, f, c, o (in that order):
    c_t = sigmoid(f) * c + sigmoid(i) * tanh(c~), h_t = sigmoid(o) * tanh(c_t) (with the default
    activations).  Arguments as `SimpleRNN`, plus `recurrent_activation` (default 'sigmoid') and
    `unit_forget_bias` (default True: the forget gate's bias starts at one).
    """

    GATES = 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, seed=seed,
                         return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_initial_value(self, shape, dtype="float32"):
        if not self.unit_forget_bias:
            return self.bias_initializer(shape, dtype)
        u = self.units
        return np.concatenate([self.bias_initializer((u,), dtype), np.ones((u,), np.float32),
                               self.bias_initializer((2 * u,), dtype)])

    def step(self, projected, state, weights, state_masks):
        z = projected
        if state is not None:
            h, c = state
            z = B.add(z, project(h, weights["recurrent_kernel"],
                                 weights.get("recurrent_kernel_gates"), state_masks))
        if weights["bias"] is not None:
            z = B.add(z, weights["bias"])
        z_i, z_f, z_c, z_o = S.split(z, 4, 1)
        i = self.recurrent_activation(z_i)
        candidate = B.mul(i, self.activation(z_c))
        c = candidate if state is None else B.add(B.mul(self.recurrent_activation(z_f), c), candidate)
        h = B.mul(self.recurrent_activation(z_o), self.activation(c))
        return h, (h, c)

    def _bias_config(self) -> dict:
        return {"unit_forget_bias": self.unit_forget_bias}


class GRU(_Gated):
    """Gated recurrent unit (Cho et al., 2014), as `keras.layers.GRU`.

    Gates z (update), r (reset), h (candidate) side by side in the kernels.  With `reset_after=True`
    (the default, Keras 3's and cuDNN's convention) the reset gate multiplies the recurrent
    projection after the matmul, and the bias has two rows (input bias, recurrent bias):
    hh = tanh(x_h + r * (h @ U_h + b_rh)); h_t = z * h + (1 - z) * hh.  With `reset_after=False`:
    hh = tanh(x_h + (r * h) @ U_h), one bias row.  Arguments as `LSTM` (without unit_forget_bias).
    """

    GATES = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, seed=None,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, reset_after=True, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation,
                         use_bias=use_bias, kernel_initializer=kernel_initializer,
                         recurrent_initializer=recurrent_initializer,
                         bias_initializer=bias_initializer, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, seed=seed,
                         return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll, **kwargs)
        self.reset_after = bool(reset_after)

    def _bias_shape(self) -> tuple:
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _step_weights(self) -> dict:
        weights = super()._step_weights()
        bias, kernel = weights["bias"], weights["recurrent_kernel"]
        weights["input_bias"] = weights["recurrent_bias"] = None
        if bias is not None and self.reset_after:
            weights["input_bias"], weights["recurrent_bias"] = S.take(bias, 0, 0), S.take(bias, 1, 0)
        elif bias is not None:
            weights["input_bias"] = bias
        if not self.reset_after:
            u = self.units
            weights["recurrent_gates"] = S.slice(kernel, 0, 2 * u, 1)
            weights["recurrent_candidate"] = S.slice(kernel, 2 * u, 3 * u, 1)
        return weights

    def step(self, projected, h, weights, state_masks):
        matrix_x = projected
        if weights["input_bias"] is not None:
            matrix_x = B.add(matrix_x, weights["input_bias"])
        x_z, x_r, x_h = S.split(matrix_x, 3, 1)
        gates = weights.get("recurrent_kernel_gates")     # (with recurrent dropout)
        if self.reset_after:
            inner = None if h is None else project(h, weights["recurrent_kernel"], gates,
                                                   state_masks)
            if weights["recurrent_bias"] is not None:
                inner = (B.broadcast(weights["recurrent_bias"], matrix_x.shape) if inner is None
                         else B.add(inner, weights["recurrent_bias"]))
        else:
            inner = None if h is None else project(
                h, weights["recurrent_gates"], gates and gates[:2],
                state_masks and state_masks[:2])
        if inner is None:       # first step without bias: the recurrent terms are all zero
            z = self.recurrent_activation(x_z)
            hh = self.activation(x_h)
        else:
            r_z, r_r = S.slice(inner, 0, self.units, 1), S.slice(inner, self.units, 2 * self.units, 1)
            z = self.recurrent_activation(B.add(x_z, r_z))
            r = self.recurrent_activation(B.add(x_r, r_r))
            if self.reset_after:
                recurrent_h = B.mul(r, S.slice(inner, 2 * self.units, 3 * self.units, 1))
                hh = self.activation(B.add(x_h, recurrent_h))
            elif h is None:
                hh = self.activation(x_h)
            else:
                h_h = h if state_masks is None else B.mul(h, state_masks[-1])
                hh = self.activation(B.add(x_h, B.matmul(B.mul(r, h_h),
                                                         weights["recurrent_candidate"])))
        candidate = B.mul(B.sub(1.0, z), hh)
        h = candidate if h is None else B.add(B.mul(z, h), candidate)
        return h, h

    def _last_config(self) -> dict:
        return {"reset_after": self.reset_after}


class Bidirectional(Layer):
    """A recurrent layer run forward and backward over the sequence, the two outputs merged, as
    `keras.layers.Bidirectional(LSTM(64))`.

    The wrapper makes two copies of `layer` from its config, `forward_<name>` and
    `backward_<name>` (the latter with go_backwards flipped, or `backward_layer`); with
    return_sequences, the backward outputs are put back in time order before merging.  Weights:
    the forward copy's, then the backward copy's, as Keras lists them.

    Args:
        layer: a SimpleRNN, LSTM or GRU.
        merge_mode: 'concat' (default), 'sum', 'mul' or 'ave'.
        backward_layer: optional recurrent layer for the backward direction (go_backwards=True).
    """

    _MERGE_MODES = ("concat", "sum", "mul", "ave")

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        if not isinstance(layer, _Recurrent):
            raise ValueError("Bidirectional wraps a recurrent layer (SimpleRNN, LSTM or GRU); got "
                             f"{type(layer).__name__}")
        if merge_mode is None:
            raise NotImplementedError("Bidirectional(merge_mode=None) returns two outputs, which a "
                                      "Sequential model cannot pass on; use 'concat', 'sum', 'mul' "
                                      "or 'ave'")
        if merge_mode not in self._MERGE_MODES:
            raise ValueError(f"Bidirectional: `merge_mode` must be one of {list(self._MERGE_MODES)}; "
                             f"got merge_mode={merge_mode!r}")
        if weights is not None:
            raise NotImplementedError("Bidirectional(weights=...) is not supported; use set_weights")
        if backward_layer is not None:
            if not isinstance(backward_layer, _Recurrent):
                raise ValueError("Bidirectional: `backward_layer` must be a recurrent layer; got "
                                 f"{type(backward_layer).__name__}")
            if backward_layer.go_backwards == layer.go_backwards \
                    or backward_layer.return_sequences != layer.return_sequences:
                raise ValueError("Bidirectional: `backward_layer` must have the opposite go_backwards "
                                 "and the same return_sequences as `layer`")
            if merge_mode != "concat" and backward_layer.units != layer.units:
                raise ValueError(f"Bidirectional(merge_mode={merge_mode!r}) combines the two "
                                 f"directions element by element, so `backward_layer` needs the "
                                 f"forward layer's units ({layer.units}); got {backward_layer.units}"
                                 f" (or use merge_mode='concat')")
        super().__init__(**kwargs)
        self.merge_mode = merge_mode
        self.layer = layer
        config = layer.get_config()
        forward = type(layer).from_config({**config, "name": f"forward_{layer.name}"})
        if backward_layer is None:
            backward = type(layer).from_config({**config, "name": f"backward_{layer.name}",
                                                "go_backwards": not layer.go_backwards})
        else:
            backward = type(backward_layer).from_config({**backward_layer.get_config(),
                                                         "name": f"backward_{backward_layer.name}"})
        # As Keras: with return_sequences, both directions output zeros at masked steps
        forward.zero_output_for_mask = forward.return_sequences
        backward.zero_output_for_mask = backward.return_sequences
        self.forward_layer, self.backward_layer = forward, backward
        self._given_backward = backward_layer
        self.return_sequences = layer.return_sequences

    @property
    def weights(self) -> list:
        return self.forward_layer.weights + self.backward_layer.weights

    def regularization(self):
        """The two directions' weight penalties (each copy has the regularizers of its layer)."""
        return inner_regularization(self, [self.forward_layer, self.backward_layer])

    @property
    def losses(self) -> list:
        return Layer.losses.fget(self) + self.forward_layer.losses + self.backward_layer.losses

    def compute_output_shape(self, input_shape):
        shape = tuple(self.forward_layer.compute_output_shape(input_shape))
        if self.merge_mode == "concat":
            # (a backward_layer may have other units than the forward one)
            backward = tuple(self.backward_layer.compute_output_shape(input_shape))
            shape = shape[:-1] + (shape[-1] + backward[-1],)
        return shape

    def build(self, input_shape):
        for inner in (self.forward_layer, self.backward_layer):
            inner.build_for(input_shape)
            for variable in inner.weights:
                variable._owner = SubOwner(self, inner)
        self.built = True

    def compute_mask(self, inputs, previous_mask):
        return previous_mask if self.return_sequences else None

    def call(self, inputs, training=False, mask=None):
        wrap(self, self.forward_layer)
        wrap(self, self.backward_layer)
        forward = self.forward_layer.call(inputs, training=training, mask=mask)
        backward = self.backward_layer.call(inputs, training=training, mask=mask)
        # each direction's activity penalty of its own output, as Keras calls the two layers
        self.forward_layer._add_activity_penalty(forward)
        self.backward_layer._add_activity_penalty(backward)
        if self.return_sequences:
            steps = backward.shape[1]
            backward = S.stack([S.take(backward, t, 1) for t in range(steps - 1, -1, -1)], 1)
        if self.merge_mode == "concat":
            return S.concat([forward, backward], forward.type.rank - 1)
        if self.merge_mode == "sum":
            return B.add(forward, backward)
        if self.merge_mode == "mul":
            return B.mul(forward, backward)
        return B.mul(B.add(forward, backward), 0.5)

    def get_config(self):
        from kcompile import layers as layers_module
        config = super().get_config()
        config.update({"merge_mode": self.merge_mode, "layer": layers_module.serialize(self.layer)})
        if self._given_backward is not None:
            config["backward_layer"] = layers_module.serialize(self._given_backward)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from kcompile import layers as layers_module
        config = dict(config)
        layer = layers_module.deserialize(config.pop("layer"), custom_objects)
        backward = config.pop("backward_layer", None)
        if backward is not None:
            backward = layers_module.deserialize(backward, custom_objects)
        return cls(layer, backward_layer=backward, **config)
