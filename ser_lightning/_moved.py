"""Old module paths that users' configs and checkpoints name as class paths, and where each module lives now.

Configs name classes by ``class_path`` (``ser_lightning.models.curriculum.EntropyCurriculum``, the README's
``ser_lightning.data.dime_mixer.DimeMixer``), and jsonargparse imports the module of that path. Instead of a shim
module at every old path, :data:`MOVED` lists them once and :func:`install` (run by ``import ser_lightning``) adds
an import hook that serves the new module under the old name: ``import ser_lightning.models.curriculum`` gives the
very module object ``ser_lightning.callbacks.curriculum``, so classes keep their identity (isinstance, pickles).
The entries are the modules that held a class a config or checkpoint can name, plus the most-imported helpers;
a function that moved between modules (e.g. ``resolve_last``, now in ``runs.run_dirs``) is not followed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# old module path -> the module that holds its classes and functions now
MOVED: dict[str, str] = {
    "ser_lightning.models.curriculum": "ser_lightning.callbacks.curriculum",
    "ser_lightning.models.predictions": "ser_lightning.callbacks.prediction_writer",
    "ser_lightning.models.checkpoint": "ser_lightning.runs.checkpoint",
    "ser_lightning.cli.guards": "ser_lightning.callbacks.guards",
    "ser_lightning.cli.preemption": "ser_lightning.callbacks.preemption",
    "ser_lightning.cli.quiet": "ser_lightning.callbacks.console",
    "ser_lightning.cli.predictor": "ser_lightning.inference",
    "ser_lightning.data.datamodule": "ser_lightning.data.stream.datamodule",
    "ser_lightning.data.dime_mixer": "ser_lightning.data.dime.mixer",
    "ser_lightning.nn.qwen2_audio_random": "ser_lightning.nn.qwen2_audio.offline",
    "ser_lightning.nn.qwen2_audio_forward": "ser_lightning.nn.qwen2_audio.forward",
    "ser_lightning.nn.qwen2_audio_cache": "ser_lightning.nn.qwen2_audio.cache",
    "ser_lightning.alm.tts_prompts": "ser_lightning.alm.zeroshot_prompts",
    "ser_lightning.alm.local": "ser_lightning.alm.qwen2_audio_annotator",
}


class _MovedModuleLoader(importlib.abc.Loader):
    """Hands out the module at its new path (imported on first use) for the old name."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """The module at its new path (its ``__name__`` stays the new path's)."""
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported at its new path; give it back its own ``__spec__``."""
        module.__spec__ = self._own_spec


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED`, and nothing else."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old path, served by :class:`_MovedModuleLoader`; ``None`` for every other name."""
        new = MOVED.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new))


def install() -> None:
    """Add the finder to ``sys.meta_path`` once (idempotent)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
