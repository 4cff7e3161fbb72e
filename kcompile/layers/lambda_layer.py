"""The Lambda layer, as `keras.layers.Lambda`: a function of the user's as a layer.

    Lambda(lambda x: x / 255.0)
    Lambda(lambda x: ops.sum(x, axis=-1, keepdims=True))
    Lambda(scale, arguments={"factor": 3.0})

The function is called once, while the model is traced, on the traced value standing for the
layer's input (an `ir` node), and what it builds is compiled with the rest of the model: Python's
operators (+ - * / ** @, comparisons, `x[:, 0]`) and the functions of `kcompile.ops` and
`kcompile.activations` work on it, and gradients flow through them as through any layer's ops.
numpy, math or another framework's functions cannot see a value that has no numbers yet: a
failure while tracing is re-raised naming the layer and saying so.

Configs follow Keras 3's: a named function by name ({"module": "builtins", "class_name":
"function", "config": its (registered) name, ...}, found again among the custom objects when
loading), a Python lambda as its marshalled bytecode, base64 ({"class_name": "__lambda__",
"config": {"code", "defaults", "closure"}}).  Loading bytecode runs code from the file, so it is
refused unless loading is told the file is trusted (`safe_mode=False`, or
`kcompile.config.enable_unsafe_deserialization()`), with Keras's error.
"""
from __future__ import annotations

import binascii
import builtins
import codecs
import inspect
import marshal
import numbers
import types

from ir.graph import Node
from ir.ops import as_traced

from kcompile import registry
from kcompile.layers.layer import Layer, format_shape

_LAMBDA = "__lambda__"


class Lambda(Layer):
    """Wraps a function of the input as a layer.

    Args:
        function: called as `function(inputs, **arguments)` (and with `mask=None` and `training=`
            when its signature names them) on the traced input; returns the traced output.
        output_shape: the output shape without the batch axis (a tuple), or a function of the
            input shape giving the whole output shape; None (default): inferred by tracing.  Given,
            it is checked against what the function computes.
        mask: must be None: a Lambda computes no mask of its own (the inputs' mask is passed
            to a function that takes `mask`, and dropped after the layer, as Keras does then).
        arguments: a dict of keyword arguments for `function`.
    """

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function) or isinstance(function, Layer):
            hint = (" (to use a layer, put it in the model itself)" if isinstance(function, Layer)
                    else "")
            raise TypeError(f"Lambda: `function` must be a function (a lambda or a def) taking the "
                            f"layer's input; got {function!r}{hint}")
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError(f"Lambda: `arguments` must be a dict of keyword arguments for the "
                            f"function, e.g. arguments={{'factor': 3}}; got {arguments!r}")
        if mask is not None:
            raise NotImplementedError("Lambda: `mask` (a mask computed by the Lambda) is not "
                                      "supported yet; leave mask=None (a function that takes "
                                      "`mask` still gets the inputs' mask)")
        if output_shape is not None and not callable(output_shape):
            output_shape = _checked_shape(output_shape)
        self.function = function
        self.arguments = dict(arguments or {})
        self.mask = None
        self.supports_masking = False
        # NOTE: not `_output_shape`, which Layer keeps for the output_shape property
        self._given_output_shape = output_shape
        # as Keras: the function's positional-or-keyword parameters decide
        try:
            parameters = inspect.getfullargspec(function).args
        except TypeError:                    # a builtin without a signature: inputs only
            parameters = []
        self._fn_expects_training_arg = "training" in parameters
        self._fn_expects_mask_arg = "mask" in parameters

    # The function is the user's code: a layer with weights called in it is refused (its weights
    # would be none of the model's), as in a custom layer's call.
    def _is_users(self) -> bool:
        return True

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        traced = super().compute_output_shape(input_shape)      # (traced once per input shape)
        given = self._given_shape(input_shape)
        if given is not None and (len(given) != len(traced) or any(
                g is not None and g != t for g, t in zip(given, traced))):
            raise ValueError(
                f"Lambda layer {self.name!r}: output_shape={self._given_output_shape!r} says the "
                f"output has shape {format_shape(given)} for input shape "
                f"{format_shape(input_shape)}, but the function computes shape "
                f"{format_shape(traced)}; correct output_shape, or leave it out (it is inferred)")
        return traced

    def _given_shape(self, input_shape):
        shape = self._given_output_shape
        if shape is None:
            return None
        if callable(shape):
            result = shape(input_shape)
            try:
                return _checked_shape(result, full=True)
            except TypeError:
                raise TypeError(f"Lambda layer {self.name!r}: the output_shape function returned "
                                f"{result!r} for input shape {format_shape(input_shape)}; it must "
                                "return the whole output shape, batch axis first (e.g. "
                                "(None, 4))") from None
        return (input_shape[0] if input_shape else None,) + shape

    def call(self, inputs, mask=None, training=None):
        kwargs = dict(self.arguments)
        if self._fn_expects_mask_arg:
            kwargs["mask"] = mask
        if self._fn_expects_training_arg:
            kwargs["training"] = training
        try:
            output = self.function(inputs, **kwargs)
        except Exception as error:
            raise _traced_failure(self, inputs, error) from error
        if not isinstance(as_traced(output), Node):
            raise TypeError(
                f"Lambda layer {self.name!r}: its function {_describe(self.function)} returned "
                f"{type(output).__name__}, not a value computed from its input; it must return the "
                "result of operators and kcompile.ops functions on the input (numpy results and "
                "constants cannot be outputs; several outputs are not supported)")
        return output

    def get_config(self):
        config = {"function": _serialize_function(self.function)}
        if self._given_output_shape is not None:
            shape = self._given_output_shape
            config["output_shape"] = _serialize_function(shape) if callable(shape) else shape
        from kcompile.saving import serialize_keras_object
        config["arguments"] = serialize_keras_object(self.arguments)
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config, custom_objects=None, safe_mode=None):
        """The layer of a config.  A Python lambda in it (bytecode) is loaded only when safe mode
        is off: `safe_mode=False` here, or an open SafeModeScope(False) (load_model(...,
        safe_mode=False) opens one), or enable_unsafe_deserialization(); unset is safe."""
        from kcompile.saving import deserialize_keras_object
        config = dict(config)
        if safe_mode is None:
            safe_mode = registry.in_safe_mode()
        safe_mode = safe_mode is not False
        config["function"] = _deserialize_function(config.get("function"), "function",
                                                   custom_objects, safe_mode)
        if config.get("output_shape") is not None:
            shape = config["output_shape"]
            if isinstance(shape, dict):
                config["output_shape"] = _deserialize_function(shape, "output_shape",
                                                               custom_objects, safe_mode)
            elif isinstance(shape, list):
                config["output_shape"] = tuple(shape)
        if "arguments" in config:
            config["arguments"] = deserialize_keras_object(config["arguments"], custom_objects)
        return cls(**config)


def _checked_shape(shape, full=False) -> tuple:
    """A shape given as a tuple or list of sizes (int >= 0, or None), as a tuple."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool) and not full:
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or any(
            d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0)
            for d in shape):
        raise TypeError(f"Lambda: `output_shape` must be a tuple of sizes without the batch axis "
                        f"(e.g. (4,)), or a function of the input shape; got {shape!r}")
    return tuple(None if d is None else int(d) for d in shape)


def _describe(function) -> str:
    name = getattr(function, "__name__", None)
    return "(a lambda)" if name == "<lambda>" else repr(name or function)


def _traced_failure(layer, inputs, error: Exception) -> Exception:
    """`error`, raised by a Lambda's function on its traced input, as an error of the same type
    naming the layer and saying what a traced function may use."""
    message = (f"Lambda layer {layer.name!r}: its function {_describe(layer.function)} failed on "
               f"the layer's symbolic input (shape {format_shape(inputs.shape)}): "
               f"{type(error).__name__}: {error}. A Lambda's function is traced once into the "
               "compiled model: it must compute with Python operators (+ - * / ** @, x[...]) and "
               "kcompile.ops / kcompile.activations functions, not numpy, math or another "
               "framework's functions, and cannot branch on values (use kcompile.ops.where); pass "
               "other values in arguments=, or write a Layer subclass")
    try:
        wrapped = type(error)(message)
    except Exception:    # an exception type that takes other arguments
        wrapped = TypeError(message)
    return wrapped


# -- (de)serializing functions, as Keras 3's Lambda and python_utils.func_dump/func_load ----------

def _serialize_function(function):
    if isinstance(function, types.LambdaType) and function.__name__ == "<lambda>":
        code = codecs.encode(marshal.dumps(function.__code__), "base64").decode("ascii")
        closure = (tuple(cell.cell_contents for cell in function.__closure__)
                   if function.__closure__ else None)
        return {"class_name": _LAMBDA,
                "config": {"code": code, "defaults": function.__defaults__, "closure": closure}}
    name = registry.registered_name_of(function) or getattr(function, "__name__", None)
    if not isinstance(name, str):
        raise ValueError(f"Cannot serialize the Lambda function {function!r}: it has no name; "
                         "define it with `def` (or as a lambda)")
    # Keras 3's form for a function: found again by (registered) name among the custom objects
    return {"module": "builtins", "class_name": "function", "config": name,
            "registered_name": "function"}


def _deserialize_function(config, what: str, custom_objects, safe_mode: bool):
    if isinstance(config, dict) and config.get("class_name") == _LAMBDA:
        if safe_mode:
            raise ValueError(
                "Requested the deserialization of a `Lambda` layer whose "
                f"`{what}` is a Python lambda. This carries a potential risk of arbitrary code "
                "execution and thus it is disallowed by default. If you trust the source of the "
                "artifact, you can override this error by passing `safe_mode=False` to the "
                "loading function, or calling `kcompile.config.enable_unsafe_deserialization()`.")
        inner = config.get("config") or {}
        return _load_lambda(inner.get("code"), inner.get("defaults"), inner.get("closure"))
    from kcompile.saving import deserialize_keras_object
    function = deserialize_keras_object(config, custom_objects)
    if not callable(function):
        raise TypeError(f"Could not locate the Lambda {what} {config!r}: pass it in "
                        "custom_objects={name: function} or register it with "
                        "@kcompile.saving.register_keras_serializable()")
    return function


def _load_lambda(code, defaults, closure):
    """The function Keras's func_dump wrote.  Its globals: builtins, kcompile and kcompile's ops
    and activations (the names a traced lambda may use; the saving module's others are gone)."""
    import kcompile
    from kcompile import activations, ops
    if not isinstance(code, str):
        raise ValueError(f"a Lambda's saved lambda has no bytecode (its 'code' is {code!r})")
    try:
        raw = codecs.decode(code.encode("ascii"), "base64")
    except (UnicodeEncodeError, binascii.Error):
        raw = code.encode("raw_unicode_escape")
    try:
        loaded = marshal.loads(raw)
    except (ValueError, EOFError, TypeError) as error:
        raise ValueError(f"a Lambda's saved lambda cannot be loaded ({error}): Python bytecode "
                         "loads only in the Python version that saved it; rebuild the layer with "
                         "its function (or save it as a named function)") from None
    if not isinstance(loaded, types.CodeType):
        raise ValueError("a Lambda's saved lambda is not Python bytecode")
    cells = None
    if closure is not None:
        cells = tuple(types.CellType(value) for value in closure)
    namespace = {"__builtins__": builtins, "kcompile": kcompile, "ops": ops,
                 "activations": activations}
    return types.FunctionType(loaded, namespace, name=loaded.co_name,
                              argdefs=tuple(defaults) if defaults is not None else None,
                              closure=cells)
