"""Weight initializers, as ``keras.initializers``.

An initializer is called with a shape and returns a float32 numpy array.  Without a `seed` it draws
from kcompile's global generator (`kcompile.utils.random.get_generator()`), so `set_random_seed(0)`
makes the initial weights of a whole model reproducible; with a `seed` it draws from its own generator,
the same values at every call, as Keras's seeded initializers do.
"""
from __future__ import annotations

import math
import re

import numpy as np

from kcompile.schedules import FLOAT32_MAX
from kcompile.utils.random import get_generator


def _to_snake_case(name: str) -> str:
    """'GlorotUniform' -> 'glorot_uniform', as Keras names things."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def compute_fans(shape) -> tuple[float, float]:
    """(fan_in, fan_out) of a weight shape, as Keras computes them."""
    shape = tuple(shape)
    if len(shape) < 1:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    # Convolution kernels (..., in, out): the receptive field multiplies both fans.
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


class Initializer:
    """Base class: `initializer(shape, dtype='float32') -> np.ndarray`."""

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"{type(self).__name__} seed must be an integer or None; got {seed!r}")
        self.seed = None if seed is None else int(seed)

    def _generator(self) -> np.random.Generator:
        return get_generator() if self.seed is None else np.random.default_rng(self.seed)

    def __call__(self, shape, dtype=None) -> np.ndarray:
        if dtype is not None and np.dtype(dtype) != np.float32:
            raise ValueError(f"kcompile weights are float32; got dtype={dtype!r}")
        shape = tuple(int(d) for d in shape)
        return np.array(self.generate(shape), dtype=np.float32, order="C")  # (0-d stays 0-d)

    def generate(self, shape) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def clone(self) -> "Initializer":
        """A new initializer with the same configuration, as Keras's."""
        return type(self).from_config(self.get_config())

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    def __init__(self):
        super().__init__(None)

    def generate(self, shape):
        return np.zeros(shape, np.float32)

    def get_config(self):
        return {}


class Ones(Initializer):
    def __init__(self):
        super().__init__(None)

    def generate(self, shape):
        return np.ones(shape, np.float32)

    def get_config(self):
        return {}


class Constant(Initializer):
    """A number everywhere, or an array broadcast to the weight's shape (as Keras's)."""

    def __init__(self, value=0.0):
        super().__init__(None)
        array = np.asarray(value, dtype=np.float64)
        if not np.all(np.abs(array) <= FLOAT32_MAX):
            raise ValueError(f"Constant: value must be finite numbers within float32's range; "
                             f"got {value!r}")
        self.value = float(array) if array.ndim == 0 else array.astype(np.float32)

    def generate(self, shape):
        value = np.asarray(self.value, np.float32)
        try:
            return np.broadcast_to(value, shape).copy()
        except ValueError:
            raise ValueError(f"Constant: a value of shape {value.shape} does not broadcast to the "
                             f"weight's shape {tuple(shape)}") from None

    def get_config(self):
        return {"value": self.value if isinstance(self.value, float) else self.value.tolist()}


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)

    def generate(self, shape):
        return self._generator().uniform(self.minval, self.maxval, size=shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def generate(self, shape):
        return self._generator().normal(self.mean, self.stddev, size=shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


def _truncated_unit_normal(rng, shape) -> np.ndarray:
    """Unit normal values, each redrawn until it lies within two of zero."""
    values = rng.normal(0.0, 1.0, size=shape)
    bad = np.abs(values) > 2.0
    while bad.any():
        values[bad] = rng.normal(0.0, 1.0, size=int(bad.sum()))
        bad = np.abs(values) > 2.0
    return values


class VarianceScaling(Initializer):
    """Keras's VarianceScaling: scale / fan, uniform on [-sqrt(3 var), sqrt(3 var)] or a truncated normal."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None,
                 input_axes=None, output_axes=None):
        super().__init__(seed)
        if input_axes is not None or output_axes is not None:
            # (Keras 3.15's: the axes its fans are computed over; its configs hold them as None)
            raise NotImplementedError(f"{type(self).__name__}(input_axes=..., output_axes=...) is "
                                      "not supported: the fans are those of the kernel's shape")
        if scale <= 0:
            raise ValueError(f"VarianceScaling scale must be positive; got scale={scale}")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"VarianceScaling mode must be 'fan_in', 'fan_out' or 'fan_avg'; got {mode!r}")
        if distribution not in ("uniform", "truncated_normal", "untruncated_normal", "normal"):
            raise ValueError("VarianceScaling distribution must be 'uniform', 'truncated_normal' or "
                             f"'untruncated_normal'; got {distribution!r}")
        self.scale, self.mode = float(scale), mode
        self.distribution = "truncated_normal" if distribution == "normal" else distribution

    def generate(self, shape):
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        variance = self.scale / max(1.0, fan)
        rng = self._generator()
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, size=shape)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(variance), size=shape)
        # Truncated at two standard deviations; 0.8796... is the stddev of a unit normal so truncated.
        return _truncated_unit_normal(rng, shape) * (math.sqrt(variance) / 0.87962566103423978)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                "seed": self.seed}


class _Preset(VarianceScaling):
    """A VarianceScaling with fixed arguments (the class attributes); only the seed is given."""
    _arguments = (1.0, "fan_in", "uniform")

    def __init__(self, seed=None, input_axes=None, output_axes=None):
        super().__init__(*self._arguments, seed, input_axes, output_axes)

    def get_config(self):
        return {"seed": self.seed}


class GlorotUniform(_Preset):
    _arguments = (1.0, "fan_avg", "uniform")


class GlorotNormal(_Preset):
    _arguments = (1.0, "fan_avg", "truncated_normal")


class HeUniform(_Preset):
    _arguments = (2.0, "fan_in", "uniform")


class HeNormal(_Preset):
    _arguments = (2.0, "fan_in", "truncated_normal")


class LecunUniform(_Preset):
    _arguments = (1.0, "fan_in", "uniform")


class LecunNormal(_Preset):
    _arguments = (1.0, "fan_in", "truncated_normal")


class TruncatedNormal(Initializer):
    """Normal values redrawn until within two standard deviations of the mean, as Keras's."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def generate(self, shape):
        return self.mean + self.stddev * _truncated_unit_normal(self._generator(), shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times `gain`, from the QR decomposition of a normal matrix, as
    `keras.initializers.Orthogonal` (the default `recurrent_initializer` of recurrent layers)."""

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = float(gain)

    def generate(self, shape):
        if len(shape) < 2:
            raise ValueError(f"the orthogonal initializer needs a shape of rank >= 2; got {shape}")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = self._generator().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))        # a uniform distribution over orthogonal matrices
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


class Identity(Initializer):
    """`gain` times the identity matrix (2-D shapes), as Keras's."""

    def __init__(self, gain=1.0):
        super().__init__(None)
        self.gain = float(gain)

    def generate(self, shape):
        if len(shape) != 2:
            raise ValueError(f"the identity initializer needs a 2-D shape; got {shape}")
        return self.gain * np.eye(*shape)

    def get_config(self):
        return {"gain": self.gain}


_CLASSES = [Zeros, Ones, Constant, RandomUniform, RandomNormal, VarianceScaling, GlorotUniform,
            GlorotNormal, HeUniform, HeNormal, LecunUniform, LecunNormal, TruncatedNormal,
            Orthogonal, Identity]
_BY_NAME = {}
for _cls in _CLASSES:
    _BY_NAME[_cls.__name__] = _cls
    _BY_NAME[_to_snake_case(_cls.__name__)] = _cls

# Keras's other names
_BY_NAME.update({"uniform": RandomUniform, "normal": RandomNormal, "IdentityInitializer": Identity,
                 "OrthogonalInitializer": Orthogonal})

# Lower-case function-style aliases, as `keras.initializers.glorot_uniform`.
zeros, ones, constant = Zeros, Ones, Constant
random_uniform, random_normal, variance_scaling = RandomUniform, RandomNormal, VarianceScaling
glorot_uniform, glorot_normal, he_uniform, he_normal = GlorotUniform, GlorotNormal, HeUniform, HeNormal
lecun_uniform, lecun_normal, truncated_normal = LecunUniform, LecunNormal, TruncatedNormal
orthogonal, identity = Orthogonal, Identity


def serialize(initializer: Initializer) -> dict:
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


def deserialize(config: dict) -> Initializer:
    cls = _BY_NAME.get(config.get("class_name"))
    if cls is None:
        raise ValueError(f"Unknown initializer class {config.get('class_name')!r}; known: "
                         f"{sorted(c.__name__ for c in _CLASSES)}")
    return cls.from_config(config.get("config", {}))


def get(identifier) -> Initializer:
    """An initializer from a name ('glorot_uniform', 'zeros', ...), a config dict, a class or an
    instance; None is glorot_uniform, what Keras's layers draw a weight with when given None."""
    if identifier is None:
        return GlorotUniform()
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier)
        if cls is None:
            known = sorted(_to_snake_case(c.__name__) for c in _CLASSES)
            raise ValueError(f"Unknown initializer: {identifier!r}. Use one of {known} or an "
                             "instance of a kcompile.initializers class.")
        return cls()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if callable(identifier):
        return _FunctionInitializer(identifier)
    raise ValueError(f"Could not interpret initializer identifier: {identifier!r}")


class _FunctionInitializer(Initializer):
    """Wraps a user function `fn(shape, dtype=None) -> array`."""

    def __init__(self, fn):
        super().__init__(None)
        self.fn = fn

    def generate(self, shape):
        value = np.asarray(self.fn(shape, dtype="float32"))
        if value.shape != tuple(shape):
            raise ValueError(f"initializer {self.fn!r} returned shape {value.shape}, expected {shape}")
        return value

    def get_config(self):
        raise NotImplementedError("a function initializer cannot be serialized; use an Initializer class")
