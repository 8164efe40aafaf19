"""SQLite connections for the companion's catalog and synced rows.

One connection per thread (sqlite3 connections must not be shared across
threads), WAL so readers never block the writer, and synchronous=FULL because
a 200 answer tells the Pi it may forget the rows: a power cut after that must
not lose them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
BUSY_TIMEOUT_MS = 15_000
T = TypeVar("T")


def connect(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=True
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class FairLock:
    """A lock granted in arrival order (a ticket lock). Writers of this process queue here
    instead of in SQLite's busy handler, which sleeps and retries at growing intervals: with
    4 concurrent senders that made p99 20-30x p50 (issue 15). Other processes (the CLI)
    still meet the busy timeout."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


WRITERS = FairLock()


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so two writers queue instead of failing
    mid-transaction with SQLITE_BUSY on upgrade; within this process they queue in order on
    ``WRITERS`` first."""
    if not immediate:
        yield from _run(conn, "BEGIN")
        return
    with WRITERS:
        yield from _run(conn, "BEGIN IMMEDIATE")


def _run(conn: sqlite3.Connection, begin: str) -> Iterator[sqlite3.Connection]:
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo what is left of the transaction without hiding why it failed.

    On SQLITE_FULL (and a few other errors) SQLite has already rolled back by itself, so a
    plain ROLLBACK would fail with "no transaction is active" and replace the disk-full
    error (507) with a generic one (503). A COMMIT that failed leaves the transaction open:
    it must be rolled back here, or this thread's next BEGIN would fail for good."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("rollback after a failed transaction also failed: %s", exc)


class _Write(Generic[T]):
    """One caller's write, waiting to be run by whichever thread commits the next group."""

    def __init__(self, fn: Callable[[sqlite3.Connection], T]) -> None:
        self.fn = fn
        self.done = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class GroupCommit:
    """Writes of many threads committed together: one transaction, one fsync, per group.

    With synchronous=FULL every COMMIT waits for an fsync of the WAL, and on a busy disk that
    fsync is what varies (measured here: 4 ms median, 58 ms p99). Writers that queue one
    transaction each pay every fsync ahead of them in turn; here the thread whose turn comes
    (``WRITERS``, arrival order) runs every write queued so far in one transaction and commits
    once, so a waiting writer pays at most the commit in progress and its own group's.

    Each write runs inside its own SAVEPOINT: one that raises is undone alone and its caller
    gets the exception, while the others of the group are stored. A failed COMMIT (a full
    disk) fails every write of its group, none of which is stored.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._pending: list[_Write[Any]] = []

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` inside a transaction (with other threads' writes) and return its
        result once committed; its exception (or the COMMIT's) is raised here."""
        write = _Write(fn)
        with self._lock:
            self._pending.append(write)
        with WRITERS:
            if not write.done:
                with self._lock:
                    group, self._pending = self._pending, []
                self._commit(self.db.conn(), group)
        return write.result()

    @staticmethod
    def _commit(conn: sqlite3.Connection, group: list[_Write[Any]]) -> None:
        stored: list[_Write[Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in group:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                conn.execute("SAVEPOINT one_write")
                try:
                    write.value = write.fn(conn)
                # Any error belongs to the write's caller, who raises it in its own thread.
                except Exception as exc:  # noqa: BLE001
                    write.error = exc
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO one_write")
                        conn.execute("RELEASE one_write")
                    else:
                        # SQLite undid the whole transaction itself (SQLITE_FULL does): the
                        # group's earlier writes are gone for the same reason.
                        for lost in stored:
                            lost.error = exc
                        stored.clear()
                else:
                    conn.execute("RELEASE one_write")
                    stored.append(write)
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            for write in group:
                if write.error is None:
                    write.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for write in group:
                write.done = True


class Database:
    """Hands each thread its own connection to one database file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self.writes = GroupCommit(self)

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def migrate(self, schemas: Iterable[str]) -> None:
        conn = connect(self.path)
        try:
            with transaction(conn):
                for statement in schemas:
                    conn.execute(statement)
        finally:
            conn.close()

    def close_all(self) -> None:
        with self._lock:
            for conn in self._all:
                with suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()
