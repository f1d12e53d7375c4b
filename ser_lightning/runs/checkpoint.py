"""The checkpoint spec: the self-describing entry every checkpoint holds, and the model rebuilt from it alone.

Every checkpoint a ``DistributionModule`` saves holds ``checkpoint["ser_lightning"]`` (:data:`CHECKPOINT_KEY`, see
:meth:`~ser_lightning.models.base.DistributionModule.checkpoint_entry`): ``format``, classes, sample rate, label
source, bin edges, the DataModule's input settings (``data``), the model's class path and init arguments
(``model``), and the frozen pretrained parts left out of ``state_dict`` with their source and fingerprint
(``lean``, :mod:`ser_lightning.runs.frozen_parts`). :func:`read_checkpoint` reads a file once and checks the
entry; :func:`restore_model` rebuilds the model from it, rebuilds the frozen parts from their sources and checks
them, and loads the stored weights: no shards, no config.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ser_lightning.runs.json_values import plain
from ser_lightning.types import BuiltOnDevice

if TYPE_CHECKING:
    from ser_lightning.models.base import DistributionModule

__all__ = [
    "CHECKPOINT_KEY",
    "FORMAT",
    "check_entry",
    "checkpoint_info",
    "class_path",
    "instantiate",
    "read_checkpoint",
    "restore_model",
    "spec_from_config",
]

CHECKPOINT_KEY = "ser_lightning"
FORMAT = 1


def class_path(obj: Any) -> str:
    """``module.QualName`` of ``obj``'s class."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def read_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint dict, read once on the CPU, with a clear error when it lacks the entry (an older version's).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the checkpoint has no entry (saved by an older version: re-save it), or a newer format.
    """
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    check_entry(checkpoint, path)
    return checkpoint


def check_entry(checkpoint: Any, where: str | Path = "the checkpoint") -> dict[str, Any]:
    """The checkpoint's entry, or a ``ValueError`` saying why it cannot be used (older or newer format)."""
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(
            f"{where} has no {CHECKPOINT_KEY!r} entry: it was saved by a ser-lightning older than checkpoint format "
            f"{FORMAT} and cannot be used without its training config: run `train.py predict --config CONFIG "
            f"--ckpt_path {where}` on shards, or retrain (or fit it on with --ckpt_path) to get a self-describing one"
        )
    if int(entry.get("format", 0)) > FORMAT:
        raise ValueError(f"{where} has checkpoint format {entry.get('format')}; this version reads up to {FORMAT}")
    return entry


def checkpoint_info(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint's ``ser_lightning`` entry (classes, sample rate, data settings, model spec, lean parts).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the checkpoint has no entry (saved by an older version: re-save it).
    """
    return read_checkpoint(ckpt)[CHECKPOINT_KEY]


def spec_from_config(model_config: Any, links: dict[str, Any]) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a parsed model section (jsonargparse Namespace or dict) + linked values.

    ``links`` are the values LightningCLI links from the DataModule at instantiation (``num_classes``,
    ``classes``, ...), absent from the parsed config; ``None`` values are left out.
    """
    spec = plain(model_config)
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"a model section with class_path and init_args, got {spec!r}")
    init_args = dict(spec.get("init_args") or {})
    init_args.update({k: plain(v) for k, v in links.items() if v is not None})
    return {"class_path": spec["class_path"], "init_args": init_args}


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"class path {path!r} has no module")
    return getattr(importlib.import_module(module), name)


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value and set(value) <= {"class_path", "init_args"}


def instantiate(spec: dict[str, Any]) -> Any:
    """``class_path(**init_args)``, nested ``{"class_path", "init_args"}`` arguments instantiated first."""
    cls = _import(spec["class_path"])
    args = {k: instantiate(v) if _is_spec(v) else v for k, v in (spec.get("init_args") or {}).items()}
    params = inspect.signature(cls).parameters
    required = [
        name
        for name, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    lacking = [name for name in required if name not in args]
    if lacking:
        raise ValueError(
            f"cannot rebuild {spec['class_path']} from the checkpoint: its argument(s) {lacking} were not recorded "
            "(the model was built in Python, not by train.py: call model.set_model_spec({'class_path', "
            "'init_args'}) before saving, or build the model yourself and load the state dict)"
        )
    return cls(**args)


def restore_model(
    ckpt: str | Path | dict[str, Any], *, backbone: str | None = None, map_location: str | torch.device = "cpu"
) -> DistributionModule:
    """The trained model of ``ckpt`` (a file, or what :func:`read_checkpoint` returned), in eval mode.

    Lean parts are rebuilt from their sources and must match the stored fingerprints. For Qwen2-Audio
    (checkpoint = adapters + head) ``backbone`` replaces the stored base location (hub id or directory) and the
    base is built on ``map_location``; its encoder cache is not used.

    Raises:
        ValueError: no entry (older checkpoint), a spec that cannot rebuild the model, ``backbone`` for a model
            without one, or a rebuilt lean part that differs from the stored one.
        KeyError: the state dict does not fit the rebuilt model.
    """
    checkpoint = ckpt if isinstance(ckpt, dict) else read_checkpoint(ckpt)
    entry = check_entry(checkpoint)
    spec = copy.deepcopy(entry["model"])
    init_args = spec.setdefault("init_args", {})
    if "encoder_cache_dir" in init_args:
        init_args["encoder_cache_dir"] = None  # cached encoder states are keyed by training ids, not new files
    if backbone is not None:
        if "backbone" not in init_args:
            raise ValueError(f"backbone= is for models with a pretrained base (Qwen2-Audio), not {spec['class_path']}")
        init_args["backbone"] = str(backbone)
    model = instantiate(spec)
    if isinstance(model, BuiltOnDevice) and not model.is_built():
        model.build(torch.device(map_location))  # on its device already (a quantised base cannot be moved)
    else:
        model.to(map_location)
    model.set_model_spec(entry["model"])
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=False)  # keys checked by on_load_checkpoint
    return model.eval()
