"""Activation functions, as ``keras.activations``.

Each function takes an IR value while a model is traced and returns one; the compiler sees only the
primitives they decompose into.  Called on a numpy array (or anything array-like) a function is traced
on the spot and run by the reference interpreter, so `relu(np.array([-1., 2.]))` works as in Keras.

The formulas are Keras 3's (its JAX backend's `jax.nn` functions), with these choices where the
primitive set has no exact counterpart:

- `expm1(x)` (elu, selu, celu) is `exp(x) - 1`: absolute error ~1e-7 near 0, where the result is
  near 0 anyway.
- `log1p(exp(-|x|))` (softplus, log_sigmoid, mish) is `log(1 + exp(-|x|))`: absolute error below
  one float32 ulp of 1 (6e-8).
- `erf` (gelu with approximate=False, Keras 3's default) is `erf_approximation` below: Eigen's and
  XLA's float32 rational approximation, |error| < 1e-7 in exact arithmetic and < 5e-7 evaluated in
  float32; its derivative is within 4e-6 of 2/sqrt(pi) exp(-x^2).

Branches that would overflow in the branch `select` discards are clamped first (`exp(min(x, 0))`),
because the gradient of the discarded branch is multiplied by zero, and 0 * inf is NaN.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ir import Node
from ir import build as B


def _eager(fn, x, *args, **kwargs):
    from kcompile.layers.layer import call_eagerly
    return call_eagerly(lambda node: fn(node, *args, **kwargs), x)


def _activation(fn, keeps_integers: bool = False):
    """Make `fn(x: Node, ...)` also accept arrays (run eagerly on the reference interpreter), and
    integer (or bool) values, which it computes in float32 as Keras's do (but for relu and
    hard_tanh, `keeps_integers`, whose results stay integers there too)."""
    # (the wrapper must not refer to itself: kcompile.describe walks a layer's activation, closure
    # cells included, to key the compile cache, and a cycle makes it trace instead)
    @functools.wraps(fn)
    def activation(x, *args, **kwargs):
        if not isinstance(x, Node):
            array = np.asarray(x)
            if not keeps_integers and array.dtype.kind in "iub":
                array = array.astype(np.float32)
            return _eager(fn, array, *args, **kwargs)
        if not keeps_integers and x.dtype not in ("f32", "f64"):
            x = B.cast(x, "f32")
        return fn(x, *args, **kwargs)
    return activation


# -- helpers in primitives ------------------------------------------------------------------------

# NOTE: the stable forms below branch on the sign of x with one `select` condition and take |x| as
# that select too, never as `abs` or `max`/`min`: those have gradient 0 at x == 0 (abs's sign(0),
# max's tie), which gave sigmoid'(0) = softplus'(0) = 0 -- an input row of zeros into a zero-bias
# sigmoid layer got no gradient.  Through the select, x == 0 takes one branch whole, whose gradient
# there is the true one (as JAX's where-based forms).

def _expm1_nonpositive(x: Node) -> Node:
    """exp(x) - 1 for x <= 0 (0 for x > 0): finite for every x, and so is its gradient; at 0 the
    gradient is exp(0) = 1."""
    return B.sub(B.exp(B.select(B.gt(x, 0.0), B.zeros_like(x), x)), 1.0)


def _softplus(x: Node) -> Node:
    # log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|)): never overflows.
    positive = B.ge(x, 0.0)
    return B.add(B.select(positive, x, B.zeros_like(x)),
                 B.log(B.add(1.0, B.exp(B.select(positive, B.neg(x), x)))))


def _sigmoid(x: Node) -> Node:
    # NOTE: the textbook 1/(1+exp(-x)) has exp(-x) = inf for x < -88, and its gradient multiplies that
    # inf by 0 (NaN).  exp(-|x|) never overflows, and each branch of the select is finite everywhere.
    positive = B.ge(x, 0.0)
    e = B.exp(B.select(positive, B.neg(x), x))
    denominator = B.add(1.0, e)
    return B.select(positive, B.div(1.0, denominator), B.div(e, denominator))


# Eigen's / XLA's float32 erf: x * P(x^2) / Q(x^2) on [-4, 4] (erf(4) = 1 - 1.5e-8 rounds to 1).
_ERF_NUMERATOR = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
                  -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
                  -2.72614225801306e-10)   # coefficients of x^0, x^2, ..., x^12 (times x)
_ERF_DENOMINATOR = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
                    -2.13374055278905e-04, -1.45660718464996e-05)   # of x^0, x^2, ..., x^8


def _polynomial(z: Node, coefficients) -> Node:
    """coefficients[0] + coefficients[1] z + ..., by Horner's rule."""
    result = B.scalar(coefficients[-1], z)
    for coefficient in reversed(coefficients[:-1]):
        result = B.add(B.mul(result, z), coefficient)
    return result


def erf_approximation(x: Node) -> Node:
    """erf(x) from primitives (a rational approximation, |error| < 5e-7 in float32); see the module
    docstring."""
    x = B.clip(x, -4.0, 4.0)
    x2 = B.mul(x, x)
    return B.div(B.mul(x, _polynomial(x2, _ERF_NUMERATOR)), _polynomial(x2, _ERF_DENOMINATOR))


# -- activations ----------------------------------------------------------------------------------

@functools.partial(_activation, keeps_integers=True)
def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """max(x, 0) (gradient 0 at 0); with Keras's options: `negative_slope` below the threshold,
    values clipped at `max_value`, and zero (or the negative slope) at or below `threshold`."""
    if negative_slope == 0.0 and max_value is None and threshold == 0.0:
        return B.relu(x)
    if negative_slope != 0.0 and max_value is None and threshold == 0.0:
        return leaky_relu(x, negative_slope=negative_slope)
    negative_part = B.relu(B.add(B.neg(x), threshold)) if negative_slope != 0.0 else None
    if threshold != 0.0:
        out = B.select(B.gt(x, threshold), x, 0.0)
    else:
        out = B.relu(x)
    if max_value is not None:
        out = B.clip(out, 0.0, float(max_value))
    if negative_part is not None:
        out = B.sub(out, B.mul(negative_part, float(negative_slope)))
    return out


@_activation
def leaky_relu(x, negative_slope=0.2):
    """x for x >= 0, negative_slope * x below (Keras 3's default slope is 0.2)."""
    return B.select(B.ge(x, 0.0), x, B.mul(x, float(negative_slope)))


@_activation
def relu6(x):
    """min(max(x, 0), 6)."""
    return B.clip(x, 0.0, 6.0)


@_activation
def sigmoid(x):
    """1 / (1 + exp(-x)), written so neither the value nor its gradient overflows."""
    return _sigmoid(x)


@_activation
def tanh(x):
    return B.tanh(x)


@_activation
def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) over `axis`, with the maximum subtracted first."""
    if x.type.rank < 1:
        raise ValueError(f"softmax needs an input with at least one axis; got shape {x.shape}")
    return B.softmax(x, axis)


@_activation
def log_softmax(x, axis=-1):
    """x - logsumexp(x) over `axis`, computed as (x - max) - log(sum(exp(x - max)))."""
    if x.type.rank < 1:
        raise ValueError(f"log_softmax needs an input with at least one axis; got shape {x.shape}")
    return B.log_softmax(x, axis)


@_activation
def elu(x, alpha=1.0):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return B.select(B.gt(x, 0.0), x, B.mul(_expm1_nonpositive(x), float(alpha)))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@_activation
def selu(x):
    """scale * elu(x, alpha) with Klambauer et al.'s constants (alpha=1.67326324, scale=1.05070098)."""
    return B.mul(elu(x, alpha=SELU_ALPHA), SELU_SCALE)


@_activation
def celu(x, alpha=1.0):
    """max(x, 0) + alpha * (exp(min(x, 0) / alpha) - 1)."""
    alpha = float(alpha)
    return B.add(B.relu(x), B.mul(_expm1_nonpositive(B.div(x, alpha)), alpha))


@_activation
def softplus(x):
    """log(exp(x) + 1), computed without overflow."""
    return _softplus(x)


@_activation
def softsign(x):
    """x / (|x| + 1)."""
    return B.div(x, B.add(B.abs(x), 1.0))


@_activation
def silu(x):
    """x * sigmoid(x) (also called swish)."""
    return B.mul(x, _sigmoid(x))


swish = silu


@_activation
def gelu(x, approximate=False):
    """x * P(X <= x) for X ~ N(0, 1): 0.5 x (1 + erf(x / sqrt(2))), Keras 3's default; with
    `approximate=True`, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    if approximate:
        inner = B.mul(B.add(x, B.mul(B.mul(B.mul(x, x), x), 0.044715)), math.sqrt(2.0 / math.pi))
        return B.mul(B.mul(x, 0.5), B.add(B.tanh(inner), 1.0))
    return B.mul(B.mul(x, 0.5), B.add(erf_approximation(B.mul(x, math.sqrt(0.5))), 1.0))


@_activation
def hard_sigmoid(x):
    """relu6(x + 3) / 6, Keras 3's formula (Keras 2 used max(0, min(1, 0.2 x + 0.5)))."""
    return B.div(B.clip(B.add(x, 3.0), 0.0, 6.0), 6.0)


@_activation
def hard_silu(x):
    """x * hard_sigmoid(x) (also called hard_swish)."""
    return B.mul(x, hard_sigmoid(x))


hard_swish = hard_silu


@functools.partial(_activation, keeps_integers=True)
def hard_tanh(x):
    """-1 below -1, 1 above 1, x between."""
    return B.clip(x, -1.0, 1.0)


@_activation
def exponential(x):
    """exp(x)."""
    return B.exp(x)


@_activation
def log_sigmoid(x):
    """log(sigmoid(x)) = -softplus(-x)."""
    return B.neg(_softplus(B.neg(x)))


@_activation
def mish(x):
    """x * tanh(softplus(x))."""
    return B.mul(x, B.tanh(_softplus(x)))


@_activation
def squareplus(x, b=4):
    """(x + sqrt(x^2 + b)) / 2."""
    return B.mul(B.add(x, B.sqrt(B.add(B.mul(x, x), float(b)))), 0.5)


@_activation
def tanh_shrink(x):
    """x - tanh(x)."""
    return B.sub(x, B.tanh(x))


@_activation
def soft_shrink(x, threshold=0.5):
    """x - threshold above threshold, x + threshold below -threshold, 0 between."""
    threshold = float(threshold)
    return B.select(B.gt(x, threshold), B.sub(x, threshold),
                    B.select(B.lt(x, -threshold), B.add(x, threshold), 0.0))


@_activation
def hard_shrink(x, threshold=0.5):
    """x where |x| > threshold, 0 elsewhere."""
    return B.select(B.gt(B.abs(x), float(threshold)), x, 0.0)


@_activation
def sparse_plus(x):
    """0 for x <= -1, x for x >= 1, (x + 1)^2 / 4 between."""
    quadratic = B.mul(B.mul(B.add(x, 1.0), B.add(x, 1.0)), 0.25)
    return B.select(B.le(x, -1.0), 0.0, B.select(B.ge(x, 1.0), x, quadratic))


@_activation
def sparse_sigmoid(x):
    """0 for x <= -1, 1 for x >= 1, (x + 1) / 2 between."""
    return B.select(B.le(x, -1.0), 0.0, B.select(B.ge(x, 1.0), 1.0, B.mul(B.add(x, 1.0), 0.5)))


@_activation
def threshold(x, threshold, default_value):  # noqa: F811 - Keras's argument name
    """x where x > threshold, default_value elsewhere."""
    return B.select(B.gt(x, float(threshold)), x, float(default_value))


@_activation
def linear(x):
    """The identity."""
    return x


_ACTIVATIONS = {fn.__name__: fn for fn in (
    relu, leaky_relu, relu6, sigmoid, tanh, softmax, log_softmax, elu, selu, celu, softplus, softsign,
    silu, gelu, hard_sigmoid, hard_silu, hard_tanh, exponential, log_sigmoid, mish, squareplus,
    tanh_shrink, soft_shrink, hard_shrink, sparse_plus, sparse_sigmoid, threshold, linear)}
# Keras's aliases, after the canonical names so `serialize` finds those first.
_ACTIVATIONS.update({"swish": silu, "hard_swish": hard_silu})


def serialize(activation):
    """A built-in activation's name, a function's name, or for a function of the user's own named
    like a built-in (`def relu`), a config that loading resolves through the custom objects
    (kcompile.registry.own_function_config)."""
    for name, fn in _ACTIVATIONS.items():
        if activation is fn:
            return name
    name = getattr(activation, "__name__", None)
    if name is None:
        raise ValueError(f"cannot serialize activation {activation!r}")
    if name in _ACTIVATIONS:
        from kcompile import registry
        return registry.own_function_config(activation, name)
    return name


def deserialize(name):
    return get(name)


def get(identifier):
    """An activation function from a name ('relu', 'gelu', ...), None (linear), a function, or the
    config `serialize` gives a function of the user's own (found among the custom objects)."""
    if identifier is None:
        return linear
    from kcompile import registry
    if registry.is_own_function_config(identifier):
        return registry.resolve_own_function(identifier, registry.custom_objects_for(None),
                                             "activation")
    if registry.is_function_config(identifier):
        # a built-in's (serialize_keras_object's, or Keras's): found by its name
        identifier = identifier.get("config")
        if identifier not in _ACTIVATIONS:
            found = registry.custom_objects_for(None).get(identifier)
            if callable(found):
                return found
    if isinstance(identifier, str):
        fn = _ACTIVATIONS.get(identifier)
        if fn is None:
            raise ValueError(f"Unknown activation function: {identifier!r}. Use one of "
                             f"{sorted(_ACTIVATIONS)}, None, or a function of an IR value.")
        return fn
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret activation function identifier: {identifier!r}; pass a "
                     f"name such as 'relu' or a function")
