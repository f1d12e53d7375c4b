"""The files of a shard directory: their names, the tar settings, atomic writes, and which directories may be written.

Shared by :mod:`ser_lightning.data.shards.writer` and the tools that write shard directories from others
(``ser-annotate merge``), so every shard directory is laid out and written the same way.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import webdataset as wds

from ser_lightning.corpora.record import SPLIT_NAMES
from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import CARD_NAME, REJECTED_NAME

logger = logging.getLogger(__name__)

SHARD_PATTERN = "{split}-{index:06d}.tar"
_SHARD_RE = re.compile(r"^(" + "|".join(SPLIT_NAMES) + r")-\d{6}\.tar(\.partial)?$")
_TAR_USER = "ser"  # fixed owner names, uid/gid 0 and mtime 0 keep tars byte-identical across runs


def shard_tar_writer(fileobj: Any) -> wds.TarWriter:
    """A tar writer with the shards' fixed settings (owner, uid/gid 0, mtime 0): byte-identical tars across runs."""
    return wds.TarWriter(fileobj, user=_TAR_USER, group=_TAR_USER, encoder=False, mtime=0)


def write_card(shard_dir: str | Path, card: dict[str, Any]) -> None:
    """Write ``card.json`` atomically (strict JSON, indented as every writer of a shard directory does).

    A remote prefix (``refresh_card`` of shards in object storage) gets it in one upload.
    """
    text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    if storage.is_remote(shard_dir):
        storage.write_bytes(storage.join(shard_dir, CARD_NAME), text.encode("utf-8"))
    else:
        write_text(Path(shard_dir) / CARD_NAME, text)


def write_text(path: Path, text: str) -> None:
    """Write ``path`` through a ``.partial`` sibling and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _is_managed(path: Path) -> bool:
    names = (CARD_NAME, REJECTED_NAME, CARD_NAME + ".partial", REJECTED_NAME + ".partial")
    return path.name in names or bool(_SHARD_RE.match(path.name))


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse an output directory that is a file, or non-empty without a ``card.json`` (unless ``overwrite``).

    Raises:
        NotADirectoryError: ``out_dir`` exists and is not a directory.
        FileExistsError: ``out_dir`` holds files but is not a shard directory and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory")
    if not out_dir.is_dir() or overwrite or (out_dir / CARD_NAME).is_file():
        return
    if any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir}: directory is not empty and holds no {CARD_NAME} (not a shard directory); "
            "choose an empty directory or pass overwrite=True (--overwrite) to replace only shard files"
        )


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir`` or clear the files a previous run wrote there; never touch anything else."""
    check_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out_dir.iterdir() if p.is_file() and _is_managed(p)]
    for p in stale:
        p.unlink()
    if stale:
        logger.info("%s: removed %d files of a previous run", out_dir, len(stale))
