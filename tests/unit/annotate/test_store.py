"""The SQLite annotation store: schema, uniqueness, commits visible at once, missing (id, k), reading helpers."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from ser_lightning.annotate.store import AnnotationStore

KEY = {"backend": "gemini", "model": "m1", "mode": "sample"}


def _row(uid: str, k: int, label: str | None = "Anger", **extra) -> dict:
    return {"id": uid, **KEY, "k": k, "persona": k % 5, "temperature": 0.25, "label": label, "raw": label or "?",
            **extra}  # fmt: skip


def test_schema_columns_unique_key_and_wal(tmp_path):
    """The table has exactly the issue's columns, the UNIQUE key, and the file is in WAL mode."""
    path = tmp_path / "s.sqlite"
    AnnotationStore(path).close()
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(annotations)")]
    assert columns == ["id", "backend", "model", "mode", "k", "persona", "temperature", "label", "probabilities",
                       "raw", "reason", "created"]  # fmt: skip
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'annotations'").fetchone()
    assert "UNIQUE (id, backend, model, mode, k)" in sql
    conn.execute("INSERT INTO annotations VALUES ('a','gemini','m1','sample',0,0,0.1,NULL,NULL,'x',NULL,'t')")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO annotations VALUES ('a','gemini','m1','sample',0,1,0.2,'Anger',NULL,'y',NULL,'t')")
    conn.close()


def test_add_is_committed_at_once_and_never_replaced(tmp_path):
    """Another connection sees a row as soon as add returns; a second answer for the same key is ignored."""
    path = tmp_path / "s.sqlite"
    with AnnotationStore(path) as store:
        assert store.add(**_row("u1", 0, "Anger"))
        other = sqlite3.connect(path)
        assert other.execute("SELECT id, k, label FROM annotations").fetchall() == [("u1", 0, "Anger")]
        assert not store.add(**_row("u1", 0, "Sadness"))
        assert store.add(**_row("u1", 0, "Sadness", mode="exact", probabilities=[0.25, 0.75]))
        assert other.execute("SELECT label FROM annotations WHERE mode = 'sample'").fetchall() == [("Anger",)]
        assert store.count() == 2
        exact = next(store.rows(mode="exact"))
        assert exact.probabilities == [0.25, 0.75]
        assert exact.created.endswith("+00:00")
        other.close()


def test_missing_and_resume(tmp_path):
    """missing lists (id, k < n) absent for this backend/model/mode only, in id order then k; survives reopening."""
    path = tmp_path / "s.sqlite"
    with AnnotationStore(path) as store:
        store.add_many([_row("b", 1), _row("a", 0, None, reason="no class"), _row("a", 2)])
        store.add(**{**_row("b", 0), "model": "other"})
    with AnnotationStore(path) as store:
        assert store.missing(["b", "a", "b"], 3, **KEY) == [("b", 0), ("b", 2), ("a", 1)]
        assert store.missing(["a"], 2, **KEY) == [("a", 1)]
        assert store.missing(["a"], 2, "gemini", "other", "sample") == [("a", 0), ("a", 1)]
        assert store.done_keys(**KEY) == {("a", 0), ("a", 2), ("b", 1)}


def test_reading_helpers_first_n_per_id(tmp_path):
    """rows/by_id filter by annotator and keep k < n, ordered by id then k; sources counts rows per annotator."""
    with AnnotationStore(tmp_path / "s.sqlite") as store:
        store.add_many([_row("b", 0), _row("a", 3), _row("a", 0), _row("a", 1, None, reason="bad")])
        store.add(**{**_row("a", 0), "backend": "qwen2-audio"})
        grouped = store.by_id(**KEY, n=2)
        assert {uid: [(r.k, r.label) for r in rows] for uid, rows in grouped.items()} == {
            "a": [(0, "Anger"), (1, None)],
            "b": [(0, "Anger")],
        }
        assert [r.reason for r in grouped["a"]] == [None, "bad"]
        assert store.sources() == [("gemini", "m1", "sample", 4), ("qwen2-audio", "m1", "sample", 1)]


def test_concurrent_writers_store_each_key_once(tmp_path):
    """Threads adding overlapping keys leave every key exactly once."""
    with AnnotationStore(tmp_path / "s.sqlite") as store:
        def work(offset: int) -> None:
            for k in range(50):
                store.add(**_row("u", (k + offset) % 60))

        threads = [threading.Thread(target=work, args=(o,)) for o in (0, 5, 10, 20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(k for _, k in store.done_keys(**KEY)) == list(range(60))
        assert store.count() == 60


def test_readonly_and_bad_files(tmp_path):
    """A missing store cannot be opened for reading; a non-SQLite file is a clear error; a closed store refuses."""
    with pytest.raises(FileNotFoundError, match="no annotation store"):
        AnnotationStore(tmp_path / "none.sqlite", readonly=True)
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database" * 100)
    with pytest.raises(ValueError, match="not an annotation store"):
        AnnotationStore(bad)
    store = AnnotationStore(tmp_path / "s.sqlite")
    store.add(**_row("a", 0))
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.add(**_row("a", 1))
    with AnnotationStore(tmp_path / "s.sqlite", readonly=True) as ro:
        assert ro.count() == 1
