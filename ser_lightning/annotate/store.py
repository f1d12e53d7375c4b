"""The annotation store: one SQLite file, table ``annotations``, one row per (utterance, backend, model, mode, k).

Every answer is committed as soon as it arrives (WAL journal, one connection shared by the writer threads
under a lock), so a crash, a kill or Ctrl-C loses at most the answers still in flight, and a re-run asks
only for what :meth:`AnnotationStore.missing` lists. A row is never replaced: ``INSERT OR IGNORE`` on the
UNIQUE key keeps the first answer even when two runs race on the same store.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    id TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    k INTEGER NOT NULL CHECK (k >= 0),
    persona INTEGER NOT NULL,
    temperature REAL NOT NULL,
    label TEXT,
    probabilities TEXT,
    raw TEXT NOT NULL,
    reason TEXT,
    created TEXT NOT NULL,
    UNIQUE (id, backend, model, mode, k)
)
"""
COLUMNS = (
    "id", "backend", "model", "mode", "k", "persona", "temperature", "label", "probabilities", "raw", "reason",
    "created",
)  # fmt: skip


@dataclass(frozen=True)
class AnnotationRow:
    """One stored annotation; ``label`` is None for an answer that was not a valid class (see ``raw``, ``reason``)."""

    id: str
    backend: str
    model: str
    mode: str
    k: int
    persona: int
    temperature: float
    label: str | None
    probabilities: list[float] | None
    raw: str
    reason: str | None
    created: str


def _row(values: Sequence[Any]) -> AnnotationRow:
    fields = dict(zip(COLUMNS, values, strict=True))
    if fields["probabilities"] is not None:
        fields["probabilities"] = json.loads(fields["probabilities"])
    return AnnotationRow(**fields)


class AnnotationStore:
    """An open annotation store (created on first use); thread-safe, closed by ``close()`` or ``with``.

    Args:
        path: the SQLite file.
        readonly: open an existing store for reading only (``merge``, ``analyse``).
    """

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no annotation store (written by `ser-annotate run --out`)")
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)
        try:
            if not readonly:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")  # each commit also survives a power cut
                self._conn.execute(SCHEMA)
                self._conn.commit()
            self._conn.execute("SELECT 1 FROM annotations LIMIT 1").fetchall()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise ValueError(f"{self.path}: not an annotation store ({err})") from err

    # -- writing ---------------------------------------------------------------------------------

    def add(self, **fields: Any) -> bool:
        """Store and commit one annotation (the columns but ``created`` as keywords); False when already stored."""
        return self.add_many([fields]) == 1

    def add_many(self, rows: Iterable[dict[str, Any]]) -> int:
        """Store and commit annotations (dicts of the columns but ``created``) in one transaction; returns rows added.

        ``probabilities`` is a list of floats or None; ``reason`` and ``probabilities`` may be left out.
        """
        created = datetime.now(UTC).isoformat(timespec="milliseconds")
        values = []
        for row in rows:
            probabilities = row.get("probabilities")
            fields = {**row, "reason": row.get("reason"), "created": created}
            fields["probabilities"] = None if probabilities is None else json.dumps([float(p) for p in probabilities])
            values.append(tuple(fields[c] for c in COLUMNS))
        sql = f"INSERT OR IGNORE INTO annotations ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        with self._lock:
            conn = self._connection()
            before = conn.total_changes
            with conn:  # one transaction, committed on exit
                conn.executemany(sql, values)
            return conn.total_changes - before

    # -- reading ---------------------------------------------------------------------------------

    def missing(self, ids: Iterable[str], n: int, backend: str, model: str, mode: str) -> list[tuple[str, int]]:
        """The ``(id, k)`` with ``k < n`` not yet stored for this backend, model and mode, in ``ids`` order then k."""
        done = self.done_keys(backend, model, mode, n)
        return [(uid, k) for uid in dict.fromkeys(ids) for k in range(n) if (uid, k) not in done]

    def done_keys(self, backend: str, model: str, mode: str, n: int | None = None) -> set[tuple[str, int]]:
        """The stored ``(id, k)`` of a backend, model and mode (``k < n`` when ``n`` is given)."""
        sql = "SELECT id, k FROM annotations WHERE backend = ? AND model = ? AND mode = ?"
        params: list[Any] = [backend, model, mode]
        if n is not None:
            sql += " AND k < ?"
            params.append(n)
        return {(uid, k) for uid, k in self._query(sql, params)}

    def rows(
        self, backend: str | None = None, model: str | None = None, mode: str | None = None, n: int | None = None
    ) -> Iterator[AnnotationRow]:
        """Stored rows (filtered by those given; ``n``: only ``k < n``, the first n of each utterance), by id then k."""
        where, params = [], []
        for column, value in (("backend", backend), ("model", model), ("mode", mode)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if n is not None:
            where.append("k < ?")
            params.append(n)
        sql = f"SELECT {', '.join(COLUMNS)} FROM annotations"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += " ORDER BY backend, model, mode, id, k"
        for values in self._query(sql, params):
            yield _row(values)

    def by_id(
        self, backend: str | None = None, model: str | None = None, mode: str | None = None, n: int | None = None
    ) -> dict[str, list[AnnotationRow]]:
        """:meth:`rows` grouped by utterance id (each list ordered by backend, model, mode, k)."""
        grouped: dict[str, list[AnnotationRow]] = {}
        for row in self.rows(backend, model, mode, n):
            grouped.setdefault(row.id, []).append(row)
        return grouped

    def sources(self) -> list[tuple[str, str, str, int]]:
        """``(backend, model, mode, rows)`` of every annotator in the store."""
        sql = "SELECT backend, model, mode, COUNT(*) FROM annotations GROUP BY backend, model, mode ORDER BY 1, 2, 3"
        return [tuple(r) for r in self._query(sql, [])]

    def count(self) -> int:
        """Rows in the store."""
        return int(self._query("SELECT COUNT(*) FROM annotations", [])[0][0])

    # -- plumbing --------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"{self.path}: the annotation store is closed")
        return self._conn

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection (later writes raise ``ValueError``)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
