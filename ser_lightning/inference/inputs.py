"""The inputs of a prediction: audio files, folders (searched recursively), CSV manifests, arrays; sidecar transcripts.

:func:`find_inputs` lists :class:`Item` s in the order given; :func:`array_items` turns the Python API's arguments
into items. A usage error (missing path, bad manifest) is an :class:`InputError` (``ser-predict`` exits 2).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

# extensions searched in folders: libsndfile's formats and their usual aliases (a file named directly is always read)
AUDIO_EXTENSIONS = frozenset({f".{k.lower()}" for k in sf.available_formats()} | {".aif", ".oga", ".opus"})


class InputError(ValueError):
    """A usage error in the inputs (missing path, bad manifest, missing transcripts): ``ser-predict`` exits 2."""


@dataclass(frozen=True)
class Item:
    """One input to predict: an audio file (``path``) or an array (``audio`` at ``sample_rate``)."""

    id: str
    path: str | None = None
    transcript: str | None = None
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    speaker: str = ""  # the manifest's optional `speaker` (Qwen2-Audio's prompt names it, as in training)


def find_inputs(paths: Sequence[str | Path]) -> list[Item]:
    """Items of audio files, folders (searched recursively, sorted) and CSV manifests, in the order given.

    Ids: the manifest's ``id``, else the path relative to the PATH it was found under, without extension (a file
    named directly: its stem). Transcripts: the manifest's ``transcript``, else a ``.txt`` next to the audio.

    Raises:
        InputError: a path that does not exist, or a manifest without a ``path`` column.
    """
    items: list[Item] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            items += [_file_item(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        elif path.suffix.lower() == ".csv" and path.is_file():
            items += read_manifest(path)
        elif path.is_file():
            items.append(_file_item(path, path.stem))
        else:
            raise InputError(f"no such file or folder: {given}")
    return items


def read_manifest(path: str | Path) -> list[Item]:
    """A CSV manifest's items: ``path`` (relative to the CSV); optional ``id``, ``transcript``, ``speaker``."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "path" not in (reader.fieldnames or []):
            raise InputError(f"{path}: a manifest needs a 'path' column (columns: {reader.fieldnames})")
        rows = list(reader)
    items = []
    for line, row in enumerate(rows, start=2):
        value = (row.get("path") or "").strip()
        if not value:
            raise InputError(f"{path}, line {line}: empty 'path'")
        audio = Path(value) if Path(value).is_absolute() else path.parent / value
        uid = (row.get("id") or "").strip() or Path(value).with_suffix("").as_posix()
        transcript = (row.get("transcript") or "").strip() or _file_item(audio, uid).transcript
        items.append(Item(uid, str(audio), transcript, speaker=(row.get("speaker") or "").strip()))
    return items


def _file_item(path: Path, uid: str) -> Item:
    """An item for a file, with the transcript of its ``.txt`` sidecar when there is one."""
    sidecar = path.with_suffix(".txt")
    transcript = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None
    return Item(uid, str(path), transcript or None)


def array_items(
    inputs: Sequence[Any], transcripts: Sequence[str | None] | None, sample_rate: int | None
) -> list[Item]:
    """Items of :meth:`Predictor.predict`'s inputs: arrays (at ``sample_rate``) and paths, ``transcripts`` aligned."""
    if transcripts is not None and len(transcripts) != len(inputs):
        raise InputError(f"{len(transcripts)} transcripts for {len(inputs)} inputs")
    items: list[Item] = []
    for i, value in enumerate(inputs):
        text = None if transcripts is None else transcripts[i]
        if isinstance(value, str | Path):
            found = find_inputs([value])
            if text is not None:
                if len(found) != 1:
                    raise InputError(f"a transcript was given for {value}, which holds {len(found)} files")
                found = [Item(found[0].id, found[0].path, text)]
            items += found
            continue
        if sample_rate is None:
            raise InputError("arrays need sample_rate")
        items.append(Item(f"array{i}", None, text, np.asarray(value, dtype=np.float32), int(sample_rate)))
    return items
