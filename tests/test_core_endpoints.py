"""Health, ping, release, JSON error pages: real server process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.companion_process import Companion

RELEASE = {
    "version": "V0.28.2",
    "releasedAt": "2026-06-05T22:24:03Z",
    "gitHash": "48e5567",
    "theme": "Quiet cold starts",
    "description": "Fixes the idle sweep.",
}


def test_ping_needs_a_valid_key(companion: Companion) -> None:
    status, _, body = companion.request("GET", "/api/v1/ping")
    assert status == 200
    assert body["status"] == "ok" and body["deviceId"] == "chi-eclipse-01"
    assert body["serverTime"].endswith("Z")
    assert companion.request("GET", "/api/v1/ping", key=False)[0] == 401
    assert companion.request("GET", "/api/v1/ping", key="x" * 43)[0] == 401


def test_health_is_public_and_reveals_no_secrets(companion: Companion) -> None:
    status, _, body = companion.request("GET", "/api/v1/health", key=companion.operator_key)
    assert status == 200
    assert body["status"] in ("healthy", "degraded")
    assert body["components"]["database"] == {"status": "ok", "writable": True}
    assert body["components"]["disk"]["freeBytes"] > 0
    assert set(body["devices"]) == {"chi-eclipse-01", "chi-eclipse-02"}
    text = json.dumps(body)
    for secret in (
        companion.key,
        companion.other_key,
        companion.operator_key,
        str(companion.data_dir),
    ):
        assert secret not in text


def test_health_degrades_when_disk_is_under_the_minimum(make_companion: Any) -> None:
    comp = make_companion(backups={"min_free_bytes": 2**62})
    status, _, body = comp.request("GET", "/api/v1/health", key=comp.operator_key)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["components"]["disk"]["status"] == "degraded"


def test_health_reports_replication_status(companion: Companion) -> None:
    status_file = companion.data_dir / "replication" / "status.json"
    status_file.parent.mkdir()
    status_file.write_text(
        json.dumps(
            {
                "started_at": "2020-01-01T00:00:00Z",
                "finished_at": "2020-01-01T00:01:00Z",
                "exit_code": 0,
                "bytes": 10,
                "files": 1,
                "last_success_at": "2020-01-01T00:01:00Z",
            }
        )
    )
    _, _, body = companion.request("GET", "/api/v1/health", key=companion.operator_key)
    assert body["components"]["replication"]["status"] == "degraded"
    assert body["status"] == "degraded"


def test_release_record(make_companion: Any, tmp_path: Path) -> None:
    record = tmp_path / "release.json"
    comp = make_companion(release={"record_path": str(record)})
    status, _, body = comp.request("GET", "/api/v1/release/current")
    assert status == 503 and body["error"] == "no release published"
    record.write_text(json.dumps(RELEASE))
    status, _, body = comp.request("GET", "/api/v1/release/current")
    assert status == 200 and body == RELEASE
    record.write_text(json.dumps(dict(RELEASE, theme="")))
    status, _, body = comp.request("GET", "/api/v1/release/current")
    assert status == 503 and "theme" in body["detail"]


def test_errors_are_json_never_html(companion: Companion) -> None:
    for method, path in (
        ("GET", "/nowhere"),
        ("DELETE", "/api/v1/ping"),
        ("GET", "/api/v1/ping/"),
        ("GET", "/api/v1/sync"),
    ):
        status, headers, body = companion.request(method, path)
        assert status in (404, 405), (method, path, status)
        assert headers["Content-Type"].startswith("application/json")
        assert set(body) == {"error", "detail"}
