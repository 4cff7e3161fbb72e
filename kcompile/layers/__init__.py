"""Layers, as ``keras.layers``."""
from kcompile.layers.core import (Activation, Dense, Dropout, Flatten, Input, InputLayer, LeakyReLU,
                                  Rescaling, SymbolicTensor)
from kcompile.layers.layer import Layer, Variable
from kcompile.layers.recurrent import GRU, LSTM, SimpleRNN
from kcompile.layers.convolutional import Conv2D
from kcompile.layers.embedding import Embedding
from kcompile.layers.normalization import BatchNormalization, LayerNormalization
from kcompile.layers.pooling import (AveragePooling2D, GlobalAveragePooling1D, GlobalAveragePooling2D,
                                     GlobalMaxPooling1D, GlobalMaxPooling2D, MaxPooling2D)
from kcompile.layers.reshaping import Reshape

__all__ = ["Activation", "Dense", "Dropout", "Flatten", "Input", "InputLayer", "Layer", "Variable",
           "SymbolicTensor", "serialize", "deserialize"]
__all__ += ["GRU", "LSTM", "SimpleRNN"]
__all__ += ["AveragePooling2D", "BatchNormalization", "Conv2D", "Embedding", "GlobalAveragePooling1D",
            "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "LayerNormalization",
            "MaxPooling2D", "Reshape"]
__all__ += ["AvgPool2D", "LeakyReLU", "MaxPool2D", "Rescaling"]

# Keras's aliases
MaxPool2D, AvgPool2D = MaxPooling2D, AveragePooling2D

_CLASSES = {cls.__name__: cls for cls in (Activation, Dense, Dropout, Flatten, InputLayer, LeakyReLU,
                                           Rescaling)}
_CLASSES.update({cls.__name__: cls for cls in (GRU, LSTM, SimpleRNN)})
_CLASSES.update({cls.__name__: cls for cls in (AveragePooling2D, BatchNormalization, Conv2D, Embedding,
                                                GlobalAveragePooling1D, GlobalAveragePooling2D,
                                                GlobalMaxPooling1D, GlobalMaxPooling2D,
                                                LayerNormalization, MaxPooling2D, Reshape)})


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
