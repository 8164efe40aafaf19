"""Issue 15 item 4: a full disk during sync answers 507, never a 503 that hides it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chi_companion.core.db import Database, FairLock, transaction
from chi_companion.core.http_errors import to_api_error
from chi_companion.sync.request import validate
from chi_companion.sync.store import SCHEMA, SyncStore

from tests.companion_process import Companion
from tests.sync_payloads import realtime_rows, sync_body
from tests.tmpfs import mounted_tmpfs


def _full_database(tmp_path: Path) -> tuple[Database, sqlite3.Connection]:
    db = Database(tmp_path / "companion.db")
    db.migrate(SCHEMA)
    conn = db.conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    # The file may grow by a few pages only: SQLite answers SQLITE_FULL, as on a full disk.
    conn.execute(f"PRAGMA max_page_count={pages + 4}")
    return db, conn


def test_disk_full_during_sync_is_507_and_stores_nothing(tmp_path: Path) -> None:
    db, conn = _full_database(tmp_path)
    body = sync_body("realtime_data", realtime_rows(1, 2000))
    req = validate(json.loads(json.dumps(body)), 0)
    with pytest.raises(sqlite3.Error) as caught:
        SyncStore(30, 1000).store(conn, req)
    # The disk-full error itself, not "cannot rollback - no transaction is active".
    assert "full" in str(caught.value), caught.value
    answer = to_api_error(caught.value)
    assert answer.status_code == 507 and answer.error == "insufficient storage"
    assert answer.headers["Retry-After"]
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM synced_rows").fetchone()[0] == 0
    # The thread's connection still works once there is room again.
    conn.execute("PRAGMA max_page_count=1073741823")
    SyncStore(30, 1000).store(conn, req)
    assert conn.execute("SELECT count(*) FROM synced_rows").fetchone()[0] == 2000
    db.close_all()


def test_a_failed_commit_does_not_leave_the_transaction_open(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    conn = db.conn()
    conn.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), transaction(conn):
        conn.execute("INSERT INTO c VALUES (1)")  # checked only at COMMIT
    assert not conn.in_transaction
    with transaction(conn):
        conn.execute("INSERT INTO p VALUES (1)")
    db.close_all()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "tiny", "1m") as mount:
        yield mount


def test_a_really_full_disk_during_sync_is_507(tiny_tmpfs: Path) -> None:
    # On a full file system SQLite rolls the transaction back itself; the ROLLBACK that
    # followed used to fail ("no transaction is active") and turn 507 into 503.
    db = Database(tiny_tmpfs / "companion.db")
    db.migrate(SCHEMA)
    conn = db.conn()
    # A small page cache spills to the WAL during the upsert, so the disk fills mid-transaction
    # (not only at COMMIT), as with a body larger than the cache on the server.
    conn.execute("PRAGMA cache_size=16")
    req = validate(json.loads(json.dumps(sync_body("realtime_data", realtime_rows(1, 8000)))), 0)
    with pytest.raises(sqlite3.Error) as caught:
        SyncStore(30, 1000).store(conn, req)
    assert "full" in str(caught.value), caught.value
    assert to_api_error(caught.value).status_code == 507
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM synced_rows").fetchone()[0] == 0
    db.close_all()


# ------------------------------------------------- item 4: in-flight uploads reserve room

UPLOAD = 12 * 1024 * 1024


def _start_upload(port: int, key: str, device: str, n: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"PUT /api/v1/backups/{device}/database/obd{n}.db HTTP/1.1\r\nHost: chi-srv-01\r\n"
        f"X-API-Key: {key}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {UPLOAD}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + b"x")
    return sock


def _finish_upload(sock: socket.socket) -> int:
    # Refused before the body: the server may close early; its answer is already waiting.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(b"x" * (UPLOAD - 1))
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    return int(reply.split(b" ", 2)[1])


@pytest.mark.slow(seconds=8)
def test_three_concurrent_uploads_against_room_for_two(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "64m") as disk:
        # About 62 MiB free once the server has started: room for two 12 MiB uploads above
        # the minimum (62 - 24 = 38 > 32), not three (62 - 36 = 26 < 32).
        comp = Companion(disk, {"backups": {"min_free_bytes": 32 * 1024 * 1024}}).start()
        try:
            # All three are in flight (headers read, space checked) before any body arrives.
            socks = [_start_upload(comp.port, comp.key, comp.device, n) for n in range(3)]
            time.sleep(1.0)
            statuses = sorted(_finish_upload(s) for s in socks)
            assert statuses == [201, 201, 507], statuses
            status, _, body = comp.request("GET", "/api/v1/backups")
            assert status == 200 and len(body["backups"]) == 2
            st = os.statvfs(comp.data_dir)
            assert st.f_bavail * st.f_frsize >= 32 * 1024 * 1024
        finally:
            comp.stop()


# ------------------------------------------- item 11: writers queue in arrival order


def test_writers_are_served_in_arrival_order() -> None:
    lock = FairLock()
    order: list[int] = []
    started: list[threading.Thread] = []
    with lock:  # held while the others queue up one after another
        for n in range(8):
            thread = threading.Thread(target=lambda n=n: _take(lock, order, n))
            thread.start()
            started.append(thread)
            time.sleep(0.05)  # n arrives before n + 1
    for thread in started:
        thread.join(10)
    assert order == list(range(8))


def _take(lock: FairLock, order: list[int], n: int) -> None:
    with lock:
        order.append(n)
