"""Tests of the Ollama API emulator (a TEST DOUBLE) and of the fake release builder.

Everything goes over real HTTP on 127.0.0.1 (ephemeral ports); the CLI tests run the emulator
as a separate process the way the Molecule hosts run it (`bin/ollama serve`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from tests.ollama_emulator import FAULT_KINDS, OllamaEmulator
from tests.ollama_emulator.build_release import build_release, marker_name

EMULATOR_PY = Path(__file__).resolve().parent / "ollama_emulator" / "emulator.py"

ANALYSIS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["summary", "recommendations", "anomalies"],
    "properties": {
        "summary": {"type": "string", "minLength": 10, "maxLength": 600},
        "recommendations": {
            "type": "array",
            "minItems": 1,
            "maxItems": 10,
            "items": {"$ref": "#/$defs/recommendation"},
        },
        "anomalies": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["parameter", "description", "severity"],
                "properties": {
                    "parameter": {"type": "string"},
                    "description": {"type": "string"},
                    "severity": {"enum": ["low", "medium", "high"]},
                    "timestamp": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
            },
        },
    },
    "$defs": {
        "recommendation": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rank", "category", "recommendation", "confidence", "evidence"],
            "properties": {
                "rank": {"type": "integer", "minimum": 1},
                "category": {"type": "string", "enum": ["fuel", "ignition", "cooling", "other"]},
                "recommendation": {"type": "string", "minLength": 1},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "evidence": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            },
        }
    },
}

PROMPT = (
    "You analyse OBD-II data. Drive digest: RPM min 800 max 6500 mean 2400 (rpm); "
    "COOLANT_TEMP max 104 (C); SHORT_FUEL_TRIM_1 mean -7.5 (%); engine_load p95 81. "
    "Respond in JSON."
)


# --------------------------------------------------------------------------- helpers


def call(
    url: str, method: str, path: str, body: Any = None, timeout: float = 10
) -> tuple[int, bytes, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    resp = requests.request(
        method,
        url + path,
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=timeout,
        allow_redirects=False,
    )
    return resp.status_code, resp.content, dict(resp.headers)


def call_json(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, raw, _ = call(url, method, path, body)
    return status, json.loads(raw) if raw else None


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def emu() -> Iterator[OllamaEmulator]:
    emulator = OllamaEmulator(models=("gemma2:2b",), version="0.12.3").start()
    try:
        yield emulator
    finally:
        emulator.stop()


def chat(emu: OllamaEmulator, fmt: Any = None, stream: bool = False, model: str = "gemma2:2b"):
    body: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if fmt is not None:
        body["format"] = fmt
    return call(emu.url, "POST", "/api/chat", body)


# --------------------------------------------------------------------------- basic API


def test_root_and_head_and_version(emu: OllamaEmulator) -> None:
    status, raw, headers = call(emu.url, "GET", "/")
    assert (status, raw) == (200, b"Ollama is running")
    status, raw, headers = call(emu.url, "HEAD", "/")
    assert status == 200 and raw == b""
    assert headers["Content-Length"] == str(len("Ollama is running"))
    assert call_json(emu.url, "GET", "/api/version") == (200, {"version": "0.12.3"})


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:11434", 200),
        ("localhost:11434", 200),
        ("192.168.1.20:11434", 200),  # a private (RFC 1918) address, as LAN clients send
        (f"{socket.gethostname()}:11434", 200),  # the server's own hostname
        ("chi-srv-01.local:11434", 200),
        ("[::1]:11434", 200),
        ("chi-srv-01.example.org:11434", 403),  # a DNS name: Ollama refuses it
        ("203.0.113.7:11434", 403),  # a public address
    ],
)
def test_loopback_server_checks_the_host_header(
    emu: OllamaEmulator, host: str, status: int
) -> None:
    # Ollama's DNS-rebinding guard applies to a server bound to loopback (ours always is: the
    # LAN exposure is a socket proxy in front of it). Only the Host header changes here.
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    try:
        conn.request("GET", "/api/version", headers={"Host": host})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == status, body
    if status == 403:
        assert body == b""


def test_tags_shape_and_model_changes(emu: OllamaEmulator) -> None:
    status, body = call_json(emu.url, "GET", "/api/tags")
    assert status == 200
    [model] = body["models"]
    assert set(model) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert model["name"] == model["model"] == "gemma2:2b"
    assert len(model["digest"]) == 64 and int(model["digest"], 16) >= 0
    assert model["details"]["family"] == "gemma2"
    assert model["details"]["parameter_size"] == "2.6B"
    assert model["modified_at"].endswith("Z")
    emu.add_model("llama3.2")  # default tag, as Ollama names it
    names = [m["name"] for m in call_json(emu.url, "GET", "/api/tags")[1]["models"]]
    assert sorted(names) == ["gemma2:2b", "llama3.2:latest"]
    assert emu.remove_model("gemma2:2b") is True
    assert emu.remove_model("gemma2:2b") is False
    names = [m["name"] for m in call_json(emu.url, "GET", "/api/tags")[1]["models"]]
    assert names == ["llama3.2:latest"]


def test_show_and_missing_model_wording(emu: OllamaEmulator) -> None:
    status, body = call_json(emu.url, "POST", "/api/show", {"model": "gemma2:2b"})
    assert status == 200
    assert body["details"]["quantization_level"] == "Q4_0"
    assert body["model_info"]["gemma2.context_length"] == 8192
    assert call_json(emu.url, "POST", "/api/show", {"model": "nope:1b"}) == (
        404,
        {"error": "model 'nope:1b' not found"},
    )
    assert call_json(emu.url, "POST", "/api/show", {}) == (400, {"error": "model is required"})


def test_unknown_route_and_method(emu: OllamaEmulator) -> None:
    assert call(emu.url, "GET", "/api/nothing")[:2] == (404, b"404 page not found")
    assert call(emu.url, "GET", "/api/pull")[:2] == (405, b"405 method not allowed")


def test_delete_then_404(emu: OllamaEmulator) -> None:
    status, raw, _ = call(emu.url, "DELETE", "/api/delete", {"model": "gemma2:2b"})
    assert (status, raw) == (200, b"")
    assert call_json(emu.url, "DELETE", "/api/delete", {"model": "gemma2:2b"}) == (
        404,
        {"error": "model 'gemma2:2b' not found"},
    )
    assert emu.models == []


# --------------------------------------------------------------------------- pull


def test_pull_streams_progress_then_model_is_listed(emu: OllamaEmulator) -> None:
    status, raw, headers = call(emu.url, "POST", "/api/pull", {"model": "llama3.2:1b"})
    assert status == 200
    assert headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(raw)
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer_lines = [line for line in lines if line["status"].startswith("pulling ")][1:]
    assert layer_lines, "expected per-layer progress lines"
    for line in layer_lines:
        assert line["digest"].startswith("sha256:")
        assert line["status"] == f"pulling {line['digest'][7:19]}"
        assert 0 <= line["completed"] <= line["total"]
    assert any(line["completed"] == line["total"] for line in layer_lines)
    names = [m["name"] for m in call_json(emu.url, "GET", "/api/tags")[1]["models"]]
    assert "llama3.2:1b" in names


def test_pull_without_stream_and_unknown_model(emu: OllamaEmulator) -> None:
    assert call_json(emu.url, "POST", "/api/pull", {"model": "qwen2.5:0.5b", "stream": False}) == (
        200,
        {"status": "success"},
    )
    assert "qwen2.5:0.5b" in emu.models
    status, raw, _ = call(emu.url, "POST", "/api/pull", {"model": "nonexistent:1b"})
    assert status == 200  # the error arrives after streaming started, as with real Ollama
    lines = ndjson(raw)
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"error": "pull model manifest: file does not exist"}
    assert call_json(
        emu.url, "POST", "/api/pull", {"model": "nonexistent:1b", "stream": False}
    ) == (500, {"error": "pull model manifest: file does not exist"})
    assert "nonexistent:1b" not in emu.models


def test_pull_of_present_model_still_succeeds_and_keeps_one_entry(emu: OllamaEmulator) -> None:
    lines = ndjson(call(emu.url, "POST", "/api/pull", {"model": "gemma2:2b"})[1])
    assert lines[-1] == {"status": "success"}
    names = [m["name"] for m in call_json(emu.url, "GET", "/api/tags")[1]["models"]]
    assert names == ["gemma2:2b"]


# --------------------------------------------------------------------------- chat / generate


def test_chat_stream_chunks_and_final_stats(emu: OllamaEmulator) -> None:
    status, raw, headers = chat(emu, stream=True)
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(raw)
    assert len(lines) >= 3
    assert all(line["done"] is False for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_count"):
        assert isinstance(final[key], int) and final[key] > 0
    text = "".join(line["message"]["content"] for line in lines)
    assert "RPM" in text and "gemma2:2b" in text


def test_generate_non_stream_single_object(emu: OllamaEmulator) -> None:
    status, body = call_json(
        emu.url,
        "POST",
        "/api/generate",
        {"model": "gemma2:2b", "prompt": PROMPT, "stream": False},
    )
    assert status == 200
    assert body["done"] is True and body["response"] and body["context"]
    assert body["eval_count"] > 0


def test_generate_stream_ends_with_done(emu: OllamaEmulator) -> None:
    _, raw, _ = call(emu.url, "POST", "/api/generate", {"model": "gemma2:2b", "prompt": "RPM?"})
    lines = ndjson(raw)
    assert lines[-1]["done"] is True and lines[-1]["response"] == ""
    assert "".join(line["response"] for line in lines[:-1])


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_missing_model_is_404_with_ollama_wording(emu: OllamaEmulator, path: str) -> None:
    # server/routes.go: chat and generate answer a model that is not pulled like this.
    body = {"model": "gemma2:9b", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    assert call_json(emu.url, "POST", path, body) == (
        404,
        {"error": 'model "gemma2:9b" not found, try pulling it first'},
    )


@pytest.mark.parametrize(
    ("keep_alive", "error"),
    [
        ("600", 'time: missing unit in duration "600"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("forever", 'time: invalid duration "forever"'),
    ],
)
def test_keep_alive_string_is_a_go_duration(
    emu: OllamaEmulator, keep_alive: str, error: str
) -> None:
    body = {"model": "gemma2:2b", "messages": [], "keep_alive": keep_alive}
    assert call_json(emu.url, "POST", "/api/chat", body) == (400, {"error": error})


@pytest.mark.parametrize("keep_alive", ["10m", "1h30m", "0", -1, 600])
def test_keep_alive_accepted_forms(emu: OllamaEmulator, keep_alive: object) -> None:
    body = {"model": "gemma2:2b", "messages": [], "keep_alive": keep_alive}
    status, reply = call_json(emu.url, "POST", "/api/chat", body)
    assert status == 200 and reply["done"] is True


@pytest.mark.parametrize(("think", "status"), [(False, 200), (True, 400)])
def test_think_is_refused_only_when_true(emu: OllamaEmulator, think: bool, status: int) -> None:
    body = {"model": "gemma2:2b", "prompt": "RPM?", "stream": False, "think": think}
    got, reply = call_json(emu.url, "POST", "/api/generate", body)
    assert got == status
    if status == 400:
        assert reply == {"error": '"gemma2:2b" does not support thinking'}


def test_model_names_compare_case_insensitively(emu: OllamaEmulator) -> None:
    body = {"model": "GEMMA2:2B", "prompt": "RPM?", "stream": False}
    status, reply = call_json(emu.url, "POST", "/api/generate", body)
    assert status == 200 and reply["response"]


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        ("busy", 503, "server busy, please try again.  maximum pending requests exceeded"),
        ("context_length", 400, "prompt is longer than the context length"),
    ],
)
def test_runner_refusals(emu: OllamaEmulator, fault: str, status: int, error: str) -> None:
    emu.set_fault(fault, times=1)
    body = {"model": "gemma2:2b", "prompt": "RPM?", "stream": False}
    assert call_json(emu.url, "POST", "/api/generate", body) == (status, {"error": error})
    assert call_json(emu.url, "POST", "/api/generate", body)[0] == 200  # used up


def test_length_fault_cuts_the_answer(emu: OllamaEmulator) -> None:
    emu.set_fault("length", times=1)
    body = {"model": "gemma2:2b", "prompt": "RPM?", "stream": False, "format": "json"}
    status, reply = call_json(emu.url, "POST", "/api/generate", body)
    assert status == 200 and reply["done_reason"] == "length"
    with pytest.raises(ValueError):
        json.loads(reply["response"])


def test_schema_format_gives_schema_valid_json_naming_prompt_parameters(
    emu: OllamaEmulator,
) -> None:
    status, body = call_json(
        emu.url,
        "POST",
        "/api/chat",
        {
            "model": "gemma2:2b",
            "stream": False,
            "format": ANALYSIS_SCHEMA,
            "messages": [{"role": "user", "content": PROMPT}],
        },
    )
    assert status == 200
    content = json.loads(body["message"]["content"])
    jsonschema.validate(content, ANALYSIS_SCHEMA)
    text = json.dumps(content)
    for name in ("RPM", "COOLANT_TEMP", "SHORT_FUEL_TRIM_1"):
        assert name in text
    ranks = [r["rank"] for r in content["recommendations"]]
    assert ranks == sorted(ranks) and ranks[0] == 1


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}}},
        {"type": "array", "items": {"type": "number", "exclusiveMinimum": 3}, "minItems": 2},
        {"type": "string", "minLength": 40, "maxLength": 50},
        {"type": "object", "required": ["x"], "properties": {"x": {"const": 7}}},
        {"allOf": [{"properties": {"a": {"type": "string"}}}, {"required": ["a", "b"]}]},
        {"type": ["null", "integer"], "minimum": 10, "maximum": 12, "multipleOf": 4},
        {"oneOf": [{"type": "null"}, {"type": "string", "format": "date-time"}]},
    ],
)
def test_assorted_schemas_validate(emu: OllamaEmulator, schema: dict[str, Any]) -> None:
    status, raw, _ = chat(emu, fmt=schema)
    assert status == 200
    content = json.loads(json.loads(raw)["message"]["content"])
    jsonschema.validate(content, schema)


def test_json_mode_returns_object(emu: OllamaEmulator) -> None:
    status, raw, _ = chat(emu, fmt="json")
    assert status == 200
    content = json.loads(json.loads(raw)["message"]["content"])
    assert isinstance(content, dict) and "RPM" in content["parameters"]


def test_ps_lists_used_model_and_keep_alive_zero_unloads(emu: OllamaEmulator) -> None:
    assert call_json(emu.url, "GET", "/api/ps") == (200, {"models": []})
    call(
        emu.url,
        "POST",
        "/api/generate",
        {"model": "gemma2:2b", "prompt": "hi", "stream": False, "keep_alive": "30m"},
    )
    [loaded] = call_json(emu.url, "GET", "/api/ps")[1]["models"]
    assert loaded["name"] == "gemma2:2b" and loaded["expires_at"].endswith("Z")
    status, body = call_json(
        emu.url, "POST", "/api/chat", {"model": "gemma2:2b", "messages": [], "keep_alive": 0}
    )
    assert status == 200 and body["done_reason"] == "unload"
    assert call_json(emu.url, "GET", "/api/ps")[1]["models"] == []


# --------------------------------------------------------------------------- faults


def test_http500_for_given_number_of_requests(emu: OllamaEmulator) -> None:
    emu.set_fault("http500", times=2)
    assert call_json(emu.url, "GET", "/api/version")[0] == 500
    status, body = call_json(emu.url, "GET", "/api/tags")
    assert status == 500 and "error" in body
    assert call_json(emu.url, "GET", "/api/version")[0] == 200
    assert emu.fault == "none"


def test_drop_closes_connection_without_response(emu: OllamaEmulator) -> None:
    emu.set_fault("drop", times=1)
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    conn.request("POST", "/api/chat", body=json.dumps({"model": "gemma2:2b", "messages": []}))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.getresponse()
    conn.close()
    assert call_json(emu.url, "GET", "/api/version")[0] == 200


def test_invalid_json_fault_only_hits_content_endpoints(emu: OllamaEmulator) -> None:
    emu.set_fault("invalid_json", times=1)
    assert call_json(emu.url, "GET", "/api/tags")[0] == 200  # not counted
    status, raw, _ = chat(emu, fmt=ANALYSIS_SCHEMA)
    assert status == 200
    content = json.loads(raw)["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    content = json.loads(json.loads(chat(emu, fmt=ANALYSIS_SCHEMA)[1])["message"]["content"])
    jsonschema.validate(content, ANALYSIS_SCHEMA)


def test_schema_invalid_fault_breaks_schema_but_stays_json(emu: OllamaEmulator) -> None:
    emu.set_fault("schema_invalid")  # until cleared
    for _ in range(2):
        content = json.loads(json.loads(chat(emu, fmt=ANALYSIS_SCHEMA)[1])["message"]["content"])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(content, ANALYSIS_SCHEMA)
    emu.set_fault("none")
    content = json.loads(json.loads(chat(emu, fmt=ANALYSIS_SCHEMA)[1])["message"]["content"])
    jsonschema.validate(content, ANALYSIS_SCHEMA)


def test_slow_fault_delays_and_paths_filter(emu: OllamaEmulator) -> None:
    emu.delay_seconds = 0.6
    emu.set_fault("slow", times=1, paths=["/api/chat"])
    started = time.monotonic()
    call(emu.url, "GET", "/api/version")
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    assert chat(emu)[0] == 200
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    chat(emu)
    assert time.monotonic() - started < 0.5


def test_set_fault_rejects_unknown_kind(emu: OllamaEmulator) -> None:
    with pytest.raises(ValueError):
        emu.set_fault("explode")
    with pytest.raises(ValueError):
        emu.set_fault("http500", times=0)
    assert "none" in FAULT_KINDS


def test_control_endpoint_steers_faults_and_models(emu: OllamaEmulator) -> None:
    status, state = call_json(
        emu.url, "POST", "/__emulator__/fault", {"kind": "http500", "times": 1}
    )
    assert status == 200 and state["fault"] == "http500" and state["test_double"] is True
    assert call_json(emu.url, "GET", "/api/version")[0] == 500
    assert call_json(emu.url, "GET", "/api/version")[0] == 200
    assert call_json(emu.url, "POST", "/__emulator__/fault", {"kind": "bogus"})[0] == 400
    status, state = call_json(
        emu.url, "POST", "/__emulator__/models", {"add": ["gemma3:1b"], "remove": ["gemma2:2b"]}
    )
    assert status == 200 and state["models"] == ["gemma3:1b"]
    status, body = call_json(emu.url, "GET", "/__emulator__/requests")
    paths = [r[1] for r in body["requests"]]
    assert paths == ["/api/version", "/api/version"]  # control calls are not recorded


def test_requests_are_recorded_with_bodies(emu: OllamaEmulator) -> None:
    chat(emu, fmt="json")
    call(emu.url, "GET", "/api/tags")
    method, path, body = emu.requests[0]
    assert (method, path) == ("POST", "/api/chat")
    assert body["format"] == "json" and body["model"] == "gemma2:2b"
    assert emu.requests[1] == ("GET", "/api/tags", None)
    emu.clear_requests()
    assert emu.requests == []


def test_stop_refuses_connections_and_restart_reuses_port() -> None:
    emulator = OllamaEmulator().start()
    port = emulator.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/api/version")
    assert conn.getresponse().read()  # keep-alive connection now open
    emulator.stop()
    with pytest.raises(OSError):
        call(emulator.url, "GET", "/api/version", timeout=2)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/api/version")
        conn.getresponse()
    conn.close()
    emulator.start()
    try:
        assert emulator.port == port
        assert call_json(emulator.url, "GET", "/api/version")[0] == 200
    finally:
        emulator.stop()


# --------------------------------------------------------------------------- CLI process


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EMULATOR_PY), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def start_serve(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(EMULATOR_PY), "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = "http://" + env["OLLAMA_HOST"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if call(url, "GET", "/api/version", timeout=1)[0] == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"emulator did not start: {proc.communicate()[1]}")


def stop_serve(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    return stderr


def test_cli_serve_pull_list_version_and_persistence(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(tmp_path / "m"))
    proc = start_serve(env)
    try:
        version = run_cli(env, "--version")
        assert version.stdout.strip() == "ollama version is 0.12.3"
        pulled = run_cli(env, "pull", "gemma2:2b")
        assert pulled.returncode == 0 and pulled.stdout.splitlines()[-1] == "success"
        failed = run_cli(env, "pull", "nonexistent:1b")
        assert failed.returncode == 1
        assert "pull model manifest: file does not exist" in failed.stderr
        listing = run_cli(env, "list")
        assert listing.returncode == 0 and "gemma2:2b" in listing.stdout
    finally:
        log = stop_serve(proc)
    assert "TEST DOUBLE" in log and f"Listening on 127.0.0.1:{port}" in log
    manifests = list((tmp_path / "m" / "manifests").rglob("2b"))
    assert manifests, "pulled model should be written under OLLAMA_MODELS"
    proc = start_serve(env)  # a restart keeps pulled models, like real Ollama
    try:
        status, body = call_json(f"http://127.0.0.1:{port}", "GET", "/api/tags")
        assert status == 200
        assert [m["name"] for m in body["models"]] == ["gemma2:2b"]
        assert run_cli(env, "rm", "gemma2:2b").stdout.strip() == "deleted 'gemma2:2b'"
    finally:
        stop_serve(proc)
    assert not manifests[0].exists()


def test_cli_version_without_server_warns_like_ollama() -> None:
    env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    result = run_cli(env, "-v")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "Warning: could not connect to a running Ollama instance",
        "Warning: client version is 0.12.3",
    ]


def test_cli_serve_fails_on_unusable_models_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = dict(
        os.environ,
        OLLAMA_HOST=f"127.0.0.1:{free_port()}",
        OLLAMA_MODELS=str(blocker / "models"),
    )
    result = run_cli(env, "serve")
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: mkdir {blocker / 'models' / 'blobs'}")


# --------------------------------------------------------------------------- release builder


def test_build_release_layout_checksum_and_version(tmp_path: Path) -> None:
    archive = build_release("0.14.2", tmp_path / "rel")
    assert archive.name == "ollama-linux-amd64.tar.zst"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (tmp_path / "rel" / "sha256sum.txt").read_text() == (
        f"{digest}  ./ollama-linux-amd64.tar.zst\n"
    )
    again = build_release("0.14.2", tmp_path / "rel2")
    assert again.read_bytes() == archive.read_bytes(), "builds must be reproducible"
    other = build_release("0.14.3", tmp_path / "rel3")
    assert other.read_bytes() != archive.read_bytes()
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "-C", str(unpack)], check=True)
    binary = unpack / "bin" / "ollama"
    assert binary.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(binary, os.X_OK)
    assert sorted(p.name for p in (unpack / "lib" / "ollama").iterdir()) == [
        marker_name("0.14.2"),
        "libggml-base.so",
    ]
    env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    result = subprocess.run(
        [str(binary), "--version"], env=env, capture_output=True, text=True, check=True
    )
    assert "client version is 0.14.2" in result.stdout
