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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)
BUSY_TIMEOUT_MS = 15_000


def connect(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=True
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so two writers queue on the
    busy timeout instead of failing mid-transaction with SQLITE_BUSY on upgrade."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
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


class Database:
    """Hands each thread its own connection to one database file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

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
