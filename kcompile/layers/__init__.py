"""Layers, as ``keras.layers``."""
from kcompile.layers.core import Activation, Dense, Dropout, Flatten, Input, InputLayer, SymbolicTensor
from kcompile.layers.layer import Layer, Variable

__all__ = ["Activation", "Dense", "Dropout", "Flatten", "Input", "InputLayer", "Layer", "Variable",
           "SymbolicTensor", "serialize", "deserialize"]

_CLASSES = {cls.__name__: cls for cls in (Activation, Dense, Dropout, Flatten, InputLayer)}


def serialize(layer: Layer) -> dict:
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(config: dict, custom_objects=None) -> Layer:
    classes = dict(_CLASSES)
    classes.update(custom_objects or {})
    cls = classes.get(config.get("class_name"))
    if cls is None:
        raise ValueError(f"Unknown layer class {config.get('class_name')!r}; known: {sorted(classes)}. "
                         "Pass custom layer classes in custom_objects=.")
    return cls.from_config(dict(config.get("config", {})))
