"""The Ollama client's error classification and the result parser, over real HTTP
against the Ollama API emulator (a test double)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import requests
from chi_companion.analysis.ollama import (
    AnswerTruncated,
    ModelMissing,
    OllamaClient,
    OllamaRequestError,
    OllamaTimeout,
    OllamaUnavailable,
    normalize_model_name,
)
from chi_companion.analysis.result import RESULT_SCHEMA, InvalidOutput, parse_result

from tests.ollama_emulator import OllamaEmulator

MESSAGES = [{"role": "user", "content": "RPM p95 5200 rpm, COOLANT_TEMP max 104 C"}]


@pytest.fixture
def emu() -> Iterator[OllamaEmulator]:
    emulator = OllamaEmulator(models=("gemma2:2b",)).start()
    yield emulator
    emulator.stop()


def client(url: str, timeout: float = 10) -> OllamaClient:
    return OllamaClient(url, timeout, "5m", 8192)


def test_chat_returns_schema_valid_content_and_stats(emu: OllamaEmulator) -> None:
    result = client(emu.url).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)
    parsed = parse_result(result.content)
    assert parsed["summary"]
    assert result.stats["eval_count"] > 0 and result.done_reason == "stop"
    assert client(emu.url).version() == emu.version
    tags = client(emu.url).tags()
    assert OllamaClient.find_model(tags, "gemma2:2b") is not None
    assert OllamaClient.find_model(tags, "registry.ollama.ai/library/gemma2:2b") is not None
    assert OllamaClient.find_model(tags, "gemma2") is None  # gemma2:latest is another model


def test_unreachable_is_unavailable_with_connect_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(OllamaUnavailable) as info:
        client(f"http://127.0.0.1:{port}").chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)
    assert info.value.connect_failed


@pytest.mark.parametrize("fault", ["http500", "drop"])
def test_server_faults_are_transient(emu: OllamaEmulator, fault: str) -> None:
    emu.set_fault(fault, times=1)
    with pytest.raises(OllamaUnavailable) as info:
        client(emu.url).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)
    assert not info.value.connect_failed
    # The next call goes through: the fault was transient.
    assert client(emu.url).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA).content


def test_missing_model_and_timeout(emu: OllamaEmulator) -> None:
    with pytest.raises(ModelMissing, match="not found"):
        client(emu.url).chat("llama3.2:3b", MESSAGES, RESULT_SCHEMA)
    emu.delay_seconds = 1.0
    emu.set_fault("slow", times=1)
    with pytest.raises(OllamaTimeout):
        client(emu.url, timeout=0.3).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)


def last_chat(emu: OllamaEmulator) -> dict[str, object]:
    bodies = [b for m, p, b in emu.requests if m == "POST" and p == "/api/chat"]
    assert bodies, "no /api/chat request reached the emulator"
    return dict(bodies[-1])


@pytest.mark.parametrize(
    ("configured", "sent"), [("30m", "30m"), ("1h30m", "1h30m"), (-1, -1), (600.0, 600)]
)
def test_keep_alive_goes_out_as_ollama_parses_it(
    emu: OllamaEmulator, configured: str | int | float, sent: str | int
) -> None:
    result = OllamaClient(emu.url, 10, configured, 8192).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)
    assert result.done_reason == "stop"
    body = last_chat(emu)
    assert body["keep_alive"] == sent and type(body["keep_alive"]) is type(sent)
    assert body["think"] is False and body["stream"] is True


def test_keep_alive_without_a_unit_is_refused_by_ollama(emu: OllamaEmulator) -> None:
    """Why the client never sends "600": real Ollama (and the emulator) answer 400."""
    with pytest.raises(OllamaRequestError, match='missing unit in duration "600"'):
        OllamaClient(emu.url, 10, "600", 8192).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)


def test_answer_cut_at_num_predict_is_its_own_cause(emu: OllamaEmulator) -> None:
    emu.set_fault("length", times=1)
    with pytest.raises(AnswerTruncated, match='done_reason "length"') as info:
        client(emu.url).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)
    assert info.value.content  # what came before the cut
    with pytest.raises(InvalidOutput):
        parse_result(info.value.content)  # which is why it must not be parsed as the answer


def test_busy_and_context_length_answers(emu: OllamaEmulator) -> None:
    emu.set_fault("busy", times=1)
    with pytest.raises(OllamaUnavailable, match=r"503.*maximum pending requests exceeded"):
        client(emu.url).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)
    emu.set_fault("context_length", times=1)
    with pytest.raises(OllamaRequestError, match="prompt is longer than the context length"):
        client(emu.url).chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)


def test_model_names_compare_case_insensitively(emu: OllamaEmulator) -> None:
    with pytest.raises(ModelMissing, match="not found, try pulling it first"):
        client(emu.url).chat("llama3.2:3b", MESSAGES, RESULT_SCHEMA)
    assert client(emu.url).chat("Gemma2:2B", MESSAGES, RESULT_SCHEMA).content
    assert OllamaClient.find_model(client(emu.url).tags(), "GEMMA2:2b") is not None


def test_running_models_come_from_api_ps(emu: OllamaEmulator) -> None:
    ollama = client(emu.url)
    assert ollama.running() == []
    ollama.chat("gemma2:2b", MESSAGES, RESULT_SCHEMA)
    (loaded,) = ollama.running()
    assert loaded.name == "gemma2:2b" and loaded.size and loaded.size > 0
    assert loaded.size_vram == 0 and loaded.expires_at


def test_one_pooled_session_without_environment_proxies(
    emu: OllamaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy from the environment must not reroute Ollama: this one does not exist.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    ollama = client(emu.url)
    assert isinstance(ollama.session, requests.Session) and ollama.session.trust_env is False
    assert ollama.version() == emu.version
    assert ollama.chat("gemma2:2b", MESSAGES, RESULT_SCHEMA).content
    ollama.close()


def test_model_names_are_normalised_like_ollama() -> None:
    assert normalize_model_name("gemma2") == "gemma2:latest"
    assert normalize_model_name("registry.ollama.ai/library/gemma2:2b") == "gemma2:2b"
    assert normalize_model_name("myuser/model") == "myuser/model:latest"
    assert normalize_model_name("Gemma2:2B") == "gemma2:2b"


def test_result_parser_rejects_bad_output_and_reranks_good_output() -> None:
    with pytest.raises(InvalidOutput, match="not valid JSON"):
        parse_result("Sure! {summary: ...")
    with pytest.raises(InvalidOutput, match=r"\$\.recommendations\[0\]\.confidence"):
        parse_result(
            json.dumps(
                {
                    "summary": "ok",
                    "recommendations": [
                        {
                            "rank": 1,
                            "category": "fuel",
                            "recommendation": "x",
                            "confidence": 1.5,
                            "evidence": ["e"],
                        }
                    ],
                    "anomalies": [],
                }
            )
        )
    with pytest.raises(InvalidOutput, match="required"):
        parse_result(json.dumps({"summary": "ok", "recommendations": []}))
    good = parse_result(
        json.dumps(
            {
                "summary": "Two things.",
                "recommendations": [
                    {
                        "rank": 3,
                        "category": "cooling",
                        "recommendation": "b",
                        "confidence": 0.4,
                        "evidence": ["COOLANT_TEMP p95 104"],
                    },
                    {
                        "rank": 1,
                        "category": "fuel",
                        "recommendation": "a",
                        "confidence": 0.9,
                        "evidence": ["LONG_FUEL_TRIM mean 12"],
                    },
                ],
                "anomalies": [
                    {"parameter": "COOLANT_TEMP", "description": "hot", "severity": "medium"}
                ],
            }
        )
    )
    assert [(r["rank"], r["recommendation"]) for r in good["recommendations"]] == [
        (1, "a"),
        (2, "b"),
    ]
