"""kcompile: a Keras-style deep-learning library whose models are traced into a graph IR and
compiled to native code through LLVM.

    import kcompile
    model = kcompile.Sequential([kcompile.Input(shape=(28, 28)), kcompile.layers.Flatten(),
                                 kcompile.layers.Dense(10, activation='softmax')])
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    model.fit(x, y, epochs=2)
"""
import importlib

__version__ = "0.1.0"

# NOTE: submodules and the top-level aliases load on first use (PEP 562), so `import kcompile` and
# `kcompile.predictor` (an exported model's loader) stay free of the compiler and its dependencies.
_SUBMODULES = ("activations", "backend", "bench", "callbacks", "cli", "config", "datasets", "describe", "errors", "export",
               "initializers", "inspection", "layers", "losses", "metrics", "models", "ops", "optimizers",
               "predictor", "regularizers", "saving", "trainer", "utils")
_ALIASES = {"Sequential": ("kcompile.models", "Sequential"), "Model": ("kcompile.models", "Model"),
            "Input": ("kcompile.layers", "Input"),
            "load_predictor": ("kcompile.predictor", "load_predictor"),
            "load_model": ("kcompile.models", "load_model"),
            # Keras 3's top-level base classes
            "Layer": ("kcompile.layers", "Layer"), "Loss": ("kcompile.losses", "Loss"),
            "Metric": ("kcompile.metrics", "Metric"), "Optimizer": ("kcompile.optimizers", "Optimizer"),
            "Initializer": ("kcompile.initializers", "Initializer"),
            "Regularizer": ("kcompile.regularizers", "Regularizer"),
            "DTypePolicy": ("kcompile.layers.layer", "DTypePolicy")}


def version() -> str:
    """kcompile's version, as keras.version()."""
    return __version__

__all__ = ["Input", "Model", "Sequential", "load_model", "load_predictor", "Layer", "Loss", "Metric",
           "Optimizer", "Initializer", "Regularizer", "DTypePolicy", "version", "activations", "callbacks", "config",
           "datasets", "initializers",
           "layers", "losses", "metrics", "models", "ops", "optimizers", "regularizers", "utils", "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"kcompile.{name}")
        globals()[name] = module
        return module
    if name in _ALIASES:
        module_name, attribute = _ALIASES[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kcompile' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_ALIASES))
