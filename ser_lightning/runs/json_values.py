"""Values made ready for files a user keeps: plain Python for checkpoints, strict JSON (no NaN) for metrics.

:func:`plain` turns tensors, numpy values, paths and jsonargparse namespaces into dicts, lists and scalars, so a
checkpoint's entry loads anywhere; :func:`strict_json` and :func:`finite` replace non-finite numbers by ``None``,
since strict JSON has no NaN; :func:`write_json` writes a strict-JSON file.
"""

from __future__ import annotations

import json
import math
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    return path
