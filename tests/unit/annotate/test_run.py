"""run_annotation with an in-process fake backend: each (id, k) stored once, failures asked again, Ctrl-C."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import closing

import numpy as np
import pytest
from shard_fixtures import CLASSES, write_test_shards

from ser_lightning.alm.annotator import AnnotationAnswer, AnnotationError, AnnotationRequest, AnnotatorBackend
from ser_lightning.annotate.plan import annotation_plan
from ser_lightning.annotate.run import AnnotationInterrupted, run_annotation
from ser_lightning.annotate.store import AnnotationStore
from ser_lightning.data.shards.card import iter_shard_meta

SIZES = {"train": [4, 3], "test": [3]}


def _digest(*keys: object) -> int:
    return int(hashlib.sha256(repr(keys).encode()).hexdigest(), 16)


class FakeBackend:
    """Deterministic answers: ~1 in 6 invalid, those in ``fail`` raise AnnotationError (once, or always)."""

    name = "fake"
    model = "fake-1"

    def __init__(self, mode: str = "sample", max_batch: int = 1, fail: set[tuple[str, int]] = frozenset(),
                 fail_always: bool = False, delay: float = 0.0) -> None:  # fmt: skip
        self.mode, self.max_batch, self.delay = mode, max_batch, delay
        self.fail, self.fail_always = set(fail), fail_always
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "tokens": 0}
        self.asked: list[AnnotationRequest] = []
        self.batches: list[int] = []
        self.lock = threading.Lock()

    @staticmethod
    def label(uid: str, k: int) -> str | None:
        h = _digest(uid, k)
        return None if h % 6 == 0 else CLASSES[h % len(CLASSES)]

    def annotate(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationAnswer]:
        time.sleep(self.delay)
        with self.lock:
            self.asked.extend(requests)
            self.batches.append(len(requests))
            self.stats["requests"] += len(requests)
            self.stats["retries"] += 1
            keys = {(r.uid, r.k) for r in requests}
            if keys & self.fail:
                self.stats["failures"] += len(requests)
                if not self.fail_always:
                    self.fail -= keys
                raise AnnotationError(f"scripted failure of {sorted(keys & self.fail or keys)}\nsecond line")
        answers = []
        for r in requests:
            label = self.label(r.uid, r.k)
            probs = [0.1, 0.2, 0.3, 0.4] if self.mode == "exact" else None
            answers.append(AnnotationAnswer(label, probs, raw=label or "I cannot tell", reason=None, tokens=3))
        return answers


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_test_shards(tmp_path_factory.mktemp("shards") / "s", SIZES)


def _ids(shards, split=None) -> list[str]:
    return [m["id"] for m in iter_shard_meta(shards, split)]


def _table(path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT id, backend, model, mode, k, persona, temperature, label, probabilities, raw,"
                            " reason FROM annotations ORDER BY id, k").fetchall()  # fmt: skip


def test_fake_backend_is_a_backend():
    """The fake implements the shared Protocol (so the run is tested against the interface)."""
    assert isinstance(FakeBackend(), AnnotatorBackend)


def test_every_annotation_once_after_failures_and_rerun(shards, tmp_path):
    """A failed request is counted, not stored; the re-run asks exactly what is missing; rows follow the plan."""
    store = tmp_path / "a.sqlite"
    fail = {("train.0001", 2), ("test.0000", 0), ("test.0002", 3)}
    backend = FakeBackend(fail=fail)
    first = run_annotation(shards, backend, store, n=4, concurrency=3, seed=11)
    ids = _ids(shards)
    assert len(ids) == 10
    assert (first.annotations, first.already_stored, first.failed, first.stored) == (40, 0, 3, 37)
    assert first.remaining == 3
    assert sum(first.errors.values()) == 3
    assert all(e.startswith("scripted failure") for e in first.errors)
    assert first.requests == 40
    assert first.retries == 40
    assert first.tokens == 37 * 3
    assert first.invalid == sum(FakeBackend.label(u, k) is None for u in ids for k in range(4) if (u, k) not in fail)
    second = run_annotation(shards, backend, store, n=4, concurrency=2, seed=11)
    assert sorted((r.uid, r.k) for r in backend.asked[40:]) == sorted(fail)
    assert (second.already_stored, second.stored, second.failed, second.remaining) == (37, 3, 0, 0)
    rows = _table(store)
    assert Counter((r[0], r[4]) for r in rows) == Counter({(u, k): 1 for u in ids for k in range(4)})
    transcripts = {m["id"]: m["transcript"] for m in iter_shard_meta(shards)}
    for uid, backend_name, model, mode, k, persona, temperature, label, probs, raw, reason in rows:
        assert (backend_name, model, mode, probs) == ("fake", "fake-1", "sample", None)
        assert (persona, temperature) == annotation_plan(11, uid, k)
        assert label == FakeBackend.label(uid, k)
        assert (reason is None) == (label is not None)
        assert raw == (label or "I cannot tell")
    for request in backend.asked:
        assert request.transcript == transcripts[request.uid]
        assert request.classes == CLASSES
        assert request.sample_rate == 16000
        assert request.audio.dtype == np.float32
        assert request.audio.ndim == 1
    third = run_annotation(shards, backend, store, n=4, seed=11)
    assert (third.stored, third.remaining, len(backend.asked)) == (0, 0, 43)


def test_raising_n_keeps_the_first_n_and_split_limits(shards, tmp_path):
    """n=2 then n=5 asks k=2..4 only; --split asks only that split's utterances; batches respect max_batch."""
    store = tmp_path / "a.sqlite"
    backend = FakeBackend(max_batch=3)
    run_annotation(shards, backend, store, n=2, split="test", seed=0)
    before = _table(store)
    assert {r[0] for r in before} == set(_ids(shards, "test"))
    summary = run_annotation(shards, backend, store, n=5, split="test", concurrency=2, seed=0)
    assert summary.stored == 9
    assert summary.already_stored == 6
    assert max(backend.batches) == 3
    after = _table(store)
    assert [r for r in after if r[4] < 2] == before
    assert sorted((r.uid, r.k) for r in backend.asked[6:]) == sorted((u, k) for u in _ids(shards, "test")
                                                                      for k in range(2, 5))  # fmt: skip


def test_exact_mode_rows_and_invalid_backend_label(shards, tmp_path):
    """Exact mode stores probabilities; a label outside the classes is stored NULL with a reason."""

    class Odd(FakeBackend):
        def annotate(self, requests):
            answers = super().annotate(requests)
            return [AnnotationAnswer("Surprise", a.probabilities, "Surprise", None) for a in answers]

    store = tmp_path / "a.sqlite"
    run_annotation(shards, Odd(mode="exact"), store, n=1, split="test", mode="exact")
    rows = _table(store)
    assert [r[3] for r in rows] == ["exact"] * 3
    assert all(r[7] is None and "Surprise" in r[10] and r[8] == "[0.1, 0.2, 0.3, 0.4]" for r in rows)
    with pytest.raises(ValueError, match="mode='sample' but"):
        run_annotation(shards, FakeBackend(mode="exact"), store, n=1, mode="sample")


def test_other_seed_on_the_same_store_is_refused(shards, tmp_path):
    """A store written with seed 0 is not extended with another plan."""
    store = tmp_path / "a.sqlite"
    run_annotation(shards, FakeBackend(), store, n=2, split="test", seed=0)
    with pytest.raises(ValueError, match="another plan|seed 1 plans"):
        run_annotation(shards, FakeBackend(), store, n=3, split="test", seed=1)


def test_interrupt_stores_what_arrived_and_resumes(shards, tmp_path, monkeypatch):
    """Ctrl-C mid-run: answers in flight are still committed, nothing queued is asked; the re-run completes."""
    store = tmp_path / "a.sqlite"
    backend = FakeBackend(delay=0.05)
    original = backend.annotate
    calls = []

    def annotate(requests):
        calls.append(1)
        if len(calls) == 6:
            threading.Thread(target=lambda: __import__("_thread").interrupt_main()).start()
        return original(requests)

    monkeypatch.setattr(backend, "annotate", annotate)
    with pytest.raises(AnnotationInterrupted) as info:
        run_annotation(shards, backend, store, n=5, concurrency=2)
    summary = info.value.summary
    assert summary.interrupted
    assert 0 < summary.stored < 50
    with AnnotationStore(store) as db:
        assert db.count() == summary.stored == len(backend.asked)  # every answer that arrived was committed
    monkeypatch.setattr(backend, "annotate", original)
    rest = run_annotation(shards, backend, store, n=5, concurrency=2)
    assert rest.stored == 50 - summary.stored
    assert rest.remaining == 0
    assert Counter((r.uid, r.k) for r in backend.asked) == Counter({(u, k): 1 for u in _ids(shards) for k in range(5)})


def test_backend_bug_stops_the_run(shards, tmp_path):
    """An exception other than AnnotationError is not swallowed; what was answered before is kept."""

    class Broken(FakeBackend):
        def annotate(self, requests):
            if any(r.uid == "train.0002" for r in requests):
                raise RuntimeError("bug")
            return super().annotate(requests)

    store = tmp_path / "a.sqlite"
    with pytest.raises(RuntimeError, match="bug"):
        run_annotation(shards, Broken(), store, n=2)
    with AnnotationStore(store) as db:
        assert db.count() >= 1
    with pytest.raises(ValueError, match="n and concurrency"):
        run_annotation(shards, FakeBackend(), store, n=0)


def test_progress_bar_shows_done_failed_remaining_and_rate(shards, tmp_path, capsys):
    """The bar (stderr) carries done / failed / remaining and the request rate."""
    run_annotation(shards, FakeBackend(fail={("test.0001", 0)}, fail_always=True), tmp_path / "a.sqlite", n=2,
                   split="test", progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "fake fake-1" in err
    assert "done=5, failed=1, remaining=0, req_s=" in err
