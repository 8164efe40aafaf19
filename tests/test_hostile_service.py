"""Issue 15, service side: what a stolen device key or a hostile LAN host can send must not
poison the derived data, kill a background thread, or learn what other devices hold."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.companion_process import Companion, exchange, free_port
from tests.sync_payloads import realtime_rows, sync_body

MakeCompanion = Callable[..., Companion]
# 2**70 as JSON text: Python would send it as an exact integer, which is the point.
HOSTILE_DRIVE_IDS: list[Any] = [1.5, 1e300, "zz", 2**70, True, [1], {"a": 1}]


# --------------------------------------------------------------------------- item 1: sync


@pytest.mark.parametrize("drive_id", HOSTILE_DRIVE_IDS, ids=repr)
def test_sync_refuses_a_drive_id_that_is_not_a_64_bit_integer(
    module_companion: Companion, drive_id: Any
) -> None:
    rows = realtime_rows(1, 3, drive_id=1)
    rows[2]["drive_id"] = drive_id
    status, _, body = module_companion.request(
        "POST", "/api/v1/sync", sync_body("realtime_data", rows)
    )
    assert status == 422, body
    assert "tables.realtime_data.rows[2].drive_id" in body["detail"]
    assert module_companion.request("GET", "/api/v1/sync/status")[2]["tables"] == {}


@pytest.mark.parametrize("field", ["timestamp", "created_at"])
def test_sync_refuses_a_timestamp_that_is_not_a_string(
    module_companion: Companion, field: str
) -> None:
    rows = realtime_rows(1, 2)
    rows[1][field] = {"$date": 1}
    status, _, body = module_companion.request(
        "POST", "/api/v1/sync", sync_body("realtime_data", rows)
    )
    assert status == 422, body
    assert f"rows[1].{field}" in body["detail"]


def test_sync_stores_an_integral_float_drive_id_as_an_integer(companion: Companion) -> None:
    rows = realtime_rows(1, 2, drive_id=1)
    rows[0]["drive_id"] = 5.0
    rows[1]["drive_id"] = None
    status, _, body = companion.request("POST", "/api/v1/sync", sync_body("realtime_data", rows))
    assert status == 200, body
    conn = sqlite3.connect(companion.data_dir / "companion.db")
    try:
        got = conn.execute(
            "SELECT row_id, typeof(drive_id), drive_id FROM synced_rows ORDER BY row_id"
        ).fetchall()
    finally:
        conn.close()
    assert got == [(1, "integer", 5), (2, "null", None)]


# ------------------------------------------------- item 1: a poisoned row already in SQLite


def _process_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (gunicorn's master and its worker)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _auto_analyses(comp: Companion, drive_id: int) -> list[dict[str, Any]]:
    status, _, body = comp.request("GET", f"/api/v1/analyses?driveId={drive_id}")
    assert status == 200, body
    return list(body["analyses"])


@pytest.mark.slow(seconds=12)
@pytest.mark.parametrize("drive_id", [1.5, 1e300, "zz", 2**70], ids=repr)
def test_a_hostile_drive_id_in_the_database_stops_no_analysis(
    make_companion: MakeCompanion, drive_id: Any
) -> None:
    # Nothing listens on the Ollama port: the jobs only need to be queued.
    comp = make_companion(
        ollama={"url": f"http://127.0.0.1:{free_port()}", "poll_seconds": 5},
        analysis={"auto": True, "quiet_minutes": 0.01},
    )
    comp.stop()
    # Written the way an old release or a hand edit could have: straight into SQLite.
    doc = json.dumps({"id": 900, "parameter_name": "RPM", "value": 1.0})[:-1]
    doc += f', "drive_id": {json.dumps(drive_id)}}}'
    conn = sqlite3.connect(comp.data_dir / "companion.db")
    try:
        with conn:
            conn.execute(
                "INSERT INTO synced_rows (device_id, table_name, row_id, doc, received_at) "
                "VALUES (?, 'realtime_data', 900, ?, '2026-01-01T00:00:00Z')",
                (comp.device, doc),
            )
            conn.execute(
                "INSERT INTO table_stats VALUES (?, 'realtime_data', 1, 900, "
                "'2026-01-01T00:00:00Z')",
                (comp.device,),
            )
    finally:
        conn.close()
    comp.start()
    # A drive synced after start, numbered above the poisoned one (except for text, which
    # SQLite sorts after every number), is still analysed.
    rows = realtime_rows(1, 50, drive_id=7)
    assert comp.request("POST", "/api/v1/sync", sync_body("realtime_data", rows))[0] == 200
    deadline = time.monotonic() + 8
    while not _auto_analyses(comp, 7):
        assert time.monotonic() < deadline, "drive 7 was never queued for analysis"
        time.sleep(0.2)
    # And the scheduler is idle, not spinning on the bad row.
    assert comp.proc is not None
    before = _process_cpu_seconds(comp.proc.pid)
    time.sleep(2.0)
    used = _process_cpu_seconds(comp.proc.pid) - before
    assert used < 0.5, f"the companion used {used:.2f} s of CPU in 2 s while idle"
    status, _, health = comp.request("GET", "/api/v1/health", key=comp.operator_key)
    assert status == 200
    assert health["components"]["background"] == {"status": "ok"}


# ------------------------------------------------------ item 7: say little to strangers


def test_health_without_a_key_says_only_status_and_version(companion: Companion) -> None:
    status, _, body = companion.request("GET", "/api/v1/health", key=False)
    assert status == 200
    assert set(body) == {"status", "version"}


def test_health_with_a_wrong_key_is_401(companion: Companion) -> None:
    status, _, body = companion.request("GET", "/api/v1/health", key="not-a-key")
    assert status == 401 and body["error"] == "unauthorized"


def test_health_shows_a_device_only_its_own_entries(companion: Companion) -> None:
    status, _, body = companion.request("GET", "/api/v1/health")
    assert status == 200
    assert set(body["devices"]) == {companion.device}
    assert set(body["components"]["backups"]["devices"]) == {companion.device}
    status, _, body = companion.request("GET", "/api/v1/health", key=companion.operator_key)
    assert set(body["devices"]) == {companion.device, companion.other_device}


def test_cross_device_lookups_answer_404(companion: Companion) -> None:
    upload = companion.request(
        "PUT",
        f"/api/v1/backups/{companion.device}/config/settings.json",
        raw=b"{}\n",
        headers={"Content-Type": "application/octet-stream"},
    )
    status, _, listed = companion.request("GET", "/api/v1/backups")
    assert status == 200 and listed["backups"], (upload, listed)
    backup_id = listed["backups"][0]["id"]
    other = companion.other_key
    for path in (
        f"/api/v1/backups/{backup_id}",
        f"/api/v1/backups?deviceId={companion.device}",
        f"/api/v1/sync/status?deviceId={companion.device}",
        f"/api/v1/analyses?deviceId={companion.device}",
    ):
        status, _, body = companion.request("GET", path, key=other)
        assert status == 404, (path, body)
        assert companion.other_device not in json.dumps(body), (path, body)


# ------------------------------------------------------------ item 5: no 5xx from bytes

HOSTILE_HEADER_VALUES = [
    b"\xff\xfe",
    b"\xc3\x28",  # an invalid UTF-8 sequence
    b"\xe2\x82",  # a truncated one
    b"caf\xc3\xa9",  # valid UTF-8, not ASCII
    b"\x80" * 300,
    b"\xef\xbb\xbfkey",  # a byte-order mark in front
    b"1_000",
    b"\xb2",  # superscript two: a digit to some parsers
]
FUZZED_HEADERS = [
    "X-API-Key",
    "X-Content-SHA256",
    "Content-Type",
    "Content-Length",
    "Accept",
    "Cookie",
    "Range",
    "If-Modified-Since",
    "X-Forwarded-For",
    "User-Agent",
    "Origin",
    "Host",
]


@pytest.mark.slow(seconds=20)
def test_non_ascii_header_bytes_never_give_a_5xx(companion: Companion) -> None:
    sync = json.dumps(sync_body("statistics", [{"id": 1}])).encode()
    requests_to_send = [
        ("GET", "/api/v1/health", b""),
        ("GET", "/api/v1/ping", b""),
        ("POST", "/api/v1/sync", sync),
        ("PUT", f"/api/v1/backups/{companion.device}/config/settings.json", b"{}"),
        ("GET", "/api/v1/backups/1", b""),
        ("GET", "/api/v1/analyses", b""),
        ("POST", "/login", b"key=x"),  # the status page's sign-in reads Origin and Host
    ]
    statuses: dict[int, int] = {}
    for method, path, body in requests_to_send:
        # The sign-in refuses an address after 10 wrong keys (429 until its limit refills):
        # only the headers it reads, so most requests still reach the key check.
        names = ("Origin", "Host") if path == "/login" else FUZZED_HEADERS
        for name in names:
            for value in HOSTILE_HEADER_VALUES:
                headers = {
                    "Host": b"chi-srv-01",
                    "X-API-Key": companion.key.encode(),
                    "Content-Type": b"application/x-www-form-urlencoded"
                    if path == "/login"
                    else b"application/json",
                    "Content-Length": str(len(body)).encode(),
                    "Connection": b"close",
                }
                headers[name] = value
                head = f"{method} {path} HTTP/1.1\r\n".encode()
                head += b"".join(k.encode() + b": " + v + b"\r\n" for k, v in headers.items())
                reply = exchange(companion, head + b"\r\n" + body, timeout=10)
                assert reply.startswith(b"HTTP/1."), (method, path, name, value, reply[:200])
                status = int(reply.split(b" ", 2)[1])
                assert status < 500, (method, path, name, value, reply[:300])
                if name == "X-API-Key" and path.startswith("/api/v1/"):
                    assert status in (400, 401), (method, path, name, value, reply[:300])
                if name == "X-Content-SHA256" and method == "PUT":
                    assert status == 400, (method, path, name, value, reply[:300])
                statuses[status] = statuses.get(status, 0) + 1
    assert "Traceback" not in companion.log()
    status, _, _ = companion.request("GET", "/api/v1/health")
    assert status == 200, statuses


# ---------------------------------------------------- item 3: append-only for real


@pytest.mark.slow(seconds=10)
def test_junk_uploads_with_a_stolen_key_cannot_flush_a_good_backup(
    make_companion: MakeCompanion,
) -> None:
    comp = make_companion(
        backups={"min_free_bytes": 0}, **{"backups.retention.config": {"keep_last": 1}}
    )
    path = f"/api/v1/backups/{comp.device}/config/settings.json"
    headers = {"Content-Type": "application/octet-stream"}
    good = b'{"good": true}\n'
    status, _, first = comp.request("PUT", path, raw=good, headers=headers)
    assert status == 201, first
    answers = [
        comp.request("PUT", path, raw=f"junk {i}".encode(), headers=headers) for i in range(20)
    ]
    statuses = [a[0] for a in answers]
    # The burst (10 by default, the good one included) passes, then 429 with Retry-After.
    assert statuses.count(201) == 9 and statuses.count(429) == 11, statuses
    refused = next(a for a in answers if a[0] == 429)
    assert int(refused[1]["Retry-After"]) > 0 and refused[2]["error"] == "too many requests"
    status, _, body = comp.request("GET", f"/api/v1/backups/{first['id']}")
    assert status == 200 and body == good
    # Nor can the operator's prune (keep_last = 1) remove it: it is within keep_within (7 d).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chi_companion",
            "backups",
            "prune",
            "--config",
            str(comp.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status, _, body = comp.request("GET", f"/api/v1/backups/{first['id']}")
    assert status == 200 and body == good


# ------------------------------------------------------------------- item 8: keys


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _set_device_keys(comp: Companion, digests: list[str]) -> None:
    """Replace the device's key in clear by api_key_sha256 (what a real config holds)."""
    text = comp.config_path.read_text()
    plain = f'api_key = "{comp.key}"'
    if plain in text:
        text = text.replace(plain, "api_key_sha256 = []")
    start = text.index(f"[devices.{comp.device}]")
    line_start = text.index("api_key_sha256 = ", start)
    line_end = text.index("\n", line_start)
    text = text[:line_start] + f"api_key_sha256 = {json.dumps(digests)}" + text[line_end:]
    comp.config_path.write_text(text)


def _ping(comp: Companion, key: str) -> int:
    return comp.request("GET", "/api/v1/ping", key=key)[0]


@pytest.mark.slow(seconds=15)
def test_hashed_keys_rotate_with_two_keys_and_sighup(make_companion: MakeCompanion) -> None:
    comp = make_companion(start=False)
    old, new = comp.key, secrets.token_urlsafe(32)
    _set_device_keys(comp, [_digest(old)])
    comp.start()
    # Keys in clear still work, with a warning naming the line to use; digests give none.
    assert f"devices.{comp.other_device}.api_key: the key is stored in clear" in comp.log()
    assert f"devices.{comp.device}.api_key" not in comp.log()
    assert _ping(comp, old) == 200 and _ping(comp, new) == 401
    # Rotation step 1: both keys, reloaded on SIGHUP without stopping the service.
    _set_device_keys(comp, [_digest(old), _digest(new)])
    assert comp.proc is not None
    master = comp.proc.pid
    comp.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while _ping(comp, new) != 200:
        assert time.monotonic() < deadline, "the new key never worked after SIGHUP"
        time.sleep(0.2)
    assert _ping(comp, old) == 200
    # Step 2, once the Pi uses the new key: the old one goes.
    _set_device_keys(comp, [_digest(new)])
    comp.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while _ping(comp, old) != 401:
        assert time.monotonic() < deadline, "the old key still worked after SIGHUP"
        time.sleep(0.2)
    assert _ping(comp, new) == 200
    assert comp.proc.poll() is None and comp.proc.pid == master  # never restarted
    # A broken config on reload is refused; the running keys stay.
    comp.config_path.write_text(comp.config_path.read_text() + "\n[nonsense\n")
    comp.proc.send_signal(signal.SIGHUP)
    time.sleep(2)
    assert _ping(comp, new) == 200
    assert "reload refused" in comp.log()


def test_gen_key_prints_the_key_and_its_digest_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chi_companion", "gen-key"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = result.stdout.strip()
    assert len(key) >= 43
    assert f'api_key_sha256 = "{_digest(key)}"' in result.stderr
