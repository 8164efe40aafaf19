"""Slow clients cost nothing (issue 15 item 2): a deadline for the request head, a minimum
body rate, and a limit on connections per address, against a real server on loopback.

127.0.0.2 plays the attacker on the LAN and 127.0.0.1 the Pi (both reach the server, which
listens on 127.0.0.1). The Pi's requests are timed: the Pi has 20 s in total for its last
flush before a shutdown, and every second a stalled server takes is one it does not have."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chi_companion.core.slow_clients import MAX_HEAD_BYTES, BodyPace, PacedUnreader

from tests.companion_process import Companion
from tests.sync_payloads import realtime_rows, sync_body

ATTACKER = "127.0.0.2"
API = "/api/v1"
PI_LATENCY_LIMIT = 1.0  # seconds, for /health and a 500-row sync while under attack


def connect_from(comp: Companion, source: str, timeout: float = 30) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", comp.port))
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; b"" if it closed (or reset) silently."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def status_of(reply: bytes) -> int | None:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else None


def json_of(reply: bytes) -> Any:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


def pi_round(comp: Companion, first_id: int) -> tuple[float, float]:
    """One /health and one 500-row sync from 127.0.0.1; their latencies in seconds."""
    started = time.perf_counter()
    status, _, _ = comp.request("GET", f"{API}/health", key=False, timeout=10)
    health = time.perf_counter() - started
    assert status == 200
    body = sync_body("realtime_data", realtime_rows(first_id, 500))
    started = time.perf_counter()
    status, _, reply = comp.request("POST", f"{API}/sync", body, timeout=10)
    sync = time.perf_counter() - started
    assert status == 200, reply
    return health, sync


class Attack:
    """``count`` connections from ATTACKER: half send nothing, half one byte of a request
    head every ``drip`` seconds. Records, per connection, what the server answered and when
    it closed (seconds after connecting)."""

    def __init__(self, comp: Companion, count: int, drip: float = 5.0) -> None:
        self.comp = comp
        self.drip = drip
        self.socks = [connect_from(comp, ATTACKER) for _ in range(count)]
        self.opened = time.monotonic()
        self.closed_after: dict[int, float] = {}
        self.replies: dict[int, bytes] = {}
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i, i % 2 == 1), daemon=True)
            for i in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, index: int, drips: bool) -> None:
        sock = self.socks[index]
        head = b"GET /api/v1/ping HTTP/1.1\r\nHost: chi-srv-01\r\nX-Slow: " + b"a" * 1000
        sent = 0
        sock.settimeout(self.drip if drips else 30)
        reply = b""
        while not self.stop.is_set():
            if drips:
                try:
                    sock.send(head[sent : sent + 1])
                    sent += 1
                except OSError:
                    pass  # closed by the server: the read below sees it
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed_after[index] = time.monotonic() - self.opened
                break
            reply += chunk
        self.replies[index] = reply

    def finish(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(max(0.0, self.opened + timeout - time.monotonic()))
        self.stop.set()
        for sock in self.socks:
            sock.close()


@pytest.mark.slow(seconds=16)
@pytest.mark.parametrize("limit", [64, 8], ids=["all-50-admitted", "default-limit-8"])
def test_fifty_slow_connections_cost_the_pi_nothing(
    make_companion: Callable[..., Companion], limit: int
) -> None:
    # threads = 8 (the test harness): 50 connections are far more than the request threads,
    # so if an idle or dripping connection held a thread the Pi's requests would wait.
    comp = make_companion(server={"max_connections_per_source": limit})
    baseline = pi_round(comp, 1)
    attack = Attack(comp, 50)
    latencies: list[tuple[float, float]] = []
    try:
        time.sleep(0.5)  # every attacker connection is open and waiting now
        while time.monotonic() - attack.opened < 8.5:  # the header deadline is 10 s
            latencies.append(pi_round(comp, 1 + 500 * len(latencies)))
            time.sleep(0.3)
    finally:
        attack.finish(timeout=14)
    worst_health = max(h for h, _ in latencies)
    worst_sync = max(s for _, s in latencies)
    print(
        f"baseline health {baseline[0]:.3f}s sync {baseline[1]:.3f}s; under attack "
        f"({len(latencies)} rounds) worst health {worst_health:.3f}s sync {worst_sync:.3f}s"
    )
    assert len(latencies) >= 5
    assert worst_health < PI_LATENCY_LIMIT
    assert worst_sync < PI_LATENCY_LIMIT

    refused = [i for i, r in attack.replies.items() if status_of(r) == 429]
    timed_out = [i for i, r in attack.replies.items() if status_of(r) == 408]
    assert len(refused) == 50 - min(limit, 50)
    assert len(timed_out) == min(limit, 50)
    assert sorted(refused + timed_out) == list(range(50))
    for i in refused:
        assert json_of(attack.replies[i])["error"] == "too many requests"
        assert b"Retry-After: 1\r\n" in attack.replies[i]
        assert attack.closed_after[i] < 3
    for i in timed_out:
        # Idle and dripping alike are cut off by the 10 s header deadline (checked about once
        # a second), never earlier: the request timeout (30 s) is for gaps between bytes.
        assert json_of(attack.replies[i])["error"] == "request timeout"
        assert 9.5 <= attack.closed_after[i] <= 12.5, attack.closed_after[i]


def test_connections_over_the_limit_get_429_and_the_count_never_leaks(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(server={"max_connections_per_source": 8})
    ping = (
        f"GET {API}/ping HTTP/1.1\r\nHost: x\r\nX-API-Key: {comp.key}\r\nConnection: close\r\n\r\n"
    ).encode()

    def fill_then_check_ninth() -> None:
        held = [connect_from(comp, ATTACKER) for _ in range(8)]
        try:
            for sock in held[:4]:
                sock.sendall(b"GET /api/v1/ping HTTP/1.1\r\n")  # half a head
            ninth = connect_from(comp, ATTACKER)
            ninth.sendall(ping)
            reply = read_reply(ninth)
            ninth.close()
            assert status_of(reply) == 429, reply
            # Another address is not affected.
            assert comp.request("GET", f"{API}/ping")[0] == 200
        finally:
            for sock in held:
                sock.close()

    def served() -> int | None:
        sock = connect_from(comp, ATTACKER)
        sock.sendall(ping)
        reply = read_reply(sock)
        sock.close()
        return status_of(reply)

    fill_then_check_ninth()
    # The held connections' places come back once the server sees them closed.
    deadline = time.monotonic() + 5
    while served() != 200:
        assert time.monotonic() < deadline, "the address stayed over its limit"
        time.sleep(0.1)

    # Every way a connection can end gives its place back: served, refused by the app,
    # malformed, a head too large, the client vanishing mid-head or mid-body.
    endings = [
        ping,
        ping.replace(comp.key.encode(), b"wrong-key-wrong-key"),
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 10),
        b"GET /api/v1/ping HTTP/1.1\r\nHo",
        (
            f"POST {API}/sync HTTP/1.1\r\nHost: x\r\nX-API-Key: {comp.key}\r\n"
            'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"dev'
        ).encode(),
    ]
    for _ in range(5):
        for data in endings:
            sock = connect_from(comp, ATTACKER)
            with contextlib.suppress(OSError):  # a server that already answered and closed
                sock.sendall(data)
            sock.close()
    time.sleep(1.5)  # the server notices the last closes on its next turns
    fill_then_check_ninth()


def test_a_head_that_never_ends_is_431_without_waiting(companion: Companion) -> None:
    sock = connect_from(companion, ATTACKER)
    started = time.monotonic()
    with contextlib.suppress(OSError):
        sock.sendall(b"GET /api/v1/ping HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1))
    reply = read_reply(sock)
    sock.close()
    assert status_of(reply) == 431
    assert time.monotonic() - started < 3


def test_a_request_with_bare_line_feeds_is_answered_at_once(companion: Companion) -> None:
    sock = connect_from(companion, "127.0.0.1")
    started = time.monotonic()
    sock.sendall(b"GET /api/v1/ping HTTP/1.1\nHost: x\n\n")
    reply = read_reply(sock)
    sock.close()
    # Judged (by gunicorn's parser, then the app) as soon as the head looks complete, not
    # left waiting for a CRLF CRLF until the header deadline.
    status = status_of(reply)
    assert status is not None and 400 <= status < 500, reply
    assert time.monotonic() - started < 3


# ------------------------------------------------------------------------- body rate


def send_slowly(sock: socket.socket, data: bytes, piece: int, every: float) -> None:
    """Send ``piece`` bytes every ``every`` seconds; stop as soon as the server answers, as
    curl does (an answer before the whole body was sent is a refusal)."""
    for offset in range(0, len(data), piece):
        if select.select([sock], [], [], 0)[0]:
            return
        try:
            sock.sendall(data[offset : offset + piece])
        except OSError:
            return
        time.sleep(every)


def slow_put(comp: Companion, data: bytes, piece: int, every: float) -> tuple[int, Any, float]:
    """PUT a backup sending ``piece`` bytes every ``every`` seconds; (status, JSON, seconds)."""
    sock = connect_from(comp, "127.0.0.1", timeout=60)
    head = (
        f"PUT {API}/backups/{comp.device}/database/slow.db HTTP/1.1\r\nHost: x\r\n"
        f"X-API-Key: {comp.key}\r\nContent-Type: application/octet-stream\r\n"
        f"X-Content-SHA256: {hashlib.sha256(data).hexdigest()}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    sock.sendall(head)
    send_slowly(sock, data, piece, every)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    payload = json.loads(resp.read() or b"null")
    sock.close()
    return resp.status, payload, time.monotonic() - started


def temp_files(comp: Companion) -> list[Path]:
    return [p for p in (comp.data_dir / "backups").rglob(".upload-*") if p.is_file()]


@pytest.fixture
def paced(make_companion: Callable[..., Companion]) -> Companion:
    # 2000 B/s after 1 s of grace: the rule's shape at a scale a test can wait for.
    return make_companion(
        server={"min_body_bytes_per_second": 2000, "body_grace_seconds": 1},
        backups={"min_free_bytes": 0},
    )


@pytest.mark.slow(seconds=5)
def test_a_slow_but_honest_upload_succeeds(paced: Companion) -> None:
    data = os.urandom(24_000)
    status, body, took = slow_put(paced, data, piece=3000, every=0.5)  # ~6000 B/s
    assert status == 201, body
    assert took > 3.5  # it really was slow
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)


@pytest.mark.slow(seconds=5)
def test_an_upload_below_the_minimum_rate_is_408_and_leaves_nothing(paced: Companion) -> None:
    data = os.urandom(100_000)
    status, body, took = slow_put(paced, data, piece=500, every=0.5)  # ~1000 B/s
    assert status == 408, body
    assert body["error"] == "request timeout"
    # 1 s grace + 2000 B/s owed against 1000 B/s sent: refused after about 2 s of waiting.
    assert took < 6
    assert temp_files(paced) == []
    status, _, listing = paced.request("GET", f"{API}/backups")
    assert status == 200 and listing["backups"] == []


@pytest.mark.slow(seconds=5)
def test_a_sync_body_below_the_minimum_rate_is_408_and_stores_nothing(paced: Companion) -> None:
    body = json.dumps(sync_body("realtime_data", realtime_rows(1, 100))).encode()
    sock = connect_from(paced, "127.0.0.1")
    sock.sendall(
        (
            f"POST {API}/sync HTTP/1.1\r\nHost: x\r\nX-API-Key: {paced.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
    )
    send_slowly(sock, body, 400, 0.5)  # 800 B/s
    reply = read_reply(sock)
    sock.close()
    assert status_of(reply) == 408, reply[:300]
    assert json_of(reply)["error"] == "request timeout"
    conn = sqlite3.connect(paced.data_dir / "companion.db")
    try:
        assert conn.execute("SELECT count(*) FROM synced_rows").fetchone()[0] == 0
    finally:
        conn.close()


# ----------------------------------------------------------------- the reader alone


def test_the_server_being_slow_is_not_the_clients_fault() -> None:
    """Only time spent waiting for the client counts: a body that arrived at once but is
    read late (the database was busy) is read in full."""
    server, client = socket.socketpair()
    try:
        client.sendall(b"x" * 5000)
        reader = PacedUnreader(server, 5.0, time.monotonic() + 5, BodyPace(1000, 0.2))
        reader.start_body()
        time.sleep(1.0)  # the app is busy: 1 s > grace, and 0 bytes read so far
        got = b""
        while len(got) < 5000:
            got += reader.chunk(5000 - len(got))
        assert got == b"x" * 5000
        assert reader.waited < 0.5
    finally:
        server.close()
        client.close()


def test_a_dripping_body_times_out_and_an_honest_one_does_not() -> None:
    def read_with_sender(rate: float) -> tuple[int, bool]:
        server, client = socket.socketpair()
        stop = threading.Event()

        def send() -> None:
            while not stop.is_set():
                client.send(b"y" * int(rate / 10))
                time.sleep(0.1)

        sender = threading.Thread(target=send, daemon=True)
        reader = PacedUnreader(server, 5.0, time.monotonic() + 5, BodyPace(1000, 0.3))
        reader.start_body()
        sender.start()
        got, timed_out = 0, False
        started = time.monotonic()
        try:
            while time.monotonic() - started < 2.5:
                got += len(reader.chunk(65536))
        except TimeoutError:
            timed_out = True
        finally:
            stop.set()
            sender.join()
            server.close()
            client.close()
        return got, timed_out

    _, timed_out = read_with_sender(300)
    assert timed_out
    got, timed_out = read_with_sender(3000)
    assert not timed_out and got > 5000
