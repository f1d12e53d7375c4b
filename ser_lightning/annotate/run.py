"""``ser-annotate run`` as a function: ask an ALM backend for the missing annotations of a shard directory.

Annotation ``k`` of an utterance asks the question :func:`~ser_lightning.annotate.plan.annotation_plan` fixes
(persona, temperature); only the ``(id, k)`` the store lacks are asked, in batches of the backend's
``max_batch`` run by a bounded thread pool; each answer is committed by the thread that received it. An
answer that is not a valid class is still annotation ``k`` (label NULL, ``raw``, ``reason``); a request that
finally failed (``AnnotationError``) is not stored, so the next run asks it again.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ser_lightning.alm.annotator import (
    AnnotationAnswer,
    AnnotationError,
    AnnotationRequest,
    AnnotatorBackend,
    make_backend,
)
from ser_lightning.annotate.plan import annotation_plan
from ser_lightning.annotate.store import AnnotationStore
from ser_lightning.data.shards.card import iter_shard_meta, iter_tar_samples, read_card, shard_paths

log = logging.getLogger(__name__)

GRACE_SECONDS = 30.0  # after Ctrl-C, how long answers in flight may still arrive and be stored


@dataclass
class RunSummary:
    """What a run did; ``requests``, ``retries`` and ``tokens`` are the backend's (``tokens`` None: not reported)."""

    annotations: int  # (id, k) asked for, with k < n
    already_stored: int  # of the utterances' n, stored before this run
    stored: int = 0  # answers committed by this run (valid or not)
    invalid: int = 0  # of those, answers that were not a valid class
    failed: int = 0  # requests that finally failed (not stored: a re-run asks them again)
    unreadable: int = 0  # annotations not asked because their audio did not decode
    requests: int = 0
    retries: int = 0
    tokens: int | None = None
    seconds: float = 0.0
    interrupted: bool = False
    errors: dict[str, int] = field(default_factory=dict)  # failure message (first line) -> count

    @property
    def remaining(self) -> int:
        """Annotations still missing after this run (failed, unreadable or never asked)."""
        return self.annotations - self.already_stored - self.stored

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict, ``remaining`` included."""
        return {**asdict(self), "remaining": self.remaining}


class AnnotationInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM in the CLI) stopped a run; ``summary`` says what was stored before it."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__("annotation run interrupted")
        self.summary = summary


def iter_utterances(
    shard_dir: str | Path, split: str | None, wanted: set[str]
) -> Iterator[tuple[dict[str, Any], np.ndarray | None, int]]:
    """``(sample JSON, float32 mono audio or None, sample rate)`` of the samples whose id is in ``wanted``.

    Streams the tar members of the card's shards in order; ``audio`` is None when it does not decode.
    """
    for path in shard_paths(shard_dir, split):
        for _, members in iter_tar_samples(path):
            yield from _utterance(members, wanted, path)


def _utterance(
    members: dict[str, bytes], wanted: set[str], path: Path
) -> Iterator[tuple[dict[str, Any], np.ndarray | None, int]]:
    if "json" not in members:
        return
    meta = json.loads(members["json"])
    if str(meta.get("id")) not in wanted:
        return
    try:
        audio, rate = sf.read(io.BytesIO(members["flac"]), dtype="float32", always_2d=True)
        audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
        if audio.size == 0:
            raise ValueError("empty audio")
    except Exception as err:  # a damaged sample must not stop a day-long run
        log.warning("%s: sample %s: audio does not decode (%s); not annotated", path, meta.get("id"), err)
        yield meta, None, 0
        return
    yield meta, np.ascontiguousarray(audio, dtype=np.float32), int(rate)


class _Runner:
    """The state one run shares between the submitting thread and the pool threads (counts under one lock)."""

    def __init__(self, backend: AnnotatorBackend, store: AnnotationStore, summary: RunSummary, bar: tqdm) -> None:
        self.backend, self.store, self.summary, self.bar = backend, store, summary, bar
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.start = time.monotonic()

    def annotate(self, batch: Sequence[AnnotationRequest]) -> None:
        """Ask one batch and commit its answers (pool thread); any error but a final failure stops the run."""
        try:
            self._annotate(batch)
        except BaseException as err:  # a backend bug or a store error: stop submitting, re-raised by the run
            with self.lock:
                self.error = self.error or err
            raise

    def _annotate(self, batch: Sequence[AnnotationRequest]) -> None:
        try:
            answers = self.backend.annotate(batch)
        except AnnotationError as err:  # finally failed: counted, not stored, asked again by the next run
            self._count(failed=len(batch), error=str(err).splitlines()[0] if str(err) else type(err).__name__)
            return
        if len(answers) != len(batch):
            raise RuntimeError(f"the {self.backend.name} backend gave {len(answers)} answers to {len(batch)} requests")
        rows = [self._row(request, answer) for request, answer in zip(batch, answers, strict=True)]
        try:
            added = self.store.add_many(rows)
        except ValueError:
            if not self.summary.interrupted:
                raise
            return  # the store was closed after Ctrl-C and the grace period: dropped, asked again later
        tokens = [a.tokens for a in answers if a.tokens is not None]
        self._count(stored=added, invalid=sum(r["label"] is None for r in rows), tokens=sum(tokens) if tokens else None)

    def _row(self, request: AnnotationRequest, answer: AnnotationAnswer) -> dict[str, Any]:
        label, reason = answer.label, answer.reason
        if label is not None and label not in request.classes:
            label, reason = None, f"backend returned {label!r}, not one of the classes"
        elif label is None and not reason:
            reason = "no valid class in the answer"
        return {
            "id": request.uid, "backend": self.backend.name, "model": self.backend.model, "mode": self.backend.mode,
            "k": request.k, "persona": request.persona, "temperature": request.temperature, "label": label,
            "probabilities": answer.probabilities, "raw": answer.raw or "", "reason": reason,
        }  # fmt: skip

    def _count(
        self, stored: int = 0, invalid: int = 0, failed: int = 0, tokens: int | None = None, error: str | None = None
    ) -> None:
        with self.lock:
            s = self.summary
            s.stored, s.invalid, s.failed = s.stored + stored, s.invalid + invalid, s.failed + failed
            if tokens is not None:
                s.tokens = (s.tokens or 0) + tokens
            if error is not None:
                s.errors[error] = s.errors.get(error, 0) + failed
            requests = int(self.backend.stats.get("requests", 0))
            self.bar.update(stored + failed)
            self.bar.set_postfix(
                done=s.already_stored + s.stored, failed=s.failed, remaining=s.remaining - s.failed - s.unreadable,
                req_s=f"{requests / max(time.monotonic() - self.start, 1e-9):.2f}", refresh=False,
            )  # fmt: skip


def run_annotation(
    shards: str | Path,
    backend: AnnotatorBackend | str,
    store: AnnotationStore | str | Path,
    n: int,
    split: str | None = None,
    mode: str | None = None,
    concurrency: int = 1,
    seed: int = 0,
    model: str | None = None,
    progress: bool = False,
    **backend_options: Any,
) -> RunSummary:
    """Ask ``backend`` for annotations ``k < n`` of every utterance of ``shards`` (one split or all) not in ``store``.

    Args:
        shards: a shard directory (``ser-prepare``); the prompt lists its card's classes.
        backend: an :class:`~ser_lightning.alm.annotator.AnnotatorBackend`, or a name for
            :func:`~ser_lightning.alm.annotator.make_backend` with ``model``, ``mode`` and ``backend_options``.
        store: an open store or the path of its SQLite file (created when absent).
        n: annotations per utterance; raising it later keeps the first ``n``.
        split: only this split of the card; all splits when None.
        mode: ``sample`` or ``exact``; with a backend object, None or the backend's mode.
        concurrency: batches in flight at once (threads).
        seed: the persona and temperature plan's seed; a store keeps one plan per backend, model and mode.
        model: the model name, when ``backend`` is a name.
        progress: show a progress bar (done / failed / remaining, rates) on stderr.
        **backend_options: passed to ``make_backend`` when ``backend`` is a name.

    Returns:
        The :class:`RunSummary`; ``failed`` requests are not stored (a re-run asks them again).

    Raises:
        AnnotationInterrupted: on Ctrl-C, after storing the answers that arrived within ``GRACE_SECONDS``.
        ValueError: bad ``n``/``concurrency``/``mode``, or a store whose rows were asked with another seed.
    """
    if n < 1 or concurrency < 1:
        raise ValueError(f"n and concurrency must be >= 1, got n={n}, concurrency={concurrency}")
    own_backend = isinstance(backend, str)
    if isinstance(backend, str):
        if model is None:
            raise ValueError("a backend given by name needs model=")
        backend = make_backend(backend, model, mode or "sample", **backend_options)
    elif mode is not None and mode != backend.mode:
        raise ValueError(f"mode={mode!r} but the {backend.name} backend runs in mode {backend.mode!r}")
    own_store = not isinstance(store, AnnotationStore)
    db = AnnotationStore(store) if own_store else store
    try:
        return _run(Path(shards), backend, db, n, split, concurrency, seed, progress)
    finally:
        if own_store:
            db.close()
        if own_backend and callable(getattr(backend, "close", None)):
            backend.close()


def check_plan(store: AnnotationStore, backend: AnnotatorBackend, seed: int, n: int | None = None) -> None:
    """Raise ``ValueError`` when stored rows of this backend, model and mode were asked with another plan (seed)."""
    for row in store.rows(backend.name, backend.model, backend.mode, n):
        persona, temperature = annotation_plan(seed, row.id, row.k)
        if row.persona != persona or abs(row.temperature - temperature) > 1e-9:
            raise ValueError(
                f"{store.path}: annotation {row.k} of {row.id!r} ({backend.name}, {backend.model}, {backend.mode}) was "
                f"asked with persona {row.persona}, temperature {row.temperature}; seed {seed} plans {persona}, "
                f"{temperature}. Use the seed the store was written with, or another --out."
            )


def _run(
    shards: Path, backend: AnnotatorBackend, store: AnnotationStore, n: int, split: str | None, concurrency: int,
    seed: int, progress: bool,
) -> RunSummary:  # fmt: skip
    card = read_card(shards)
    classes = tuple(card["classes"])
    ids = [str(meta["id"]) for meta in iter_shard_meta(shards, split)]
    check_plan(store, backend, seed, n)
    todo: dict[str, list[int]] = {}
    for uid, k in store.missing(ids, n, backend.name, backend.model, backend.mode):
        todo.setdefault(uid, []).append(k)
    missing = sum(len(ks) for ks in todo.values())
    summary = RunSummary(annotations=len(set(ids)) * n, already_stored=len(set(ids)) * n - missing)
    stats_before = {key: int(backend.stats.get(key, 0)) for key in ("requests", "retries", "tokens")}
    bar = tqdm(total=missing, desc=f"{backend.name} {backend.model}", unit="ann", disable=not progress, smoothing=0.05)
    runner = _Runner(backend, store, summary, bar)
    slots = threading.BoundedSemaphore(2 * concurrency)  # batches submitted but not finished: bounds audio in memory
    in_flight: set[Future] = set()
    in_flight_lock = threading.Lock()
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="annotate")

    def submit(batch: list[AnnotationRequest]) -> None:
        slots.acquire()
        future = executor.submit(runner.annotate, batch)
        with in_flight_lock:
            in_flight.add(future)
        future.add_done_callback(finished)

    def finished(future: Future) -> None:
        with in_flight_lock:
            in_flight.discard(future)
        slots.release()

    def pending() -> list[Future]:
        with in_flight_lock:
            return list(in_flight)

    utterances = iter_utterances(shards, split, set(todo))  # closed (its open shard too) in the finally clause
    try:
        batch: list[AnnotationRequest] = []
        for meta, audio, rate in utterances if todo else ():
            uid = str(meta["id"])
            if audio is None:
                summary.unreadable += len(todo[uid])
                continue
            for k in todo[uid]:
                persona, temperature = annotation_plan(seed, uid, k)
                batch.append(AnnotationRequest(uid, k, audio, rate, str(meta.get("transcript") or ""), classes,
                                               persona, temperature))  # fmt: skip
                if len(batch) >= backend.max_batch:
                    submit(batch)
                    batch = []
            if runner.error is not None:
                break
        if batch and runner.error is None:
            submit(batch)
        if runner.error is None:
            wait(pending())  # else the finally clause drops the queued batches and waits for the running ones
    except KeyboardInterrupt:
        summary.interrupted = True
        executor.shutdown(wait=False, cancel_futures=True)  # stop submitting; queued batches are dropped
        try:
            wait(pending(), timeout=GRACE_SECONDS)  # answers in flight are still committed on arrival
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: drop them
    finally:
        utterances.close()
        executor.shutdown(wait=not summary.interrupted, cancel_futures=True)
        bar.close()
        summary.seconds = round(time.monotonic() - runner.start, 3)
        for key in ("requests", "retries", "tokens"):
            if key != "tokens" or (summary.tokens is None and backend.stats.get("tokens")):
                setattr(summary, key, int(backend.stats.get(key, 0)) - stats_before[key])
    if summary.interrupted:
        raise AnnotationInterrupted(summary)
    if runner.error is not None:
        raise runner.error
    return summary
