"""AI analysis of drives, end to end: a real companion process, real SQLite, and the
Ollama API emulator (a test double) as a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from chi_companion.analysis.digest import DIGEST_MAX_CHARS, digest_text
from chi_companion.analysis.result import RESULT_SCHEMA, validate_result

from tests.companion_process import Companion
from tests.ollama_emulator import OllamaEmulator
from tests.sync_payloads import PARAMETERS, realtime_rows, sync_body

MakeCompanion = Callable[..., Companion]
# Fast monitor polls keep the tests short; production polls every 15 s.
POLL = 0.3


@pytest.fixture
def emu() -> Iterator[OllamaEmulator]:
    emulator = OllamaEmulator(models=("gemma2:2b",)).start()
    yield emulator
    emulator.stop()


def start(make_companion: MakeCompanion, emu: OllamaEmulator, **analysis: Any) -> Companion:
    comp = make_companion(
        ollama={"url": emu.url, "poll_seconds": POLL},
        analysis={"auto": False, **analysis},
    )
    # The monitor's first probe counts as "Ollama is back" and releases waiting jobs: let it
    # happen before a test makes a job wait, so the test sees the wait it causes.
    deadline = time.monotonic() + 10
    while (
        comp.request("GET", "/api/v1/health", key=comp.operator_key)[2]["components"]["ollama"][
            "checkedAt"
        ]
        is None
    ):
        assert time.monotonic() < deadline, "the Ollama monitor never probed"
        time.sleep(0.05)
    return comp


def sync_drive(comp: Companion, drive_id: int, count: int, first_id: int = 1) -> None:
    rows = realtime_rows(first_id, count, drive_id=drive_id)
    for i in range(0, count, 500):
        status, _, body = comp.request(
            "POST", "/api/v1/sync", sync_body("realtime_data", rows[i : i + 500])
        )
        assert status == 200, body


def analyze(comp: Companion, expect: int = 202, key: str | bool = True, **body: Any) -> Any:
    payload = {"deviceId": comp.device, **body}
    status, _, answer = comp.request("POST", "/api/v1/analyze", payload, key=key)
    assert status == expect, answer
    return answer


def get(comp: Companion, analysis_id: int, wait: float = 0) -> dict[str, Any]:
    suffix = f"?wait={wait}" if wait else ""
    status, _, body = comp.request(
        "GET", f"/api/v1/analyses/{analysis_id}{suffix}", timeout=wait + 30
    )
    assert status == 200, body
    return dict(body)


def wait_status(
    comp: Companion, analysis_id: int, wanted: set[str], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = get(comp, analysis_id)
        if job["status"] in wanted:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"analysis {analysis_id} still {job['status']}: {job}")
        time.sleep(0.1)


def chats(emu: OllamaEmulator, drive_id: int | None = None) -> list[dict[str, Any]]:
    """The emulator's /api/chat requests, optionally only those about one drive."""
    found = []
    for method, path, body in emu.requests:
        if method != "POST" or path != "/api/chat" or not isinstance(body, dict):
            continue
        text = "\n".join(m["content"] for m in body["messages"])
        if drive_id is None or f'"driveId":{drive_id},' in text:
            found.append(body)
    return found


def result_file(comp: Companion, job: dict[str, Any]) -> dict[str, Any]:
    path = comp.data_dir / "ai_results" / comp.device / f"{job['id']}.json"
    assert job["resultFile"] == f"ai_results/{comp.device}/{job['id']}.json"
    return dict(json.loads(path.read_text()))


def health_ollama(comp: Companion) -> tuple[int, dict[str, Any], dict[str, Any]]:
    status, _, body = comp.request("GET", "/api/v1/health", key=comp.operator_key)
    return status, body, body["components"]["ollama"]


# --------------------------------------------------------------------------- end to end


def test_synced_drive_is_analysed_end_to_end(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=3, count=2000)
    alert = {
        "id": 1,
        "drive_id": 3,
        "timestamp": "2026-04-19T08:01:00Z",
        "alert_type": "COOLANT_HIGH",
        "value": 108.5,
    }
    assert comp.request("POST", "/api/v1/sync", sync_body("alert_log", [alert]))[0] == 200

    accepted = analyze(comp, driveId=3, focus=["cooling"])
    assert accepted["status"] == "queued"
    assert accepted["driveId"] == 3

    job = get(comp, accepted["id"], wait=20)
    assert job["status"] == "done", job
    stored = result_file(comp, job)
    # The API serves the result from the file: the two agree exactly.
    assert stored["result"] == job["result"]
    assert validate_result(job["result"]) == []
    assert [r["rank"] for r in job["result"]["recommendations"]] == list(
        range(1, len(job["result"]["recommendations"]) + 1)
    )
    assert stored["id"] == job["id"] and stored["driveId"] == 3
    assert stored["model"] == job["model"] == "gemma2:2b"
    assert stored["modelDigest"] == job["modelDigest"] and len(job["modelDigest"]) == 64
    assert stored["ollamaVersion"] == job["ollamaVersion"] == emu.version
    assert stored["promptVersion"] == "drive_analysis_v1"
    assert stored["durations"] == job["durations"]
    assert job["durations"]["ollamaMs"] > 0
    assert job["summary"] == job["result"]["summary"][:300]

    digest = stored["digest"]
    assert digest["rowCount"] == 2000 and digest["driveId"] == 3
    assert digest["alerts"] == [
        {"timestamp": "2026-04-19T08:01:00Z", "alert_type": "COOLANT_HIGH", "value": 108.5}
    ]
    rows = realtime_rows(1, 2000, drive_id=3)
    rpm = sorted(r["value"] for r in rows if r["parameter_name"] == "RPM")
    (entry,) = [p for p in digest["parameters"] if p["name"] == "RPM"]
    assert entry["n"] == len(rpm) and entry["unit"] == "rpm"
    assert entry["min"] == rpm[0] and entry["max"] == rpm[-1]
    assert entry["p50"] == rpm[int(0.5 * (len(rpm) - 1))]

    (chat,) = chats(emu)
    # Streamed, as Ollama answers by default; "think": false so a thinking model does not
    # spend num_predict before the answer; keep_alive a duration with its unit.
    assert chat["stream"] is True
    assert chat["think"] is False
    assert chat["format"] == RESULT_SCHEMA
    assert chat["keep_alive"] == "30m"
    assert chat["options"]["temperature"] <= 0.2
    assert chat["options"]["num_ctx"] == 8192
    system, user = chat["messages"]
    assert "OBD-II" in system["content"] and "cooling" in user["content"]
    assert digest_text(digest) in user["content"]

    # Asking again returns the existing analysis (no new model call) ...
    status, _, again = comp.request(
        "POST", "/api/v1/analyze", {"deviceId": comp.device, "driveId": 3}
    )
    assert status == 200 and again["id"] == job["id"] and again["existing"] is True
    # ... unless forced.
    forced = analyze(comp, driveId=3, force=True)
    assert forced["id"] != job["id"]
    assert get(comp, forced["id"], wait=20)["status"] == "done"
    assert len(chats(emu)) == 2

    status, _, listing = comp.request("GET", f"/api/v1/analyses?deviceId={comp.device}&driveId=3")
    assert status == 200
    assert [a["id"] for a in listing["analyses"]] == [forced["id"], job["id"]]
    assert all(a["status"] == "done" for a in listing["analyses"])


def test_requests_are_checked_and_devices_kept_apart(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=1, count=100)
    analyze(comp, expect=404, driveId=99)  # unknown drive
    assert analyze(comp, expect=404, deviceId="nope", driveId=1)["error"] == "unknown device"
    analyze(comp, expect=422, driveId=1, rows=[])
    analyze(comp, expect=422)
    analyze(comp, expect=422, driveId="1")
    analyze(comp, expect=422, driveId=1, focus=["x" * 80])
    analyze(comp, expect=422, rows=[{"parameter_name": "RPM", "value": "fast"}])
    analyze(comp, expect=401, key=False, driveId=1)
    # The other device's key may not ask for this device's drive ...
    analyze(comp, expect=403, key=comp.other_key, driveId=1)
    job = analyze(comp, driveId=1)
    # ... nor see its analyses, by id (404: ids do not reveal other devices' work) or list.
    status, _, _ = comp.request("GET", f"/api/v1/analyses/{job['id']}", key=comp.other_key)
    assert status == 404
    status, _, _ = comp.request(
        "GET", f"/api/v1/analyses?deviceId={comp.device}", key=comp.other_key
    )
    assert status == 404
    status, _, own = comp.request("GET", "/api/v1/analyses", key=comp.other_key)
    assert status == 200 and own["analyses"] == []
    # The operator sees every device.
    status, _, body = comp.request("GET", f"/api/v1/analyses/{job['id']}", key=comp.operator_key)
    assert status == 200 and body["deviceId"] == comp.device
    assert comp.request("GET", "/api/v1/analyses/999999")[0] == 404


def test_inline_rows_are_analysed_without_storing_them(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    rows = realtime_rows(1, 800, drive_id=5)
    accepted = analyze(comp, rows=rows, focus=["fuel"])
    assert accepted["source"] == "inline" and accepted["driveId"] is None
    job = get(comp, accepted["id"], wait=20)
    assert job["status"] == "done", job
    stored = result_file(comp, job)
    assert stored["digest"]["source"] == "inline"
    assert stored["digest"]["rowCount"] == 800
    assert {p["name"] for p in stored["digest"]["parameters"]} == {p[0] for p in PARAMETERS}
    # Nothing was written to the synced rows, and the same rows again are the same analysis.
    status, _, sync_status = comp.request("GET", "/api/v1/sync/status")
    assert sync_status["tables"] == {}
    status, _, again = comp.request(
        "POST", "/api/v1/analyze", {"deviceId": comp.device, "rows": rows}
    )
    assert status == 200 and again["id"] == job["id"]


# --------------------------------------------------------------------------- faults


def test_ollama_down_at_request_time_completes_when_it_is_back(
    make_companion: MakeCompanion,
) -> None:
    emulator = OllamaEmulator(models=("gemma2:2b",)).start()
    url = emulator.url
    emulator.stop()  # nothing listens on its port now
    try:
        comp = make_companion(ollama={"url": url, "poll_seconds": POLL}, analysis={"auto": False})
        sync_drive(comp, drive_id=1, count=200)
        accepted = analyze(comp, driveId=1)
        job = wait_status(comp, accepted["id"], {"waiting_for_ollama"})
        assert "connect" in job["error"]
        status, body, ollama = health_ollama(comp)
        assert status == 200 and body["status"] == "degraded"
        assert ollama["status"] == "degraded" and ollama["reachable"] is False
        assert ollama["queueDepth"] == 1

        emulator.start()  # same port as before
        assert emulator.url == url
        job = get(comp, accepted["id"], wait=20)
        assert job["status"] == "done", job
        assert len(chats(emulator)) == 1  # the one request, never re-sent by the client
        _, _, ollama = health_ollama(comp)
        assert ollama["reachable"] is True and ollama["lastAnalysisAt"] is not None
    finally:
        emulator.stop()


def test_dropped_connection_is_retried_with_backoff(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=1, count=200)
    emu.set_fault("drop", times=1, paths=("/api/chat",))
    accepted = analyze(comp, driveId=1)
    job = wait_status(comp, accepted["id"], {"waiting_for_ollama"})
    assert "nextAttemptAt" in job
    job = wait_status(comp, accepted["id"], {"done", "failed"}, timeout=30)
    assert job["status"] == "done" and job["attempts"] == 2
    assert len(chats(emu)) == 2


def test_missing_model_waits_and_completes_once_pulled(
    make_companion: MakeCompanion,
) -> None:
    emulator = OllamaEmulator(models=()).start()
    try:
        comp = make_companion(
            ollama={"url": emulator.url, "poll_seconds": POLL}, analysis={"auto": False}
        )
        sync_drive(comp, drive_id=2, count=200)
        accepted = analyze(comp, driveId=2)
        job = wait_status(comp, accepted["id"], {"waiting_for_model"})
        assert "not found" in job["error"]
        # The monitor's first probe may still be running (reachable is None until it ends).
        deadline = time.monotonic() + 10
        status, body, ollama = health_ollama(comp)
        while ollama.get("reachable") is None and time.monotonic() < deadline:
            time.sleep(POLL)
            status, body, ollama = health_ollama(comp)
        assert status == 200 and body["status"] == "degraded"
        assert ollama["reachable"] is True and ollama["modelPresent"] is False
        assert ollama["queue"]["waiting_for_model"] == 1
        assert "gemma2:2b" in ollama["detail"]

        pull = requests.post(
            emulator.url + "/api/pull", json={"model": "gemma2:2b", "stream": False}, timeout=10
        )
        assert pull.json() == {"status": "success"}
        job = get(comp, accepted["id"], wait=20)
        assert job["status"] == "done", job
        _, _, ollama = health_ollama(comp)
        assert ollama["modelPresent"] is True and ollama["status"] == "ok"
    finally:
        emulator.stop()


def test_invalid_output_twice_fails_with_the_raw_text_kept(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=1, count=200)
    emu.set_fault("invalid_json", times=2)
    accepted = analyze(comp, driveId=1)
    job = wait_status(comp, accepted["id"], {"done", "failed"})
    assert job["status"] == "failed"
    assert "invalid 2 times" in job["error"] and "not valid JSON" in job["error"]
    assert job["rawOutput"].startswith("Sure! Here is the analysis")
    assert job["result"] is None
    assert not (comp.data_dir / "ai_results" / comp.device / f"{job['id']}.json").exists()
    assert len(chats(emu)) == 2

    # The operator's retry runs it again (the fault is used up now).
    out = run_cli(comp, "analyses", "retry", str(job["id"]))
    assert out.returncode == 0, out.stderr
    job = get(comp, job["id"], wait=20)
    assert job["status"] == "done", job
    assert "rawOutput" not in job


def test_answer_cut_at_the_token_limit_fails_with_that_cause(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=1, count=200)
    emu.set_fault("length", times=1)
    accepted = analyze(comp, driveId=1)
    job = wait_status(comp, accepted["id"], {"done", "failed"})
    assert job["status"] == "failed"
    assert 'done_reason "length"' in job["error"] and "token limit" in job["error"]
    assert "invalid" not in job["error"]
    assert job["rawOutput"]  # the cut answer is kept for the operator
    assert len(chats(emu)) == 1  # not retried: the same prompt is cut the same way


def test_prompt_over_the_context_length_fails_with_ollamas_words(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=1, count=200)
    emu.set_fault("context_length", times=1)
    job = wait_status(comp, analyze(comp, driveId=1)["id"], {"done", "failed"})
    assert job["status"] == "failed"
    assert "prompt is longer than the context length" in job["error"]
    assert "(400)" in job["error"]


def test_busy_ollama_is_waited_for_and_then_answers(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=1, count=200)
    emu.set_fault("busy", times=1)
    accepted = analyze(comp, driveId=1)
    job = wait_status(comp, accepted["id"], {"waiting_for_ollama", "done", "failed"})
    assert job["status"] == "waiting_for_ollama", job
    assert "503" in job["error"] and "maximum pending requests" in job["error"]
    # The fault is used up: after its backoff the job runs again and completes.
    assert get(comp, accepted["id"], wait=25)["status"] == "done"


def test_health_reports_where_the_model_runs(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    _, _, ollama = health_ollama(comp)
    deadline = time.monotonic() + 10
    while ollama.get("checkedAt") is None and time.monotonic() < deadline:
        time.sleep(0.1)
        _, _, ollama = health_ollama(comp)
    assert ollama["modelLoaded"] is False and ollama["processor"] is None
    assert ollama["vramBytes"] is None
    sync_drive(comp, drive_id=1, count=200)
    assert get(comp, analyze(comp, driveId=1)["id"], wait=20)["status"] == "done"
    deadline = time.monotonic() + 10
    while not ollama["modelLoaded"] and time.monotonic() < deadline:
        time.sleep(0.1)
        _, _, ollama = health_ollama(comp)
    # The emulator reports the model loaded with size_vram 0: on the CPU.
    assert ollama["modelLoaded"] is True
    assert ollama["processor"] == "cpu" and ollama["vramBytes"] == 0
    assert ollama["modelBytes"] > 0 and ollama["loadedUntil"]
    assert ollama["status"] == "ok" and "CPU" in ollama["detail"]


def test_invalid_output_once_succeeds_on_the_retry(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=1, count=200)
    emu.set_fault("schema_invalid", times=1)
    job = get(comp, analyze(comp, driveId=1)["id"], wait=20)
    assert job["status"] == "done", job
    assert job["attempts"] == 2
    assert len(chats(emu)) == 2
    assert validate_result(result_file(comp, job)["result"]) == []


def test_timeout_is_retried_once_then_fails_with_the_reason(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = make_companion(
        ollama={"url": emu.url, "poll_seconds": POLL, "timeout_seconds": 0.5},
        analysis={"auto": False},
    )
    sync_drive(comp, drive_id=1, count=100)
    emu.delay_seconds = 1.5
    emu.set_fault("slow", paths=("/api/chat",))
    job = wait_status(comp, analyze(comp, driveId=1)["id"], {"done", "failed"})
    assert job["status"] == "failed"
    assert "timed out 2 times" in job["error"]
    assert len(chats(emu)) == 2


def test_full_queue_answers_429_with_retry_after(make_companion: MakeCompanion) -> None:
    # Ollama down: jobs stay queued, so the queue fills.
    comp = make_companion(analysis={"auto": False, "max_queue": 2, "device_queue_share": 1})
    for drive in (1, 2, 3):
        sync_drive(comp, drive_id=drive, count=20, first_id=drive * 1000)
    analyze(comp, driveId=1)
    analyze(comp, driveId=2)
    status, headers, body = comp.request(
        "POST", "/api/v1/analyze", {"deviceId": comp.device, "driveId": 3}
    )
    assert status == 429, body
    assert int(headers["Retry-After"]) > 0


def test_one_device_cannot_fill_the_queue_for_all(make_companion: MakeCompanion) -> None:
    # max_queue 4, share 0.5: each device may hold 2; Ollama is down, so jobs stay queued.
    comp = make_companion(analysis={"auto": False, "max_queue": 4, "device_queue_share": 0.5})
    for drive in (1, 2, 3):
        sync_drive(comp, drive_id=drive, count=20, first_id=drive * 1000)
    analyze(comp, driveId=1)
    analyze(comp, driveId=2)
    status, headers, body = comp.request(
        "POST", "/api/v1/analyze", {"deviceId": comp.device, "driveId": 3}
    )
    assert status == 429 and "device_queue_share" in body["detail"], body
    assert int(headers["Retry-After"]) > 0
    # Checked before the rows are even read: a full share answers 429 to inline rows that
    # would be refused as invalid (422) otherwise, so no digest work is spent on them.
    status, _, body = comp.request(
        "POST", "/api/v1/analyze", {"deviceId": comp.device, "rows": [{"value": "x"}]}
    )
    assert status == 429, body
    # The other device still has its share.
    other = sync_body("realtime_data", realtime_rows(1, 20, drive_id=9))
    other["deviceId"] = comp.other_device
    assert comp.request("POST", "/api/v1/sync", other, key=comp.other_key)[0] == 200
    analyze(comp, key=comp.other_key, deviceId=comp.other_device, driveId=9)


def test_inline_rows_have_their_own_smaller_body_limit(make_companion: MakeCompanion) -> None:
    comp = make_companion(analysis={"auto": False, "max_inline_body_bytes": 10_000})
    rows = [
        {"parameter_name": "RPM", "value": 900.0 + i, "timestamp": "2026-04-19T08:00:00Z"}
        for i in range(300)
    ]
    status, _, body = comp.request(
        "POST", "/api/v1/analyze", {"deviceId": comp.device, "rows": rows}
    )
    assert status == 413 and "max_inline_body_bytes" in body["detail"], body
    analyze(comp, rows=rows[:50])  # a small inline body is still accepted


# --------------------------------------------------------------------------- restart


def _running_and_queued(comp: Companion, emu: OllamaEmulator) -> tuple[int, int]:
    """Drive 1's analysis in the middle of a (slow) model call, drive 2's queued behind it."""
    sync_drive(comp, drive_id=1, count=200)
    sync_drive(comp, drive_id=2, count=200, first_id=10_000)
    emu.delay_seconds = 3.0
    emu.set_fault("slow", paths=("/api/chat",))
    first = analyze(comp, driveId=1)["id"]
    wait_status(comp, first, {"running"})
    deadline = time.monotonic() + 10
    while not chats(emu, 1):  # the model call is really in flight
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = analyze(comp, driveId=2)["id"]
    assert get(comp, second)["status"] == "queued"
    return first, second


def test_crash_with_a_running_and_a_queued_job_completes_both_once(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    first, second = _running_and_queued(comp, emu)
    comp.kill9()
    emu.set_fault("none")
    before = {1: len(chats(emu, 1)), 2: len(chats(emu, 2))}
    assert before == {1: 1, 2: 0}

    comp.start()
    for analysis_id in (first, second):
        assert get(comp, analysis_id, wait=20)["status"] == "done"
    time.sleep(1.5)  # give a wrongly re-queued job the time to run again
    # After the restart each job went to the model exactly once: the interrupted call
    # of drive 1 once more (its answer was lost with the process), drive 2 for the first time.
    assert len(chats(emu, 1)) - before[1] == 1
    assert len(chats(emu, 2)) - before[2] == 1
    assert len(chats(emu)) == 3
    listing = comp.request("GET", "/api/v1/analyses")[2]["analyses"]
    assert sorted(a["id"] for a in listing) == sorted([first, second])
    for analysis_id in (first, second):
        assert result_file(comp, get(comp, analysis_id))["id"] == analysis_id


def test_graceful_restart_with_a_running_and_a_queued_job_runs_each_once(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    first, second = _running_and_queued(comp, emu)
    comp.stop()  # SIGTERM: the call in flight may finish within the grace period
    emu.set_fault("none")
    comp.start()
    for analysis_id in (first, second):
        assert get(comp, analysis_id, wait=20)["status"] == "done"
    time.sleep(1.5)
    assert len(chats(emu, 1)) == 1
    assert len(chats(emu, 2)) == 1


# --------------------------------------------------------------------------- automatic


@pytest.mark.slow(seconds=16)
def test_automatic_analysis_fires_for_a_quiet_drive_only(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    # A 3-second quiet period; the poller looks every 0.75 s.
    comp = make_companion(
        ollama={"url": emu.url, "poll_seconds": POLL},
        analysis={"auto": True, "quiet_minutes": 0.05},
    )
    sync_drive(comp, drive_id=1, count=200)

    def analyses(drive: int) -> list[dict[str, Any]]:
        status, _, body = comp.request("GET", f"/api/v1/analyses?driveId={drive}")
        assert status == 200
        return list(body["analyses"])

    # Drive 2 keeps receiving rows (the Pi syncs every few seconds while driving).
    next_id = 50_000
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        sync_drive(comp, drive_id=2, count=8, first_id=next_id)
        next_id += 8
        time.sleep(0.5)
    (auto,) = analyses(1)
    assert auto["trigger"] == "auto"
    assert analyses(2) == []
    # Once drive 2 goes quiet it is analysed too, exactly once.
    deadline = time.monotonic() + 15
    while not analyses(2):
        assert time.monotonic() < deadline, "drive 2 was never analysed"
        time.sleep(0.2)
    assert get(comp, auto["id"], wait=20)["status"] == "done"
    time.sleep(1.5)
    assert len(analyses(1)) == 1 and len(analyses(2)) == 1


# --------------------------------------------------------------------------- size bound


def many_parameter_rows(first_id: int, count: int, drive_id: int, names: int) -> list[Any]:
    rows = []
    for row_id in range(first_id, first_id + count):
        second = row_id // names
        rows.append(
            {
                "id": row_id,
                "timestamp": f"2026-04-19T{8 + second // 3600:02d}:{second // 60 % 60:02d}:"
                f"{second % 60:02d}Z",
                "parameter_name": f"PID_{row_id % names:02d}_SENSOR_READING",
                "value": (row_id * 7919 % 10007) / 10.0,
                "unit": "kPa",
                "profile_id": "daily",
                "data_source": "real",
                "drive_id": drive_id,
            }
        )
    return rows


@pytest.mark.slow(seconds=15)
def test_digest_of_a_100k_row_drive_stays_under_the_size_bound(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    names = 50  # more than the digest shows, so trimming is exercised as well
    total = 100_000
    for first in range(1, total + 1, 500):
        rows = many_parameter_rows(first, 500, drive_id=9, names=names)
        status, _, body = comp.request("POST", "/api/v1/sync", sync_body("realtime_data", rows))
        assert status == 200, body
    job = get(comp, analyze(comp, driveId=9)["id"], wait=30)
    assert job["status"] == "done", job
    digest = result_file(comp, job)["digest"]
    assert len(digest_text(digest)) <= DIGEST_MAX_CHARS
    assert digest["rowCount"] == total
    assert digest["parameterCount"] == names
    assert digest["truncated"] is True
    shown = digest["parameters"]
    assert shown and all(p["n"] == total // names for p in shown)
    assert len(shown) + digest["omittedParameterCount"] == names
    (chat,) = chats(emu)
    # What the model gets is bounded too: the digest plus the fixed instructions.
    assert sum(len(m["content"]) for m in chat["messages"]) < DIGEST_MAX_CHARS + 4000


# --------------------------------------------------------------------------- CLI


def run_cli(comp: Companion, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chi_companion", *args, "--config", str(comp.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )


def test_cli_lists_shows_and_refuses_to_retry_a_done_analysis(
    make_companion: MakeCompanion, emu: OllamaEmulator
) -> None:
    comp = start(make_companion, emu)
    sync_drive(comp, drive_id=4, count=100)
    job = get(comp, analyze(comp, driveId=4)["id"], wait=20)
    assert job["status"] == "done"

    out = run_cli(comp, "analyses", "list")
    assert out.returncode == 0, out.stderr
    (line,) = [ln for ln in out.stdout.splitlines() if ln.split()[0] == str(job["id"])]
    assert "done" in line and comp.device in line

    out = run_cli(comp, "analyses", "show", str(job["id"]))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"] == job["result"]

    out = run_cli(comp, "analyses", "retry", str(job["id"]))
    assert out.returncode == 1 and "only failed or waiting" in out.stderr
    out = run_cli(comp, "analyses", "show", "424242")
    assert out.returncode == 1 and "no analysis" in out.stderr
