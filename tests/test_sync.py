"""POST /api/v1/sync and /sync/status against a real server process and SQLite file."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.companion_process import Companion
from tests.sync_payloads import CONTRACT_EXAMPLE, realtime_rows, sync_body


def stored_rows(comp: Companion, table: str | None = None) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(comp.data_dir / "companion.db")
    try:
        sql = "SELECT device_id, table_name, row_id, doc FROM synced_rows"
        params: tuple[Any, ...] = ()
        if table:
            sql += " WHERE table_name = ?"
            params = (table,)
        return conn.execute(sql + " ORDER BY table_name, row_id", params).fetchall()
    finally:
        conn.close()


def test_contract_example_round_trips(companion: Companion) -> None:
    status, _, body = companion.request("POST", "/api/v1/sync", CONTRACT_EXAMPLE)
    assert status == 200, body
    assert body["status"] == "ok"
    assert body["batchId"] == CONTRACT_EXAMPLE["batchId"]
    assert body["tablesProcessed"] == {"realtime_data": {"inserted": 1, "updated": 0, "errors": 0}}
    assert body["driveDataReceived"] is True
    assert body["syncedAt"].endswith("Z")
    (row,) = stored_rows(companion)
    assert row[:3] == ("chi-eclipse-01", "realtime_data", 1)
    assert json.loads(row[3]) == CONTRACT_EXAMPLE["tables"]["realtime_data"]["rows"][0]


def test_resent_batch_changes_nothing_and_update_replaces(companion: Companion) -> None:
    rows = realtime_rows(1, 50)
    assert companion.request("POST", "/api/v1/sync", sync_body("realtime_data", rows))[0] == 200
    before = stored_rows(companion)

    status, _, body = companion.request(
        "POST", "/api/v1/sync", sync_body("realtime_data", rows, batch_id="another-id")
    )
    assert status == 200
    assert body["tablesProcessed"]["realtime_data"] == {"inserted": 0, "updated": 50, "errors": 0}
    assert stored_rows(companion) == before

    # drive_summary rows change on the Pi and are re-sent complete with the same id.
    first = {"id": 7, "drive_id": 3, "max_rpm": 4100, "notes": None}
    changed = {
        "id": 7,
        "drive_id": 3,
        "max_rpm": 5200,
        "notes": "pulled hard",
        "new_column_from_v0_29": "kept",
    }
    companion.request("POST", "/api/v1/sync", sync_body("drive_summary", [first]))
    status, _, body = companion.request(
        "POST", "/api/v1/sync", sync_body("drive_summary", [changed])
    )
    assert body["tablesProcessed"]["drive_summary"] == {"inserted": 0, "updated": 1, "errors": 0}
    (row,) = stored_rows(companion, "drive_summary")
    assert json.loads(row[3]) == changed

    _, _, st = companion.request("GET", "/api/v1/sync/status")
    assert st["tables"]["realtime_data"] == {
        "rows": 50,
        "maxId": 50,
        "lastReceivedAt": st["tables"]["realtime_data"]["lastReceivedAt"],
    }
    assert st["tables"]["drive_summary"]["rows"] == 1


def test_nan_tokens_timestamps_and_unknown_columns_are_kept(companion: Companion) -> None:
    raw = (
        b'{"deviceId": "chi-eclipse-01", "batchId": "b", "tables": {"realtime_data": '
        b'{"lastSyncedId": 3, "rows": ['
        b'{"id": 1, "timestamp": "2026-04-19 08:00:00", "value": NaN, "x_new": [1, 2]},'
        b'{"id": 2, "timestamp": "2026-04-19 07:18:50.697867", "value": Infinity},'
        b'{"id": 3, "timestamp": "2026-04-19T08:00:00Z", "value": 1e999, "dtc": null}]}}}'
    )
    status, _, body = companion.request(
        "POST", "/api/v1/sync", raw=raw, headers={"Content-Type": "application/json"}
    )
    assert status == 200, body
    assert body["nonFiniteValues"] == 3
    docs = {r[2]: json.loads(r[3]) for r in stored_rows(companion)}
    assert docs[1] == {"id": 1, "timestamp": "2026-04-19 08:00:00", "value": None, "x_new": [1, 2]}
    assert docs[2]["timestamp"] == "2026-04-19 07:18:50.697867"
    assert docs[2]["value"] is None
    assert docs[3] == {"id": 3, "timestamp": "2026-04-19T08:00:00Z", "value": None, "dtc": None}


def test_drive_counter_keeps_the_maximum(companion: Companion) -> None:
    for n in (5, 9, 4):
        body = {
            "deviceId": companion.device,
            "batchId": f"b{n}",
            "tables": {},
            "driveCounter": {"lastDriveId": n},
        }
        assert companion.request("POST", "/api/v1/sync", body)[0] == 200
    _, _, st = companion.request("GET", "/api/v1/sync/status")
    assert st["driveCounter"] == {"lastDriveId": 9}


def test_several_tables_in_one_body_are_one_transaction(companion: Companion) -> None:
    body = {
        "deviceId": companion.device,
        "batchId": "b",
        "tables": {
            "dtc_freeze_frame": {
                "lastSyncedId": 1,
                "rows": [{"id": 1, "dtc_log_id": 44, "pid_responses_json": '{"0C": "1AF8"}'}],
            },
            "connection_log": {
                "lastSyncedId": 2,
                "rows": [
                    {"id": 1, "event_type": "drive_start"},
                    {"id": "two", "event_type": "drive_end"},
                ],
            },
        },
    }
    status, _, err = companion.request("POST", "/api/v1/sync", body)
    assert status == 422
    assert "tables.connection_log.rows[1].id" in err["detail"]
    # The valid table in the same body was not stored either.
    assert stored_rows(companion) == []
    del body["tables"]["connection_log"]["rows"][1]
    status, _, ok = companion.request("POST", "/api/v1/sync", body)
    assert status == 200
    # A child row whose parent (dtc_log 44) never arrived is still accepted.
    assert ok["tablesProcessed"]["dtc_freeze_frame"]["inserted"] == 1
    assert len(stored_rows(companion)) == 2


def test_concurrent_overlapping_batches(companion: Companion) -> None:
    # 20 clients, each posting batches that overlap with its neighbours' id ranges.
    def client(n: int) -> list[int]:
        statuses = []
        for k in range(3):
            first = n * 100 + k * 50 + 1
            body = sync_body("realtime_data", realtime_rows(first, 150), batch_id=f"c{n}-{k}")
            statuses.append(companion.request("POST", "/api/v1/sync", body)[0])
        return statuses

    with ThreadPoolExecutor(20) as pool:
        results = [s for statuses in pool.map(client, range(20)) for s in statuses]
    assert results == [200] * 60
    expected_ids = {
        n * 100 + k * 50 + 1 + i for n in range(20) for k in range(3) for i in range(150)
    }
    ids = [r[2] for r in stored_rows(companion, "realtime_data")]
    assert len(ids) == len(expected_ids)
    assert set(ids) == expected_ids
    _, _, st = companion.request("GET", "/api/v1/sync/status")
    assert st["tables"]["realtime_data"]["rows"] == len(expected_ids)
    assert st["tables"]["realtime_data"]["maxId"] == max(expected_ids)


BAD_BODIES = [
    pytest.param(b"{not json", "invalid JSON", id="invalid-json"),
    pytest.param(b"\xff\xfe{}", "invalid JSON", id="invalid-utf8"),
    pytest.param(b"[1, 2]", "body must be a JSON object", id="top-level-array"),
    pytest.param(
        json.dumps({"deviceId": 5, "batchId": "b", "tables": {}}).encode(),
        "deviceId",
        id="device-not-string",
    ),
    pytest.param(
        json.dumps({"deviceId": "chi-eclipse-01", "batchId": "b", "tables": []}).encode(),
        "tables must be an object",
        id="tables-array",
    ),
    pytest.param(
        json.dumps(
            {"deviceId": "chi-eclipse-01", "batchId": "b", "tables": {"t": {"rows": {"id": 1}}}}
        ).encode(),
        "tables.t.rows must be an array",
        id="rows-object",
    ),
    pytest.param(
        json.dumps(
            {
                "deviceId": "chi-eclipse-01",
                "batchId": "b",
                "tables": {"t": {"rows": [{"value": 1}]}},
            }
        ).encode(),
        "tables.t.rows[0].id",
        id="row-without-id",
    ),
    pytest.param(
        json.dumps(
            {"deviceId": "chi-eclipse-01", "batchId": "b", "tables": {"t": {"rows": [{"id": 1.5}]}}}
        ).encode(),
        "tables.t.rows[0].id",
        id="row-float-id",
    ),
    pytest.param(
        json.dumps(
            {
                "deviceId": "chi-eclipse-01",
                "batchId": "b",
                "tables": {"t": {"rows": [{"id": True}]}},
            }
        ).encode(),
        "tables.t.rows[0].id",
        id="row-bool-id",
    ),
    pytest.param(
        json.dumps(
            {
                "deviceId": "chi-eclipse-01",
                "batchId": "b",
                "tables": {"t": {"rows": [{"id": 2**70}]}},
            }
        ).encode(),
        "64-bit",
        id="row-id-too-large",
    ),
    pytest.param(
        json.dumps(
            {
                "deviceId": "chi-eclipse-01",
                "batchId": "b",
                "tables": {"x; DROP TABLE synced_rows": {"rows": []}},
            }
        ).encode(),
        "not a safe identifier",
        id="table-sql",
    ),
    pytest.param(
        json.dumps(
            {
                "deviceId": "chi-eclipse-01",
                "batchId": "b",
                "tables": {"../../etc/passwd": {"rows": []}},
            }
        ).encode(),
        "not a safe identifier",
        id="table-path",
    ),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "invalid JSON", id="deep-nesting"),
    pytest.param(
        b'{"deviceId": "chi-eclipse-01", "batchId": "b", "tables": {}, "n": ' + b"9" * 5000 + b"}",
        "invalid JSON",
        id="huge-integer",
    ),
]


@pytest.mark.parametrize(("raw", "message"), BAD_BODIES)
def test_bad_bodies_are_4xx_and_store_nothing(
    module_companion: Companion, raw: bytes, message: str
) -> None:
    companion = module_companion
    status, headers, body = companion.request(
        "POST", "/api/v1/sync", raw=raw, headers={"Content-Type": "application/json"}
    )
    assert 400 <= status < 500, body
    assert headers["Content-Type"].startswith("application/json")
    assert message in f"{body['error']} {body['detail']}"
    assert stored_rows(companion) == []
    # The operator can see why a batch was refused.
    _, _, st = companion.request("GET", "/api/v1/sync/status")
    assert st["recentRejections"][-1]["status"] == status


def test_auth_and_content_type(companion: Companion) -> None:
    body = sync_body("realtime_data", realtime_rows(1, 3))
    status, _, err = companion.request("POST", "/api/v1/sync", body, key=False)
    assert status == 401 and err["error"] == "unauthorized"
    assert companion.request("POST", "/api/v1/sync", body, key="wrong-key-" * 4)[0] == 401
    # Another device's valid key may not write this device's rows.
    status, _, err = companion.request("POST", "/api/v1/sync", body, key=companion.other_key)
    assert status == 403 and "chi-eclipse-02" in err["detail"]
    # The operator key is not a device.
    assert companion.request("POST", "/api/v1/sync", body, key=companion.operator_key)[0] == 403
    status, _, err = companion.request(
        "POST",
        "/api/v1/sync",
        raw=json.dumps(body).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert status == 415
    # The Pi's HTTP library title-cases header names; WSGI matching is case-insensitive.
    status, _, _ = companion.request(
        "POST", "/api/v1/sync", body, key=False, headers={"x-API-kEy": companion.key}
    )
    assert status == 200
    assert len(stored_rows(companion)) == 3


def raw_http(comp: Companion, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", comp.port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_body_refused_from_content_length(make_companion: Any) -> None:
    comp = make_companion(server={"max_body_bytes": 100_000})
    # Declares 500 MB but sends only a few bytes: the answer must come from the
    # header alone, without waiting for (or buffering) the body.
    head = (
        f"POST /api/v1/sync HTTP/1.1\r\nHost: x\r\nX-API-Key: {comp.key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 500000000\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    reply = raw_http(comp, head, b'{"deviceId":')
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 5
    assert b'"payload too large"' in reply
    assert stored_rows(comp) == []
    # Just over the limit, fully sent.
    body = sync_body("realtime_data", realtime_rows(1, 600))
    status, _, _ = comp.request("POST", "/api/v1/sync", body)
    assert status == 413


def test_sigterm_finishes_the_request_in_flight(companion: Companion) -> None:
    payload = json.dumps(sync_body("realtime_data", realtime_rows(1, 500))).encode()
    head = (
        f"POST /api/v1/sync HTTP/1.1\r\nHost: x\r\nX-API-Key: {companion.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", companion.port), timeout=20)
    try:
        sock.sendall(head + payload[:1000])
        time.sleep(0.5)  # the worker is now inside the handler, reading the body
        assert companion.proc is not None
        companion.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(payload[1000:])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert companion.proc.wait(30) == 0
    assert len(stored_rows(companion)) == 500


def test_rows_and_status_survive_restart(companion: Companion) -> None:
    companion.request("POST", "/api/v1/sync", sync_body("realtime_data", realtime_rows(1, 120)))
    companion.request(
        "POST",
        "/api/v1/sync",
        {
            "deviceId": companion.device,
            "batchId": "d",
            "tables": {},
            "driveCounter": {"lastDriveId": 12},
        },
    )
    _, _, before = companion.request("GET", "/api/v1/sync/status")
    rows_before = stored_rows(companion)
    companion.restart()
    _, _, after = companion.request("GET", "/api/v1/sync/status")
    assert stored_rows(companion) == rows_before
    for key in ("tables", "driveCounter", "lastSyncAt", "lastBatchId"):
        assert after[key] == before[key]


def test_kill9_loses_no_acknowledged_rows(companion: Companion) -> None:
    acknowledged: list[int] = []
    stop = threading.Event()

    def pi() -> None:
        n = 0
        while not stop.is_set():
            rows = realtime_rows(n * 100 + 1, 100)
            try:
                status, _, _ = companion.request(
                    "POST", "/api/v1/sync", sync_body("realtime_data", rows), timeout=5
                )
            except OSError:
                return
            if status == 200:
                acknowledged.extend(r["id"] for r in rows)
            n += 1

    thread = threading.Thread(target=pi)
    thread.start()
    time.sleep(1.5)
    companion.kill9()
    stop.set()
    thread.join(10)
    assert acknowledged, "no batch was acknowledged before the kill"
    companion.start()
    ids = {r[2] for r in stored_rows(companion, "realtime_data")}
    assert set(acknowledged) <= ids


def test_sync_status_access(companion: Companion) -> None:
    companion.request("POST", "/api/v1/sync", sync_body("statistics", [{"id": 1}]))
    status, _, _ = companion.request("GET", "/api/v1/sync/status?deviceId=chi-eclipse-02")
    # Another device's status answers like an unknown device: 404, naming no owner.
    assert status == 404
    status, _, body = companion.request("GET", "/api/v1/sync/status", key=companion.operator_key)
    assert status == 200
    assert [d["deviceId"] for d in body["devices"]] == ["chi-eclipse-01", "chi-eclipse-02"]
    assert (
        companion.request("GET", "/api/v1/sync/status?deviceId=nobody", key=companion.operator_key)[
            0
        ]
        == 404
    )
    assert companion.request("GET", "/api/v1/sync/status", key=False)[0] == 401
