"""ser-lightning: ambiguity-aware speech emotion recognition as Lightning modules."""

from ser_lightning import _moved

__version__ = "0.1.0"

_moved.install()  # old module paths (configs, checkpoints, scripts) resolve to where the modules live now

__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> object:
    """``load_model`` on first use (``ser_lightning.inference.predictor``), so ``import ser_lightning`` stays light."""
    if name == "load_model":
        from ser_lightning.inference import load_model

        return load_model
    raise AttributeError(f"module 'ser_lightning' has no attribute {name!r}")
