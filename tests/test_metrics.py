"""GET /metrics: the Prometheus text format (checked by promtool), the values it reports, and
the address restriction."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.companion_process import Companion
from tests.drive_rows import drive_rows
from tests.ollama_emulator import OllamaEmulator
from tests.sync_payloads import sync_body

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@pytest.fixture(scope="module")
def emu() -> Iterator[OllamaEmulator]:
    emulator = OllamaEmulator(models=("gemma2:2b",)).start()
    yield emulator
    emulator.stop()


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, rest = metric.partition("{")
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if base == name and got == labels:
            return float(value)
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def test_metrics_pass_promtool_and_report_what_happened(
    make_companion: Callable[..., Companion], emu: OllamaEmulator
) -> None:
    comp = make_companion(ollama={"url": emu.url, "poll_seconds": 0.3})
    for i in range(3):
        rows = drive_rows(1, 20, first_id=1 + i * 100)
        status, _, body = comp.request("POST", "/api/v1/sync", sync_body("realtime_data", rows))
        assert status == 200, body
    status, _, backup = comp.request(
        "PUT",
        f"/api/v1/backups/{comp.device}/database/obd.db",
        raw=b"x" * 1000,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert status == 201, backup
    status, _, job = comp.request(
        "POST", "/api/v1/analyze", {"deviceId": comp.device, "driveId": 1}
    )
    assert status == 202, job
    deadline = time.monotonic() + 60
    while comp.request("GET", f"/api/v1/analyses/{job['id']}?wait=5")[2]["status"] != "done":
        assert time.monotonic() < deadline, "the analysis never finished"

    r = requests.get(f"{comp.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        check=False,
        input=r.content,
        capture_output=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()

    text = r.text
    assert sample(text, "chi_sync_rows", device=comp.device, table="realtime_data") == 300
    assert sample(text, "chi_sync_request_duration_seconds_count") == 3
    assert sample(text, "chi_sync_request_duration_seconds_bucket", le="+Inf") == 3
    assert sample(text, "chi_backups", device=comp.device, type="database") == 1
    assert sample(text, "chi_backup_bytes", device=comp.device, type="database") == 1000
    assert (
        0
        <= sample(text, "chi_backup_newest_age_seconds", device=comp.device, type="database")
        < 120
    )
    assert sample(text, "chi_replication_ok") == 0  # no replication has run here
    assert not re.search(r"^chi_replication_last_success_age_seconds ", text, re.M)
    assert sample(text, "chi_analysis_duration_seconds_count") == 1
    assert sample(text, "chi_ollama_up") == 1
    assert sample(text, "chi_ollama_model_present", model="gemma2:2b") == 1
    assert sample(text, "chi_sync_last_success_timestamp_seconds", device=comp.device) > 1.7e9

    # The replication wrapper's status file is read at each scrape.
    status_file = comp.data_dir / "replication" / "status.json"
    status_file.parent.mkdir(exist_ok=True)
    an_hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    status_file.write_text(
        json.dumps(
            {
                "started_at": an_hour_ago,
                "finished_at": an_hour_ago,
                "exit_code": 0,
                "last_success_at": an_hour_ago,
            }
        )
    )
    text = requests.get(f"{comp.url}/metrics", timeout=10).text
    assert 3590 <= sample(text, "chi_replication_last_success_age_seconds") < 3700
    assert sample(text, "chi_replication_last_exit_code") == 0
    assert sample(text, "chi_replication_ok") == 1


def test_metrics_can_be_limited_to_addresses(make_companion: Callable[..., Companion]) -> None:
    comp = make_companion(metrics={"allowed_addresses": "10.9.9.0/24, 192.0.2.7"})
    r = requests.get(f"{comp.url}/metrics", timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    comp.stop()
    comp = make_companion(metrics={"allowed_addresses": "192.0.2.7,127.0.0.0/8"})
    assert requests.get(f"{comp.url}/metrics", timeout=10).status_code == 200


def test_a_bad_address_list_stops_the_server_with_a_clear_message(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(start=False, metrics={"allowed_addresses": "10.0.0.0/24, nas"})
    with pytest.raises(RuntimeError, match="'nas' is not an IP address"):
        comp.start(wait=10)
