"""Per-device quotas (issue 15 item 4) against a real companion: real HTTP, SQLite and files.

Over quota a sync or an upload answers 507 with the quota, the usage and what to do, and
nothing changes; the running totals behind the check stay equal to what is stored, across
re-sent and changed rows, a restart, a database from before the totals, sync-prune and
backup deletion; /health and /metrics show usage against the quotas.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.companion_process import Companion
from tests.sync_payloads import realtime_rows, sync_body

API = "/api/v1"
KiB = 1024
MiB = 1024 * KiB
SYNC_QUOTA = 200 * KiB  # room for two 500-row batches (about 88 KiB each), not three
BACKUP_QUOTA = 3 * MiB  # room for one 2 MiB upload, not two


def _sync(comp: Companion, first: int, count: int = 500, **kw: Any) -> tuple[int, Any]:
    device = kw.pop("device", comp.device)
    key = kw.pop("key", True)
    body = sync_body("realtime_data", realtime_rows(first, count, **kw), device=device)
    status, headers, payload = comp.request("POST", f"{API}/sync", body, key=key)
    if status == 507:
        assert headers["Retry-After"]
    return status, payload


def _stored_bytes(comp: Companion, device: str) -> tuple[int, int]:
    """(rows, bytes of their documents) counted from the database file itself."""
    with contextlib.closing(sqlite3.connect(comp.data_dir / "companion.db")) as conn:
        rows, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(CAST(doc AS BLOB))), 0) FROM synced_rows"
            " WHERE device_id = ?",
            (device,),
        ).fetchone()
    return int(rows), int(size)


def _usage(comp: Companion, key: str | bool = True) -> dict[str, Any]:
    status, _, health = comp.request("GET", f"{API}/health", key=key)
    assert status in (200, 503), health
    return health["components"]["quotas"]


def test_sync_over_quota_is_507_naming_the_quota_and_stores_nothing(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(quotas={"synced_bytes_per_device": SYNC_QUOTA})
    assert _sync(comp, 1)[0] == 200
    assert _sync(comp, 501)[0] == 200
    before = _stored_bytes(comp, comp.device)
    status, body = _sync(comp, 1001)
    assert status == 507, body
    assert body["error"] == "quota exceeded"
    quota = body["quota"]
    assert quota["setting"] == "quotas.synced_bytes_per_device"
    assert quota["limitBytes"] == SYNC_QUOTA
    assert quota["usedBytes"] == before[1]
    assert quota["usedBytes"] + quota["requestBytes"] > SYNC_QUOTA
    assert "quotas.synced_bytes_per_device" in body["detail"]
    assert "sync-prune" in body["detail"], "the answer says what to do"
    assert _stored_bytes(comp, comp.device) == before, "nothing of the refused batch is stored"
    status, _, report = comp.request("GET", f"{API}/sync/status")
    assert report["tables"]["realtime_data"]["rows"] == 1000
    assert report["recentRejections"][-1]["status"] == 507
    # Re-sent rows take no new room: the Pi's retries of stored rows still succeed.
    assert _sync(comp, 1)[0] == 200
    # The quota is per device: the other device syncs as before.
    assert _sync(comp, 1, device=comp.other_device, key=comp.other_key)[0] == 200


def test_usage_is_exact_after_changed_rows_a_restart_and_an_old_database(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(quotas={"synced_bytes_per_device": 10 * MiB})
    assert _sync(comp, 1)[0] == 200
    # Changed rows re-sent with the same ids (bigger documents), and repeats within a batch.
    assert _sync(comp, 1, 300, bump=123456.789)[0] == 200
    rows = realtime_rows(700, 3) + realtime_rows(700, 3, bump=1.25)
    status, _, _ = comp.request("POST", f"{API}/sync", sync_body("realtime_data", rows))
    assert status == 200
    # Text that is not ASCII, a JSON document inside a string, nulls, numbers as the Pi
    # writes them: the running total still equals the stored bytes.
    frames = [
        {
            "id": n,
            "dtc_code": "P0301",
            "pid_responses_json": '{"0C": "1A F8", "note": "Zündung \u00fc \\ \\"q\\""}',
            "label": "température ✓",
            "value": 1e-7 * n,
            "big": 12345678901234567890,
            "missing": None,
        }
        for n in range(1, 4)
    ]
    status, _, _ = comp.request("POST", f"{API}/sync", sync_body("dtc_freeze_frame", frames))
    assert status == 200
    stored = _stored_bytes(comp, comp.device)
    assert stored[0] == 506
    assert _usage(comp)["devices"][comp.device]["syncedBytes"] == stored[1]
    comp.restart()
    assert _usage(comp)["devices"][comp.device]["syncedBytes"] == stored[1]
    # A database written before the running total existed (0.2.0): counted once at start.
    comp.stop()
    with contextlib.closing(sqlite3.connect(comp.data_dir / "companion.db")) as conn:
        conn.execute("DROP TABLE sync_usage")
        conn.commit()
    comp.start()
    assert _usage(comp)["devices"][comp.device]["syncedBytes"] == stored[1]
    assert _sync(comp, 2001, 10)[0] == 200
    assert (
        _usage(comp)["devices"][comp.device]["syncedBytes"] == _stored_bytes(comp, comp.device)[1]
    )


def test_sync_prune_frees_the_quota(make_companion: Callable[..., Companion]) -> None:
    comp = make_companion(quotas={"synced_bytes_per_device": SYNC_QUOTA})
    assert _sync(comp, 1)[0] == 200
    assert _sync(comp, 501)[0] == 200
    assert _sync(comp, 1001)[0] == 507
    cli = [sys.executable, "-m", "chi_companion", "sync-prune", "--config", str(comp.config_path)]
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    dry = subprocess.run(
        [*cli, "--device", comp.device, "--received-before", tomorrow, "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert "would remove 1000 row(s)" in dry.stdout
    assert _stored_bytes(comp, comp.device)[0] == 1000
    done = subprocess.run(
        [*cli, "--device", comp.device, "--received-before", tomorrow],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "removed 1000 row(s)" in done.stdout
    assert _stored_bytes(comp, comp.device) == (0, 0)
    assert _usage(comp)["devices"][comp.device]["syncedBytes"] == 0
    status, _, report = comp.request("GET", f"{API}/sync/status")
    assert status == 200 and report["tables"]["realtime_data"]["rows"] == 0
    assert _sync(comp, 1001)[0] == 200
    bad = subprocess.run(
        [*cli, "--device", comp.device, "--received-before", "yesterday"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2  # a usage error, like every malformed argument
    assert "--received-before: wants a date like 2026-01-31" in bad.stderr


def _put(comp: Companion, name: str, size: int, key: str | bool = True) -> tuple[int, Any]:
    status, headers, body = comp.request(
        "PUT",
        f"{API}/backups/{comp.device}/database/{name}",
        raw=os.urandom(size),
        headers={"Content-Type": "application/octet-stream"},
        key=key,
    )
    if status == 507:
        assert headers["Retry-After"]
    return status, body


def _files(comp: Companion) -> list[str]:
    root = comp.data_dir / "backups"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_backup_over_quota_is_507_and_stores_nothing(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(quotas={"backup_bytes_per_device": BACKUP_QUOTA})
    status, first = _put(comp, "obd.db", 2 * MiB)
    assert status == 201, first
    files = _files(comp)
    status, body = _put(comp, "obd.db", 2 * MiB)
    assert status == 507, body
    assert body["error"] == "quota exceeded"
    assert body["quota"] == {
        "setting": "quotas.backup_bytes_per_device",
        "limitBytes": BACKUP_QUOTA,
        "usedBytes": 2 * MiB,
        "requestBytes": 2 * MiB,
    }
    assert "backups prune" in body["detail"]
    assert _files(comp) == files, "no file, not even a temporary one"
    # The multipart form of the Pi's own server, too; the device is known from its key.
    boundary = "chiQuotaBoundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="deviceId"\r\n\r\n{comp.device}'
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\ndatabase\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="obd.db"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + os.urandom(2 * MiB)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, body = comp.request(
        "POST",
        f"{API}/backup",
        raw=form,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 507 and body["error"] == "quota exceeded", body
    assert _files(comp) == files
    # What fits still fits; the usage is the catalog's.
    assert _put(comp, "small.db", 512 * KiB)[0] == 201
    assert _usage(comp)["devices"][comp.device]["backupBytes"] == 2 * MiB + 512 * KiB
    # The operator frees room: the upload refused above now fits.
    status, _, _ = comp.request("DELETE", f"{API}/backups/{first['id']}", key=comp.operator_key)
    assert status == 204
    assert _put(comp, "obd.db", 2 * MiB)[0] == 201


def _start_put(comp: Companion, n: int, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", comp.port), timeout=30)
    head = (
        f"PUT {API}/backups/{comp.device}/database/obd{n}.db HTTP/1.1\r\nHost: chi-srv-01\r\n"
        f"X-API-Key: {comp.key}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + b"x")
    return sock


def _finish_put(sock: socket.socket, size: int) -> int:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(b"x" * (size - 1))
    reply = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            reply += chunk
    sock.close()
    return int(reply.split(b" ", 2)[1])


def test_concurrent_uploads_count_against_the_quota_while_in_flight(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(quotas={"backup_bytes_per_device": BACKUP_QUOTA})
    # Three 1.2 MiB uploads of one device in flight at once against room for two.
    size = 1200 * KiB
    socks = [_start_put(comp, n, size) for n in range(3)]
    time.sleep(1.0)
    statuses = sorted(_finish_put(s, size) for s in socks)
    assert statuses == [201, 201, 507], statuses
    assert _usage(comp)["devices"][comp.device]["backupBytes"] == 2 * size


def test_health_and_metrics_show_usage_against_quota(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(
        quotas={"synced_bytes_per_device": SYNC_QUOTA, "backup_bytes_per_device": 0}
    )
    assert _sync(comp, 1)[0] == 200
    synced = _stored_bytes(comp, comp.device)[1]
    mine = _usage(comp)
    assert mine["status"] == "ok"
    # A device key sees its own device only.
    assert mine["devices"] == {
        comp.device: {
            "syncedBytes": synced,
            "syncedQuotaBytes": SYNC_QUOTA,
            "backupBytes": 0,
            "backupQuotaBytes": None,
        }
    }
    assert set(_usage(comp, comp.operator_key)["devices"]) == {comp.device, comp.other_device}
    _, _, public = comp.request("GET", f"{API}/health", key=False)
    assert "components" not in public
    # Past 90 % of a quota the component is degraded, before the Pi is refused: rows up to
    # about 95 % of it (all rows of realtime_rows are about the same size).
    more = int((0.95 * SYNC_QUOTA - synced) / (synced / 500))
    assert _sync(comp, 501, more)[0] == 200
    assert _stored_bytes(comp, comp.device)[1] < SYNC_QUOTA
    assert _usage(comp)["status"] == "degraded"
    status, _, text = comp.request("GET", "/metrics", key=False)
    assert status == 200
    lines = text.decode().splitlines()
    assert f'chi_quota_limit_bytes{{device="{comp.device}",kind="synced"}} {SYNC_QUOTA}' in lines
    used = _stored_bytes(comp, comp.device)[1]
    assert f'chi_quota_used_bytes{{device="{comp.device}",kind="synced"}} {used}' in lines
    assert f'chi_quota_used_bytes{{device="{comp.device}",kind="backups"}} 0' in lines
    assert not any(
        line.startswith("chi_quota_limit_bytes{") and 'kind="backups"' in line for line in lines
    ), "no quota, no limit series"


@pytest.mark.parametrize("value", [-1, "10G", 1.5])
def test_quota_settings_are_checked(tmp_path: Path, value: Any) -> None:
    comp = Companion(tmp_path, {"quotas": {"synced_bytes_per_device": value}})
    check = subprocess.run(
        [sys.executable, "-m", "chi_companion", "check-config", "--config", str(comp.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode != 0
    assert "quotas.synced_bytes_per_device" in check.stdout + check.stderr
