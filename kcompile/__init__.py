"""kcompile: a Keras-style deep-learning library whose models are traced into a graph IR and
compiled to native code through LLVM.

    import kcompile
    model = kcompile.Sequential([kcompile.Input(shape=(28, 28)), kcompile.layers.Flatten(),
                                 kcompile.layers.Dense(10, activation='softmax')])
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    model.fit(x, y, epochs=2)
"""
from kcompile import activations, initializers, layers, losses, metrics, optimizers
from kcompile import callbacks, datasets, models, utils
from kcompile.layers import Input
from kcompile.models import Model, Sequential

__version__ = "0.1.0"

__all__ = ["Input", "Model", "Sequential", "activations", "callbacks", "datasets", "initializers",
           "layers", "losses", "metrics", "models", "optimizers", "utils", "__version__"]
