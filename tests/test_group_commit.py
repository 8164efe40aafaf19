"""Group commit (issue 15 item 11): the writes waiting for the writer lock share one
transaction, yet each is stored or refused on its own, and a failed COMMIT stores none."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chi_companion.core.db import WRITERS, Database


def _db(tmp_path: Path) -> Database:
    db = Database(tmp_path / "g.db")
    db.migrate(["CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)"])
    return db


def _grouped(db: Database, writes: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """Run ``writes`` from one thread each, all queued while the writer lock is held, so the
    first thread served commits them as one group; each thread's result or exception."""
    results: list[Any] = [None] * len(writes)

    def run(i: int) -> None:
        try:
            results[i] = db.writes.run(writes[i])
        except Exception as exc:  # noqa: BLE001 - the test looks at what each caller got
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writes))]
    with WRITERS:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(db.writes._pending) < len(writes) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(db.writes._pending) == len(writes)
    for thread in threads:
        thread.join(10)
    return results


def _insert(n: int) -> Callable[[sqlite3.Connection], int]:
    def write(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (?, 'x')", (n,))
        return n

    return write


def _stored(db: Database) -> list[int]:
    return [r[0] for r in db.conn().execute("SELECT n FROM t ORDER BY n")]


def test_a_refused_write_leaves_the_others_of_its_group_stored(tmp_path: Path) -> None:
    db = _db(tmp_path)

    def refused(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (100, 'half written')")
        raise ValueError("refused after writing")

    results = _grouped(db, [_insert(1), refused, _insert(2), _insert(1), _insert(3)])
    assert results[0] == 1 and results[2] == 2 and results[4] == 3
    assert isinstance(results[1], ValueError)
    assert isinstance(results[3], sqlite3.IntegrityError), "its own error, not the group's"
    assert _stored(db) == [1, 2, 3], "nothing of the refused writes, all of the others"
    assert not db.conn().in_transaction
    db.close_all()


def test_a_full_disk_mid_group_answers_each_caller_truly(tmp_path: Path) -> None:
    db = _db(tmp_path)
    pages = db.conn().execute("PRAGMA page_count").fetchone()[0]

    def sized(n: int, size: int) -> Callable[[sqlite3.Connection], int]:
        def write(c: sqlite3.Connection) -> int:
            # The leader's connection runs the whole group: each write sets the limit on it.
            c.execute(f"PRAGMA max_page_count={pages + 3}")
            c.execute("INSERT INTO t VALUES (?, ?)", (n, "y" * size))
            return n

        return write

    results = _grouped(db, [sized(1, 10), sized(2, 40_000), sized(3, 10)])
    assert isinstance(results[1], sqlite3.Error) and "full" in str(results[1]), results
    stored = _stored(db)
    assert 2 not in stored
    # Whether SQLite undid only the statement or the whole transaction, a caller told "stored"
    # finds its row, and one told it failed finds none.
    for n, result in ((1, results[0]), (3, results[2])):
        assert (n in stored) == (result == n), (n, result, stored)
    db.close_all()


def test_a_failed_commit_fails_every_write_of_its_group(tmp_path: Path) -> None:
    db = Database(tmp_path / "c.db")
    db.migrate(
        [
            "CREATE TABLE p (id INTEGER PRIMARY KEY)",
            "CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)",
        ]
    )

    def parent(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO p VALUES (1)")
        return "stored"

    def orphan(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO c VALUES (99)")  # checked only at COMMIT
        return "stored"

    results = _grouped(db, [parent, orphan])
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert db.conn().execute("SELECT count(*) FROM p").fetchone()[0] == 0
    assert not db.conn().in_transaction
    # Writes go on working after the failed group.
    assert db.writes.run(parent) == "stored"
    db.close_all()


@pytest.mark.parametrize("writers", [8])
def test_concurrent_writers_all_get_their_own_result(tmp_path: Path, writers: int) -> None:
    db = _db(tmp_path)
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        for k in range(20):
            n = i * 100 + k
            results[n] = db.writes.run(_insert(n))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {n: n for n in results} and len(results) == writers * 20
    assert len(_stored(db)) == writers * 20
    db.close_all()
