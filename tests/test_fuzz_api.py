"""schemathesis against a live companion, over every operation of docs/openapi.yaml.

Pass criteria: no 5xx, no response that violates the spec, the server healthy afterwards;
without a key or with a wrong one every protected operation answers 401.

CI runs a bounded number of examples per operation (FUZZ_EXAMPLES, default 25);
`make fuzz-long` runs many more.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.companion_process import Companion
from tests.ollama_emulator.emulator import OllamaEmulator

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
RELEASE = {
    "version": "V0.28.2",
    "releasedAt": "2026-06-05T22:24:03Z",
    "gitHash": "48e5567",
    "theme": "Quiet cold starts",
    "description": "Fixes the idle sweep.",
}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


@pytest.fixture
def fuzz_target(make_companion: Callable[..., Companion], tmp_path: Path) -> Companion:
    emulator = OllamaEmulator(models=("gemma2:2b",)).start()
    record = tmp_path / "release.json"
    record.write_text(json.dumps(RELEASE))
    comp = make_companion(
        release={"record_path": str(record)},
        ollama={"url": emulator.url},
        # A small upload limit keeps generated bodies cheap; 413 is documented.
        backups={"max_upload_bytes": 1024 * 1024, "min_free_bytes": 0},
    )
    yield comp
    emulator.stop()


def run_schemathesis(comp: Companion, *extra: str) -> subprocess.CompletedProcess[str]:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    return subprocess.run(
        [
            str(schemathesis),
            "run",
            str(SPEC),
            "--url",
            comp.url,
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "20261126",
            "--workers",
            "2",
            "--no-color",
            "--request-timeout",
            "30",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def test_fuzz_with_a_valid_key_finds_no_server_errors_or_spec_violations(
    fuzz_target: Companion,
) -> None:
    result = run_schemathesis(fuzz_target, "--checks", "all", "-H", f"X-API-Key: {fuzz_target.key}")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert re.search(r"\d+ generated", result.stdout), result.stdout[-2000:]
    status, _, health = fuzz_target.request("GET", "/api/v1/health", key=False)
    assert status == 200 and health["components"]["database"]["status"] == "ok"
    assert fuzz_target.proc is not None and fuzz_target.proc.poll() is None


def protected_operations() -> list[tuple[str, str]]:
    spec = yaml.safe_load(SPEC.read_text())
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "head") and op.get("security") != []:
                ops.append((method.upper(), re.sub(r"\{[^}]+\}", "1", path)))
    return ops


@pytest.mark.parametrize("key", [None, "wrong-key-0123456789abcdef"], ids=["no-key", "wrong-key"])
def test_every_protected_operation_answers_401(companion: Companion, key: str | None) -> None:
    ops = protected_operations()
    assert len(ops) >= 10
    for method, templated in ops:
        path = templated.replace("/backups/1/1/1", "/backups/chi-eclipse-01/database/x.db")
        body = b"{}" if method in ("POST", "PUT") else None
        status, _, payload = companion.request(
            method,
            path,
            raw=body,
            key=key if key else False,
            headers={"Content-Type": "application/json"} if body else None,
        )
        assert status == 401, (method, path, status, payload)
        if method != "HEAD":
            assert payload["error"] == "unauthorized"
