"""Custom objects known by name when a model is loaded, as Keras's ``keras.saving`` registry.

    @kcompile.saving.register_keras_serializable(package="my_package")
    class Scale(kcompile.layers.Layer): ...

    kcompile.load_model("m.keras")          # finds Scale without custom_objects=

A saved config names a custom layer, activation, loss, metric, schedule or model class by its Python
name (a registered layer also by its 'package>name'); `custom_objects_for(given)` gives what loading
looks such names up in: every registered object (under its registered name 'package>name', its name
and its Python name, unless that is a built-in layer's), then the objects of the open
`custom_object_scope`s (innermost last), then the `custom_objects=` of the call, each overriding the
ones before.  `get_custom_objects()` is the global dict itself, which a user may also fill directly.
"""
from __future__ import annotations

import inspect
import threading

__all__ = ["CustomObjectScope", "custom_object_scope", "custom_objects_for", "get_custom_objects",
           "own_function_config", "resolve_own_function",
           "get_registered_name", "get_registered_object", "register_keras_serializable",
           "SafeModeScope", "enable_unsafe_deserialization", "in_safe_mode"]

_GLOBAL_CUSTOM_OBJECTS: dict = {}   # registered name -> object (and whatever users put in it)
_REGISTERED_NAMES: dict = {}        # object -> registered name
_SCOPES: list = []                  # the dicts of the open custom_object_scopes


def register_keras_serializable(package="Custom", name=None):
    """A decorator registering a class or function under 'package>name' (name: its own by default),
    so that loading a model that uses it needs no `custom_objects=`."""
    if not isinstance(package, str) or ">" in package:
        raise ValueError(f"register_keras_serializable: `package` must be a string without '>'; got "
                         f"package={package!r}")

    def decorator(obj):
        if not callable(obj):
            raise TypeError(f"register_keras_serializable registers classes and functions; got {obj!r}")
        own = name if name is not None else getattr(obj, "__name__", None)
        if not isinstance(own, str) or not own:
            raise ValueError(f"register_keras_serializable: {obj!r} has no __name__; pass name=")
        if inspect.isclass(obj) and not hasattr(obj, "get_config"):
            raise ValueError(f"Cannot register a class that does not have a get_config() method: "
                             f"{obj.__name__}")
        registered = f"{package}>{own}"
        _GLOBAL_CUSTOM_OBJECTS[registered] = obj
        _REGISTERED_NAMES[obj] = registered
        return obj

    return decorator


def get_custom_objects() -> dict:
    """The global {name: object} dict loading consults (registered objects; users may add to it)."""
    return _GLOBAL_CUSTOM_OBJECTS


def registered_name_of(obj) -> str | None:
    """'package>name' of a registered object, None for one that is not registered."""
    return _REGISTERED_NAMES.get(obj)


def get_registered_name(obj) -> str:
    """'package>name' for a registered object, else its Python name."""
    return _REGISTERED_NAMES.get(obj, getattr(obj, "__name__", None))


def get_registered_object(name, custom_objects=None, module_objects=None):
    """The object registered or in scope under `name` (None if none), as Keras's function."""
    found = custom_objects_for(custom_objects)
    if name in found:
        return found[name]
    return (module_objects or {}).get(name)


class CustomObjectScope:
    """`with custom_object_scope({"Scale": Scale}):` makes the objects known to loading in the block."""

    def __init__(self, *objects):
        self.objects = {}
        for mapping in objects:
            if not isinstance(mapping, dict):
                raise TypeError(f"custom_object_scope takes dicts of {{name: object}}; got {mapping!r}")
            self.objects.update(mapping)

    def __enter__(self):
        _SCOPES.append(self.objects)
        return self

    def __exit__(self, *exc):
        _SCOPES.remove(self.objects)
        return False


custom_object_scope = CustomObjectScope


def custom_objects_for(given=None) -> dict:
    """What loading looks names up in: the registry, the open scopes, then `given` (see the module)."""
    from kcompile import layers      # (at call time: layers imports this module)
    builtin = set(layers._CLASSES)
    found = {}
    for key, obj in _GLOBAL_CUSTOM_OBJECTS.items():
        short = key.rpartition(">")[2]
        for alias in (getattr(obj, "__name__", None), short):
            # a config naming a built-in layer means the built-in: a registered class of that name
            # is found by the 'package>name' saved with it
            if alias and alias not in builtin:
                found.setdefault(alias, obj)
    for key, obj in _GLOBAL_CUSTOM_OBJECTS.items():
        found[key] = obj
    for scope in _SCOPES:
        found.update(scope)
    found.update(given or {})
    return found


def own_function_config(function, name: str) -> dict:
    """How a config names a function of the user's own whose name is also a built-in's (a `def mse`
    given as the loss, a `def relu` as an activation): as Keras 3 names a function, so that loading
    looks for it among the custom objects (resolve_own_function) instead of taking the built-in."""
    return {"class_name": "function", "config": name,
            "module": getattr(function, "__module__", None) or "__main__"}


def is_function_config(value) -> bool:
    """A config naming a function ({'class_name': 'function', 'config': name, ...}), as
    own_function_config and serialize_keras_object write, and Keras 3 does."""
    return isinstance(value, dict) and value.get("class_name") == "function"


def is_own_function_config(value) -> bool:
    """A function config of the user's own function (own_function_config: its module is the
    user's), not a built-in one ('builtins', kcompile's or Keras's modules)."""
    if not is_function_config(value):
        return False
    module = value.get("module") or "builtins"
    return module != "builtins" and module.partition(".")[0] not in ("kcompile", "keras")


def resolve_own_function(config: dict, custom_objects: dict, kind: str):
    """The function an own_function_config names, from `custom_objects` (see custom_objects_for);
    a ValueError when none is given for its name (the built-in of that name is not it)."""
    name = config.get("config")
    function = custom_objects.get(name) if isinstance(name, str) else None
    if function is None or not callable(function):
        raise ValueError(
            f"the {kind} {name!r} was a function of your own (module {config.get('module')!r}), not "
            f"kcompile's {kind} of that name, and no function is given for it: pass "
            f"custom_objects={{{name!r}: your_function}} (or register it with "
            "kcompile.saving.register_keras_serializable)")
    return function


def serialize_builtin(obj, base: type, functions: dict, kind: str):
    """`{"class_name", "config"}` of an instance of `base` (a Loss, a Metric), or the name of one
    of the built-in `functions` ({name: function}); a ValueError naming `kind` otherwise."""
    if isinstance(obj, base):
        return {"class_name": type(obj).__name__, "config": obj.get_config()}
    for name, fn in functions.items():
        if fn is obj:
            return name
    raise ValueError(f"cannot serialize {kind} {obj!r}: not a kcompile {base.__name__} or a "
                     f"built-in {kind} function")


# -- safe mode: whether loading may run code a file holds (a Lambda layer's Python lambda) --------

_UNSAFE_ENABLED = False             # enable_unsafe_deserialization() was called
_SAFE_MODE = threading.local()      # .stack: the safe_mode of the open SafeModeScopes, innermost last


def enable_unsafe_deserialization() -> None:
    """Let loading run the Python lambdas saved in a file (a Lambda layer's bytecode) everywhere,
    as `keras.config.enable_unsafe_deserialization()`: only for files from a source you trust."""
    global _UNSAFE_ENABLED
    _UNSAFE_ENABLED = True


def in_safe_mode():
    """The safe mode loading runs under: that of the innermost open SafeModeScope, else False after
    enable_unsafe_deserialization(), else None (not set: safe, Lambda.from_config assumes)."""
    stack = getattr(_SAFE_MODE, "stack", None)
    if stack:
        return stack[-1]
    return False if _UNSAFE_ENABLED else None


class SafeModeScope:
    """`with SafeModeScope(safe_mode):` the deserialization in the block runs in that safe mode (in
    this thread), as Keras 3's; load_model, model_from_json and deserialize_keras_object open one."""

    def __init__(self, safe_mode=True):
        self.safe_mode = safe_mode

    def __enter__(self):
        stack = getattr(_SAFE_MODE, "stack", None)
        if stack is None:
            stack = _SAFE_MODE.stack = []
        stack.append(self.safe_mode)
        return self

    def __exit__(self, *exc):
        _SAFE_MODE.stack.pop()
        return False


def effective_safe_mode(safe_mode) -> bool:
    """What a loading function's `safe_mode` argument means, as in Keras 3: an open SafeModeScope or
    enable_unsafe_deserialization() decides over the argument."""
    ambient = in_safe_mode()
    return bool(safe_mode if ambient is None else ambient)
