"""Activation functions, as ``keras.activations``.

Each function takes an IR value while a model is traced and returns one; the compiler sees only the
primitives they decompose into.  Called on a numpy array (or anything array-like) a function is traced
on the spot and run by the reference interpreter, so `relu(np.array([-1., 2.]))` works as in Keras.
"""
from __future__ import annotations

from ir import Node
from ir import build as B


def _eager(fn, *arrays, **kwargs):
    from kcompile.layers.layer import call_eagerly
    return call_eagerly(lambda *nodes: fn(*nodes, **kwargs), *arrays)


def relu(x):
    """max(x, 0), with gradient 0 at 0."""
    if not isinstance(x, Node):
        return _eager(relu, x)
    return B.relu(x)


def sigmoid(x):
    """1 / (1 + exp(-x)), written so neither the value nor its gradient overflows."""
    if not isinstance(x, Node):
        return _eager(sigmoid, x)
    # NOTE: the textbook 1/(1+exp(-x)) has exp(-x) = inf for x < -88, and its gradient multiplies that inf
    # by 0 (NaN).  exp(-|x|) never overflows, and each branch of the select is finite everywhere.
    e = B.exp(B.neg(B.abs(x)))
    denominator = B.add(1.0, e)
    return B.select(B.ge(x, 0.0), B.div(1.0, denominator), B.div(e, denominator))


def tanh(x):
    if not isinstance(x, Node):
        return _eager(tanh, x)
    return B.tanh(x)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) over `axis`, with the maximum subtracted first."""
    if not isinstance(x, Node):
        return _eager(softmax, x, axis=axis)
    if x.type.rank < 1:
        raise ValueError(f"softmax needs an input with at least one axis; got shape {x.shape}")
    return B.softmax(x, axis)


def linear(x):
    """The identity."""
    if not isinstance(x, Node):
        return _eager(linear, x)
    return x


_ACTIVATIONS = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softmax": softmax, "linear": linear}


def serialize(activation) -> str:
    for name, fn in _ACTIVATIONS.items():
        if activation is fn:
            return name
    name = getattr(activation, "__name__", None)
    if name is None:
        raise ValueError(f"cannot serialize activation {activation!r}")
    return name


def deserialize(name: str):
    return get(name)


def get(identifier):
    """An activation function from a name ('relu', ...), None (linear) or a function."""
    if identifier is None:
        return linear
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
