"""Values made ready for files a user keeps: plain Python for checkpoints, strict JSON (no NaN) for metrics.

:func:`plain` turns tensors, numpy values, paths and jsonargparse namespaces into dicts, lists and scalars, so a
checkpoint's entry loads anywhere; :func:`strict_json` and :func:`finite` replace non-finite numbers by ``None``,
since strict JSON has no NaN; :func:`write_json` writes a strict-JSON file, atomically (:func:`write_text_atomic`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor


def plain(value: Any) -> Any:
    """``value`` as plain Python (dict, list, str, int, float, bool, None) for a checkpoint loadable anywhere."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "as_dict") and callable(value.as_dict):  # jsonargparse Namespace
        return plain(value.as_dict())
    return str(value)


def finite(value: float | None) -> float | None:
    """``value``, or ``None`` when it is missing, NaN or infinite."""
    return value if value is not None and math.isfinite(value) else None


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN / Infinity)."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented, key-sorted strict JSON (a NaN left in it is an error, never written)."""
    return write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` through a temporary file in the same directory, fsynced, then renamed into place.

    Readers (and other processes writing the same file, e.g. the tasks of a job array) see the old file or the new
    one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
