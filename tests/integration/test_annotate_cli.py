"""``ser-annotate run`` as a real subprocess against the local fake Gemini server: killed midway, resumed.

The Done-when test of the issue: SIGINT, SIGTERM and SIGKILL midway, then a resumed run; the store holds every
requested annotation exactly once, each with the planned persona and temperature. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from gemini_fake import FakeGemini, Received, Reply, error, malformed, ok
from shard_fixtures import CLASSES, write_test_shards

from ser_lightning.annotate.plan import annotation_plan
from ser_lightning.cli.annotate import main
from ser_lightning.data.shards.card import iter_shard_meta

pytestmark = pytest.mark.integration

N = 4
SIZES = {"train": [6, 6]}  # 12 utterances x N = 48 annotations
DELAY = 0.15  # seconds per fake answer: the run lasts a few seconds, long enough to be killed midway


def _answer(received: Received) -> Reply:
    """A deterministic answer per prompt; one prompt in 7 gets an answer that is not a class."""
    h = int(hashlib.sha256(received.text.encode()).hexdigest(), 16)
    return malformed("Hmm, hard to say.") if h % 7 == 0 else ok(f"**{CLASSES[h % len(CLASSES)]}**", delay=DELAY)


def _env(fake: FakeGemini) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("GOOGLE_API_KEY",)}
    env.update(GOOGLE_GEMINI_BASE_URL=fake.base_url, GEMINI_API_KEY="dummy-key", NO_PROXY="127.0.0.1,localhost")
    return env


def _command(shards: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "ser_lightning.cli.annotate", "run", str(shards), "--backend", "gemini",
            "--model", "fake-model", "--n", str(N), "--out", str(store), "--concurrency", "3", "--seed", "5",
            "--timeout", "10", "--attempts", "2", "--backend-option", "initial_delay=0.05", "--backend-option",
            "jitter=0", "--no-progress"]  # fmt: skip


def _rows(store: Path) -> list[tuple]:
    if not store.exists():
        return []
    with closing(sqlite3.connect(store, timeout=30)) as conn:
        try:
            return conn.execute("SELECT id, k, persona, temperature, label, raw, backend, model, mode FROM annotations"
                                ).fetchall()  # fmt: skip
        except sqlite3.OperationalError:  # the table is not created yet
            return []


def _run_until(shards: Path, store: Path, fake: FakeGemini, stop: signal.Signals, rows: int) -> tuple[int, str]:
    """Start a run, send ``stop`` once the store holds at least ``rows`` rows; returns (exit status, stderr)."""
    proc = subprocess.Popen(_command(shards, store), env=_env(fake), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_rows(store)) < rows:
            assert proc.poll() is None, f"run ended before it was killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_run_killed_midway_then_resumed(tmp_path):
    """Each interrupted run keeps what arrived; the resumed run asks only what is missing; each (id, k) once."""
    shards = write_test_shards(tmp_path / "shards", SIZES)
    ids = [m["id"] for m in iter_shard_meta(shards)]
    store = tmp_path / "ann.sqlite"
    with FakeGemini(default=_answer) as fake:
        rc, err = _run_until(shards, store, fake, signal.SIGINT, rows=6)
        assert rc == 130, err
        after_int = _rows(store)
        assert 6 <= len(after_int) < len(ids) * N
        assert fake.count == len(after_int), "SIGINT: an answer that arrived was not stored (or one was asked twice)"

        rc, err = _run_until(shards, store, fake, signal.SIGTERM, rows=len(after_int) + 4)  # a scheduler's stop
        assert rc == 130, err
        after_term = _rows(store)
        assert fake.count == len(after_term), "SIGTERM: an answer that arrived was not stored"

        rc, err = _run_until(shards, store, fake, signal.SIGKILL, rows=len(after_term) + 6)
        assert rc == -signal.SIGKILL
        after_kill = _rows(store)
        assert len(after_term) + 6 <= len(after_kill) < len(ids) * N
        assert Counter((r[0], r[1]) for r in after_kill).most_common(1)[0][1] == 1

        asked_before = fake.count
        done = subprocess.run(_command(shards, store), env=_env(fake), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        final = _rows(store)
        assert fake.count - asked_before == len(ids) * N - len(after_kill)  # only the missing ones were asked
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["stored"] == len(ids) * N - len(after_kill)
        assert summary["remaining"] == 0

    assert Counter((r[0], r[1]) for r in final) == Counter({(u, k): 1 for u in ids for k in range(N)})
    for uid, k, persona, temperature, label, raw, backend, model, mode in final:
        assert (persona, temperature) == annotation_plan(5, uid, k)
        assert (backend, model, mode) == ("gemini", "fake-model", "sample")
        assert label in CLASSES if raw.startswith("**") else label is None
    questions = {(r.text, r.body["generationConfig"]["temperature"]) for r in fake.requests}
    assert len(questions) == len(ids) * N  # a resumed run asks exactly the planned questions, never others


def test_failed_requests_are_not_stored_and_exit_1(tmp_path, monkeypatch, capsys):
    """In-process main(): 500s past the retries fail a request; exit 1; the next run asks only it and exits 0."""
    shards = write_test_shards(tmp_path / "shards", {"test": [2]})
    store = tmp_path / "ann.sqlite"
    with FakeGemini(default=ok("Neutral")) as fake:
        for key, value in _env(fake).items():
            monkeypatch.setenv(key, value)
        fake.push(error(500), error(500))  # the first request's two attempts
        argv = _command(shards, store)[3:]
        assert main([*argv, "--concurrency", "1"]) == 1  # one at a time: the first request meets both 500s
        first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (first["failed"], first["stored"], first["remaining"], first["retries"]) == (1, 2 * N - 1, 1, 1)
        assert len(_rows(store)) == 2 * N - 1
        assert main(argv) == 0
        assert len(_rows(store)) == 2 * N
        assert fake.count == 2 * N + 2
        assert main(["run", str(shards), "--backend", "qwen2-audio", "--model", "x", "--n", "1", "--out",
                     str(store), "--requests-per-second", "2"]) == 2  # fmt: skip


def test_merge_and_analyse_are_wired(tmp_path, monkeypatch, capsys):
    """merge/analyse pass the issue's arguments (and the optional annotator filters) to H3's functions."""
    import ser_lightning.annotate.analyse as analyse
    import ser_lightning.annotate.merge as merge

    calls = {}
    monkeypatch.setattr(merge, "merge_store", lambda *a, **kw: calls.setdefault("merge", (a, kw)) and {"ok": 1})
    monkeypatch.setattr(analyse, "analyse_store", lambda *a, **kw: calls.setdefault("analyse", (a, kw)) and {"ok": 2})
    assert main(["merge", "s.sqlite", "shards", "--out", "shards2", "--n", "7", "--human", "merged"]) == 0
    assert calls["merge"] == ((Path("s.sqlite"), Path("shards"), Path("shards2")),
                              {"n": 7, "human": "merged", "backend": None, "model": None, "mode": None})  # fmt: skip
    assert main(["analyse", "s.sqlite", "shards", "--out", "rep", "--model", "m"]) == 0
    assert calls["analyse"] == ((Path("s.sqlite"), Path("shards"), Path("rep")),
                                {"n": None, "seed": 0, "human": "primary", "backend": None, "model": "m",
                                 "mode": None})  # fmt: skip
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"ok": 1}, {"ok": 2}]


def test_run_merge_analyse_end_to_end(tmp_path, monkeypatch):
    """A store filled by `run` is read by the real `merge` and `analyse` (the three commands fit together)."""
    shards = write_test_shards(tmp_path / "shards", {"train": [6], "test": [3]})
    store = tmp_path / "ann.sqlite"
    with FakeGemini(default=_answer) as fake:
        for key, value in _env(fake).items():
            monkeypatch.setenv(key, value)
        assert main(_command(shards, store)[3:]) == 0
    assert main(["merge", str(store), str(shards), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "card.json").is_file()
    assert main(["analyse", str(store), str(shards), "--out", str(tmp_path / "report")]) == 0
    assert list((tmp_path / "report").glob("*.json"))
    assert list((tmp_path / "report").glob("*.png"))


def test_local_backend_exact_mode_through_run(tmp_path):
    """The run drives H1's local Qwen2-Audio backend (tiny, random) in batches: one exact row per (id, k)."""
    from qwen2_fixtures import tiny_qwen2_audio

    from ser_lightning.alm.annotator import make_backend
    from ser_lightning.annotate import AnnotationStore, run_annotation

    shards = write_test_shards(tmp_path / "shards", {"test": [5]})
    backend = make_backend("qwen2-audio", "tiny", "exact", model_and_processor=tiny_qwen2_audio(), batch_size=4)
    summary = run_annotation(shards, backend, tmp_path / "a.sqlite", n=2, split="test")
    assert summary.stored == 10
    assert summary.remaining == 0
    with AnnotationStore(tmp_path / "a.sqlite") as store:
        rows = list(store.rows())
    assert sorted((r.id, r.k) for r in rows) == sorted((f"test.{i:04d}", k) for i in range(5) for k in range(2))
    for row in rows:
        assert row.mode == "exact"
        assert len(row.probabilities) == len(CLASSES)
        assert sum(row.probabilities) == pytest.approx(1.0, abs=1e-6)


def test_usage_errors_exit_2(tmp_path, monkeypatch, caplog):
    """No API key, an unknown backend option, exact mode on gemini: a clear message and exit 2, nothing asked."""
    shards = write_test_shards(tmp_path / "shards", {"test": [1]})
    base = ["run", str(shards), "--backend", "gemini", "--model", "m", "--n", "1", "--out", str(tmp_path / "a.db")]
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    assert main(base) == 2
    assert "GEMINI_API_KEY" in caplog.text
    monkeypatch.setenv("GEMINI_API_KEY", "dummy-key")
    assert main([*base, "--backend-option", "colour=1"]) == 2
    assert "colour" in caplog.text
    assert main([*base, "--mode", "exact"]) == 2
    assert not (tmp_path / "a.db").exists()
