"""Write utterance records as WebDataset shards (16 kHz mono FLAC + JSON), a card and a rejection list.

The format is specified in ``docs/shard-format.md``. Writing is deterministic: the same records and
audio give byte-identical shards, ``card.json`` and ``rejected.jsonl``, whatever the number of workers.
Nothing is dropped silently: every utterance left out (by the corpus reader or here) gets a line in
``rejected.jsonl`` with its reason, and the count is stored in the card.

Audio decoding and encoding is in :mod:`ser_lightning.data.audio_io`; building and reading the card,
and reading a written directory back, in :mod:`ser_lightning.data.shards.card`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import webdataset as wds
from tqdm.auto import tqdm

from ser_lightning.corpora.iemocap import CORPUS as IEMOCAP
from ser_lightning.corpora.iemocap import session_from_id
from ser_lightning.corpora.record import SPLIT_NAMES, ReadReport, UtteranceRecord
from ser_lightning.data.audio_io import DEFAULT_MAX_DURATION, SILENCE_THRESHOLD, AudioChecks, ordered_map, process_audio
from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import (
    PRIMARY,
    REJECTED_NAME,
    build_card,
    common_sources,
    iter_shard_meta,
    label_rules,
    null_label_counts,
    read_card,
)
from ser_lightning.data.shards.files import (
    SHARD_PATTERN,
    check_out_dir,
    prepare_out_dir,
    shard_tar_writer,
    write_card,
    write_text,
)
from ser_lightning.data.shards.verify import describe_shard
from ser_lightning.labels import entropy, votes_to_distribution

__all__ = [
    "SHARD_PATTERN",
    "check_out_dir",
    "refresh_card",
    "sample_key",
    "sample_meta",
    "write_shards",
]

logger = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------
# Records -> sample JSON
# --------------------------------------------------------------------------------------------


def sample_key(utterance_id: str) -> str:
    """The ``__key__`` of an utterance: its id with every ``.`` replaced by ``_``."""
    return utterance_id.replace(".", "_")


def _vote_arrays(record: UtteranceRecord, num_classes: int) -> dict[str, np.ndarray]:
    """Validated vote vectors per source; a ``ValueError`` message is the rejection reason."""
    if PRIMARY not in record.votes:
        raise ValueError("no primary votes")
    votes: dict[str, np.ndarray] = {}
    for source, counts in record.votes.items():
        v = np.asarray(counts, dtype=np.float64)
        if v.shape != (num_classes,):
            raise ValueError(f"{source} votes have shape {v.shape}, expected ({num_classes},)")
        if not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"{source} votes are negative or non-finite")
        if v.sum() <= 0:
            raise ValueError(f"no {source} votes")
        votes[source] = v
    return votes


def _finite_list(values: Sequence[float] | None, length: int, name: str) -> list[float] | None:
    if values is None:
        return None
    out = [float(x) for x in values]
    if len(out) != length or not all(math.isfinite(x) for x in out):
        raise ValueError(f"{name} must be {length} finite numbers or None, got {list(values)}")
    return out


def sample_meta(record: UtteranceRecord, duration: float) -> dict[str, Any]:
    """The JSON dict stored with one sample (keys as in ``docs/shard-format.md``).

    Raises:
        ValueError: the record's votes, ``vad`` or ``vad_scale`` are unusable (the message is the reason).
    """
    votes = _vote_arrays(record, len(record.classes))
    dists = {s: votes_to_distribution(v) for s, v in votes.items()}
    return {
        "id": record.id,
        "corpus": record.corpus,
        "split": record.split,
        "transcript": record.transcript or "",
        "speaker": record.speaker or "",
        "session": _session(record),
        "duration": float(duration),
        "classes": list(record.classes),
        "votes": {s: [float(x) for x in v] for s, v in votes.items()},
        "distribution": {s: [float(x) for x in d] for s, d in dists.items()},
        "entropy": {s: float(entropy(d)) for s, d in dists.items()},
        "vad": _finite_list(record.vad, 3, "vad"),
        "vad_scale": _finite_list(record.vad_scale, 2, "vad_scale"),
        "consensus": _consensus(record),
    }


def _session(record: UtteranceRecord) -> int | None:
    """IEMOCAP's recording session (the ``--folds session`` key of ``ser-experiment``); ``None`` for other corpora."""
    return session_from_id(record.id) if record.corpus == IEMOCAP else None


def _consensus(record: UtteranceRecord) -> str | None:
    """The record's consensus label, checked to be one of its classes (``None``: the corpus gives none)."""
    if record.consensus is not None and record.consensus not in record.classes:
        raise ValueError(f"consensus {record.consensus!r} is not one of the classes {list(record.classes)}")
    return record.consensus


def _record_problem(record: UtteranceRecord, seen_keys: set[str]) -> str | None:
    """Why a record cannot be written (before its audio is read), or ``None``."""
    if record.split not in SPLIT_NAMES:
        return f"unknown split {record.split!r} (expected one of {', '.join(SPLIT_NAMES)})"
    key = sample_key(str(record.id))
    if not key:
        return "empty id"
    if key in seen_keys:
        return f"duplicate id (key {key!r} already written)"
    try:
        sample_meta(record, 0.0)
    except ValueError as err:
        return str(err)
    return None


# --------------------------------------------------------------------------------------------
# Tar writing
# --------------------------------------------------------------------------------------------


class _SplitShardWriter:
    """Rolls ``{split}-NNNNNN.tar`` shards of at most ``maxcount`` samples; renames each when complete."""

    def __init__(self, out_dir: Path, maxcount: int) -> None:
        self.out_dir = out_dir
        self.maxcount = maxcount
        self.shards: dict[str, list[str]] = {}
        self._split: str | None = None
        self._count = 0
        self._file: BinaryIO | None = None
        self._tar: wds.TarWriter | None = None
        self._name = ""
        self._sha256 = hashlib.sha256()
        self.info: dict[str, dict[str, Any]] = {}  # shard name -> {"samples", "sha256"}, for the card

    def write(self, split: str, key: str, flac: bytes, meta_json: bytes) -> None:
        if self._tar is None or split != self._split or self._count >= self.maxcount:
            self._open(split)
        assert self._tar is not None
        self._tar.write({"__key__": key, "flac": flac, "json": meta_json})
        self._count += 1

    def _open(self, split: str) -> None:
        self.close()
        names = self.shards.setdefault(split, [])
        self._name = SHARD_PATTERN.format(split=split, index=len(names))
        names.append(self._name)
        self._split, self._count = split, 0
        self._file = (self.out_dir / f"{self._name}.partial").open("wb")
        self._sha256 = hashlib.sha256()
        sink = _HashingSink(self._file, self._sha256)
        self._tar = shard_tar_writer(sink)

    def close(self) -> None:
        if self._tar is None or self._file is None:
            return
        self._tar.close()
        self._file.close()
        self.info[self._name] = {"samples": self._count, "sha256": self._sha256.hexdigest()}
        (self.out_dir / f"{self._name}.partial").replace(self.out_dir / self._name)
        self._tar, self._file = None, None


class _HashingSink:
    """A write-only file that feeds every byte to a SHA-256 on the way (the card's per-shard checksum)."""

    def __init__(self, file: BinaryIO, digest: Any) -> None:
        self.file, self.digest = file, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


# --------------------------------------------------------------------------------------------
# Writing a shard directory
# --------------------------------------------------------------------------------------------


def _split_order(split: str) -> int:
    return SPLIT_NAMES.index(split) if split in SPLIT_NAMES else len(SPLIT_NAMES)


def _check_classes(records: Sequence[UtteranceRecord]) -> tuple[str, ...]:
    if not records:
        raise ValueError("no utterance records to write")
    classes = tuple(records[0].classes)
    for r in records:
        if tuple(r.classes) != classes:
            raise ValueError(
                f"records mix class sets: {r.id!r} has {list(r.classes)}, {records[0].id!r} has {list(classes)}"
            )
    return classes


def _reader_rejections(report: ReadReport | None) -> list[dict[str, Any]]:
    if report is None:
        return []
    return [{"id": i, "split": None, "path": "", "reason": r} for i, r in sorted(report.skipped.items())]


def write_shards(
    records: Iterable[UtteranceRecord],
    out_dir: str | Path,
    *,
    sample_rate: int = 16000,
    min_duration: float = 0.25,
    maxcount: int = 1000,
    workers: int = 1,
    report: ReadReport | None = None,
    progress: bool = True,
    overwrite: bool = False,
    silence_threshold: float = SILENCE_THRESHOLD,
    max_duration: float | None = DEFAULT_MAX_DURATION,
    reject_over_max_duration: bool = False,
) -> dict[str, Any]:
    """Write records as ``{split}-NNNNNN.tar`` WebDataset shards plus ``card.json`` and ``rejected.jsonl``.

    Samples are written by split (in :data:`SPLIT_NAMES` order); the train split in a fixed pseudo-random
    order (SHA-1 of the id), so a shard mixes speakers and sessions and a streaming shuffle buffer sees the
    whole corpus's variety, the other splits sorted by id. The output is byte-identical across runs, input
    orders and worker counts. An utterance whose audio is missing, does not decode,
    is empty, has non-finite samples or is shorter than ``min_duration`` — or whose record is unusable
    (unknown split, duplicate id, no primary votes) — is logged and written to ``rejected.jsonl``, as are
    the reader's ``report.skipped`` entries.

    Args:
        records: utterances of one class set (mixing class sets raises).
        out_dir: output directory; created if needed. Files of a previous run there (shards, card,
            rejected list) are replaced; other files are never touched.
        sample_rate: rate of the stored audio in Hz.
        min_duration: shortest accepted utterance in seconds.
        maxcount: samples per shard at most.
        workers: processes that decode and encode audio (1: in this process). Workers are spawned, so a
            script calling this with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard.
        report: the corpus reader's report; its skipped utterances go to ``rejected.jsonl``.
        progress: show a tqdm progress bar.
        overwrite: allow writing into a non-empty directory that holds no ``card.json``.
        silence_threshold: reject a clip whose peak is below this (full scale 1.0; 0 keeps silence).
        max_duration: clips longer than this (seconds) are counted in the card's ``audio_checks`` and warned;
            ``None`` counts none.
        reject_over_max_duration: reject those clips instead of keeping them.

    Returns:
        The card (also written to ``out_dir/card.json``).

    Raises:
        ValueError: no records, records of different class sets, or a bad argument.
        FileExistsError: ``out_dir`` is non-empty, not a shard directory and ``overwrite`` is false.
    """
    if maxcount < 1 or workers < 1 or sample_rate < 1 or min_duration < 0:
        raise ValueError("need maxcount >= 1, workers >= 1, sample_rate >= 1 and min_duration >= 0")
    records = sorted(records, key=_write_order)
    classes = _check_classes(records)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)

    rejected = _reader_rejections(report)
    todo, seen = [], set()
    for r in records:
        problem = _record_problem(r, seen)
        if problem is None:
            seen.add(sample_key(str(r.id)))
            todo.append(r)
        else:
            rejected.append(_reject(r, problem))
    splits = sorted({r.split for r in records if r.split in SPLIT_NAMES}, key=_split_order)
    primary: dict[str, list[list[float]]] = {s: [] for s in splits}
    kept_votes: list[dict[str, list[float]]] = []
    train_meta: list[dict[str, Any]] = []  # votes and entropies of the kept train samples, for label_sources
    writer = _SplitShardWriter(out_dir, maxcount)
    checks = AudioChecks(silence_threshold, max_duration, reject_over_max_duration)
    jobs = [checks.job(str(r.audio_path), sample_rate, min_duration) for r in todo]
    try:
        results = ordered_map(process_audio, jobs, workers)
        bar = tqdm(zip(todo, results, strict=True), total=len(todo), disable=not progress, unit="utt", desc="shards")
        for record, res in bar:
            if res.flac is None:
                rejected.append(_reject(record, res.reason or "unknown"))
                continue
            meta = sample_meta(record, res.num_samples / sample_rate)
            writer.write(record.split, sample_key(record.id), res.flac, _dumps(meta).encode("utf-8"))
            primary[record.split].append(meta["votes"][PRIMARY])
            kept_votes.append(meta["votes"])
            if record.split == "train":
                train_meta.append({"votes": meta["votes"], "entropy": meta["entropy"]})
            checks.add(str(record.id), res, sample_rate)
    finally:
        writer.close()
    checks.warn(logger)
    sources = common_sources(kept_votes)
    rules = report.label_rules if report is not None else None
    card = build_card(
        classes, splits, primary, sources, writer.shards, len(rejected), sample_rate, train_meta, writer.info,
        label_rules=rules,
    )
    card["audio_checks"] = checks.card()
    if report is not None:  # what the reader counted but did not reject, kept with the data
        card["reader"] = report.card()
    write_text(out_dir / REJECTED_NAME, "".join(_dumps(r) + "\n" for r in rejected))
    write_card(out_dir, card)
    return card


def refresh_card(shard_dir: str | Path) -> dict[str, Any]:
    """Rewrite the ``card.json`` of a written directory from its shards, as :func:`write_shards` would write it.

    For cards written before a key was added (e.g. ``label_sources``): the samples' JSON is read back
    (no audio is decoded) and the card built by the same code as at writing time; the shard lists, the
    rejection count, the reader's counts and the label sources' rules (``label_rules``) are kept.
    """
    shard_dir = storage.as_location(shard_dir)  # a local directory or a remote prefix
    old = read_card(shard_dir)
    splits = list(old["shards"])
    metas = {s: list(iter_shard_meta(shard_dir, s, sources=(PRIMARY,))) for s in splits}
    shard_info = {name: describe_shard(storage.join(shard_dir, name)) for s in splits for name in old["shards"][s]}
    primary = {s: [m["votes"][PRIMARY] for m in metas[s]] for s in splits}
    sources = common_sources([m["votes"] for s in splits for m in metas[s]])
    card = build_card(
        tuple(old["classes"]), splits, primary, sources, old["shards"], old["rejected"], old["sample_rate"],
        metas.get("train", []), shard_info, null_label_counts(metas, sources), label_rules(old),
    )
    for key in ("audio_checks", "reader", "annotations"):  # counted from the original audio / reader / store: kept
        if key in old:
            card[key] = old[key]
    write_card(shard_dir, card)
    return card


def _write_order(record: UtteranceRecord) -> tuple[int, str, str, str]:
    uid = str(record.id)
    mix = hashlib.sha1(uid.encode("utf-8")).hexdigest() if record.split == "train" else ""
    return _split_order(record.split), mix, uid, str(record.audio_path)


def _reject(record: UtteranceRecord, reason: str) -> dict[str, Any]:
    logger.warning("rejected %s (%s): %s", record.id, record.audio_path, reason)
    return {"id": str(record.id), "split": record.split, "path": str(record.audio_path), "reason": reason}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)
