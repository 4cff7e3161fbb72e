"""Layers, as ``keras.layers``."""
from kcompile import registry
from kcompile.layers.core import (ELU, Activation, Dense, Dropout, Flatten, Input, InputLayer,
                                  LeakyReLU, ReLU, Rescaling, Softmax, SymbolicTensor)
from kcompile.layers.layer import Layer, Variable
from kcompile.layers.activation import PReLU
from kcompile.layers.identity import ActivityRegularization, Identity
from kcompile.layers.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from kcompile.layers.convolutional import Conv1D, Conv2D
from kcompile.layers.depthwise import (DepthwiseConv1D, DepthwiseConv2D, SeparableConv1D,
                                       SeparableConv2D)
from kcompile.layers.convolutional_transpose import Conv1DTranspose, Conv2DTranspose
from kcompile.layers.embedding import Embedding
from kcompile.layers.lambda_layer import Lambda
from kcompile.layers.masking import Masking
from kcompile.layers.normalization import BatchNormalization, LayerNormalization
from kcompile.layers.noise import AlphaDropout, GaussianDropout, GaussianNoise
from kcompile.layers.normalization_extra import GroupNormalization, UnitNormalization
from kcompile.layers.padding import (Cropping1D, Cropping2D, UpSampling1D, UpSampling2D,
                                     ZeroPadding1D, ZeroPadding2D)
from kcompile.layers.pooling import (AveragePooling1D, AveragePooling2D, GlobalAveragePooling1D,
                                     GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalMaxPooling2D,
                                     MaxPooling1D, MaxPooling2D)
from kcompile.layers.preprocessing import Normalization
from kcompile.layers.regularization import SpatialDropout1D, SpatialDropout2D
from kcompile.layers.reshaping import Permute, RepeatVector, Reshape
from kcompile.layers.wrappers import TimeDistributed

__all__ = ["Activation", "Dense", "Dropout", "Flatten", "Input", "InputLayer", "Layer", "Variable",
           "SymbolicTensor", "serialize", "deserialize"]
__all__ += ["Bidirectional", "GRU", "LSTM", "SimpleRNN"]
__all__ += ["AveragePooling2D", "BatchNormalization", "Conv2D", "Embedding", "GlobalAveragePooling1D",
            "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "LayerNormalization",
            "MaxPooling2D", "Reshape"]
__all__ += ["AvgPool2D", "LeakyReLU", "MaxPool2D", "Rescaling"]
__all__ += ["ELU", "Normalization", "Permute", "ReLU", "RepeatVector", "Softmax", "TimeDistributed"]
__all__ += ["AveragePooling1D", "AvgPool1D", "Conv1D", "Convolution1D", "Convolution2D", "MaxPool1D",
            "MaxPooling1D"]
__all__ += ["GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalMaxPool1D", "GlobalMaxPool2D"]
__all__ += ["Cropping1D", "Cropping2D", "SpatialDropout1D", "SpatialDropout2D", "UpSampling1D",
            "UpSampling2D", "ZeroPadding1D", "ZeroPadding2D"]
__all__ += ["DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
            "SeparableConvolution1D", "SeparableConvolution2D"]
__all__ += ["ActivityRegularization", "GroupNormalization", "Identity", "PReLU", "UnitNormalization"]
__all__ += ["AlphaDropout", "GaussianDropout", "GaussianNoise"]
__all__ += ["Lambda"]
__all__ += ["Masking"]
__all__ += ["Conv1DTranspose", "Conv2DTranspose", "Convolution1DTranspose", "Convolution2DTranspose"]

# Keras's aliases
MaxPool2D, AvgPool2D = MaxPooling2D, AveragePooling2D
MaxPool1D, AvgPool1D = MaxPooling1D, AveragePooling1D
Convolution1D, Convolution2D = Conv1D, Conv2D
SeparableConvolution1D, SeparableConvolution2D = SeparableConv1D, SeparableConv2D
GlobalAvgPool1D, GlobalAvgPool2D = GlobalAveragePooling1D, GlobalAveragePooling2D
GlobalMaxPool1D, GlobalMaxPool2D = GlobalMaxPooling1D, GlobalMaxPooling2D
Convolution1DTranspose, Convolution2DTranspose = Conv1DTranspose, Conv2DTranspose

_CLASSES = {cls.__name__: cls for cls in (Activation, Dense, Dropout, Flatten, InputLayer, LeakyReLU,
                                           Rescaling)}
_CLASSES.update({cls.__name__: cls for cls in (Bidirectional, GRU, LSTM, SimpleRNN)})
_CLASSES.update({cls.__name__: cls for cls in (AveragePooling1D, AveragePooling2D, BatchNormalization,
                                                Conv1D, Conv2D, Embedding, MaxPooling1D,
                                                GlobalAveragePooling1D, GlobalAveragePooling2D,
                                                GlobalMaxPooling1D, GlobalMaxPooling2D,
                                                LayerNormalization, MaxPooling2D, Normalization,
                                                Reshape)})
_CLASSES.update({cls.__name__: cls for cls in (ELU, Permute, ReLU, RepeatVector, Softmax,
                                                TimeDistributed)})
_CLASSES.update({cls.__name__: cls for cls in (Cropping1D, Cropping2D, SpatialDropout1D,
                                                SpatialDropout2D, UpSampling1D, UpSampling2D,
                                                ZeroPadding1D, ZeroPadding2D)})
_CLASSES.update({cls.__name__: cls for cls in (DepthwiseConv1D, DepthwiseConv2D, SeparableConv1D,
                                                SeparableConv2D)})
_CLASSES.update({cls.__name__: cls for cls in (ActivityRegularization, GroupNormalization, Identity,
                                                PReLU, UnitNormalization)})
_CLASSES.update({cls.__name__: cls for cls in (AlphaDropout, GaussianDropout, GaussianNoise)})
_CLASSES.update({cls.__name__: cls for cls in (Conv1DTranspose, Conv2DTranspose)})
_CLASSES["Lambda"] = Lambda
_CLASSES["Masking"] = Masking

# The layers that pass their inputs' mask on to the next layer (Keras's supports_masking = True;
# those that make or consume one, Embedding, Masking, the RNNs and GlobalAveragePooling1D, say so
# by their compute_mask); any other layer drops the mask, with Keras's warning.
for _cls in (Activation, Dense, Dropout, LeakyReLU, ReLU, ELU, Softmax, PReLU, Rescaling, Identity,
             ActivityRegularization, GaussianDropout, GaussianNoise, BatchNormalization,
             LayerNormalization, GroupNormalization, UnitNormalization, Normalization,
             TimeDistributed):
    _cls._supports_masking = True
del _cls


def serialize(layer: Layer) -> dict:
    config = {"class_name": type(layer).__name__, "config": layer.get_config()}
    registered = registry.registered_name_of(type(layer))
    if registered is not None:
        config["registered_name"] = registered     # 'package>name', as Keras saves it
    return config


def deserialize(config: dict, custom_objects=None) -> Layer:
    classes = dict(_CLASSES)
    classes.update(registry.custom_objects_for(custom_objects))
    cls = classes.get(config.get("registered_name")) or classes.get(config.get("class_name"))
    if cls is None:
        raise ValueError(f"Unknown layer class {config.get('class_name')!r}; known: {sorted(classes)}. "
                         "Pass custom layer classes in custom_objects=.")
    # as Keras 3: from_config runs where the custom objects are known, so that what a config names
    # inside (a Lambda's function, a wrapped layer) is found too
    with registry.custom_object_scope(dict(custom_objects or {})):
        return cls.from_config(dict(config.get("config", {})))


# Keras layers kcompile does not have (yet): asking for one says so, instead of a bare AttributeError.
_KERAS_ONLY = frozenset("""
    RNN SimpleRNNCell LSTMCell GRUCell StackedRNNCells ConvLSTM1D
    ConvLSTM2D ConvLSTM3D Concatenate Add Subtract Multiply Average Maximum Minimum Dot
    MultiHeadAttention GroupedQueryAttention Attention AdditiveAttention
    Conv3D Conv3DTranspose MaxPooling3D AveragePooling3D GlobalAveragePooling3D GlobalMaxPooling3D
    UpSampling3D ZeroPadding3D Cropping3D SpatialDropout3D ThresholdedReLU SpectralNormalization
    RandomFlip RandomRotation RandomZoom RandomCrop
    RandomTranslation RandomContrast RandomBrightness Resizing CenterCrop TextVectorization
    StringLookup IntegerLookup CategoryEncoding Discretization Hashing HashedCrossing
""".split())


def __getattr__(name):
    if name in _KERAS_ONLY:
        raise AttributeError(f"kcompile.layers has no {name!r}: Keras's {name} is not implemented in "
                             "kcompile yet (README.md lists the layers there are)")
    raise AttributeError(f"module 'kcompile.layers' has no attribute {name!r}")
