"""Keys on the host: companion.toml holds only their SHA-256, and a key change is a reload.

The role hashes each vault key in Jinja (`hash('sha256')`); the service hashes a presented key
with `key_digest`. This checks both agree (the Pi's key still authenticates) and that a rotation
(new key, old key as previous_api_key, then the old one dropped) applies through
`systemctl reload` with the same MainPID: no restart, no dropped request.
Runs after test_companion.py and test_firewall.py, before the reboot test (name order).
"""

from __future__ import annotations

import json
import time
import tomllib
from typing import Any

from chi_companion.core.config import key_digest
from scenario import CONFIG, DEVICE, PORT, SERVICE, converge, http, recap

testinfra_hosts = ["ansible://companion"]

# Test-only key, used by this scenario alone (never a production value).
NEW_KEY = "rotation-test-key-Zq7Lm2Vb9Xc4Nd8Rf1"
RELOAD_DEADLINE_SECONDS = 30


def _main_pid(host: Any) -> str:
    return str(host.check_output(f"systemctl show -p MainPID --value {SERVICE}"))


def _ping(address: str, key: str) -> int:
    status, _ = http("GET", f"http://{address}:{PORT}/api/v1/ping", key)
    return status


def _wait_for(address: str, expected: dict[str, int]) -> None:
    """The reload replaces gunicorn's worker in the background: poll until every key answers
    as expected (or fail with what they answered last)."""
    deadline = time.monotonic() + RELOAD_DEADLINE_SECONDS
    while True:
        got = {key: _ping(address, key) for key in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == expected, f"after the reload: {got}, expected {expected}"


def _converge_devices(devices: list[dict[str, str]]) -> str:
    code, output = converge(
        "--extra-vars",
        json.dumps({"companion_devices": [{"id": DEVICE, **d} for d in devices]}),
        "--tags",
        "companion_configure",
        timeout=600,
    )
    assert code == 0, output[-3000:]
    return output


def test_config_holds_digests_not_keys(host: Any, vault_key: str) -> None:
    content = host.file(CONFIG).content_string
    assert vault_key not in content
    parsed = tomllib.loads(content)
    assert parsed["devices"][DEVICE] == {"api_key_sha256": key_digest(vault_key)}
    assert "api_key" not in parsed["operator"]
    assert len(parsed["operator"]["api_key_sha256"]) == 64
    # The operator key is in the same vault; neither it nor any other 16+ character value of
    # the form `api_key = "..."` is written.
    assert "api_key =" not in content


def test_the_pis_key_authenticates_against_the_digest(address: str, vault_key: str) -> None:
    assert _ping(address, vault_key) == 200
    assert _ping(address, vault_key[:-1] + ("x" if vault_key[-1] != "x" else "y")) == 401


def test_key_rotation_is_a_reload_not_a_restart(host: Any, address: str, vault_key: str) -> None:
    pid = _main_pid(host)
    assert pid != "0"
    output = _converge_devices([{"api_key": NEW_KEY, "previous_api_key": vault_key}])
    assert "RUNNING HANDLER [companion : Reload chi-companion]" in output, output[-3000:]
    assert "Restart chi-companion" not in output
    assert NEW_KEY not in output and vault_key not in output, "keys are never printed"
    content = host.file(CONFIG).content_string
    assert NEW_KEY not in content
    assert tomllib.loads(content)["devices"][DEVICE]["api_key_sha256"] == [
        key_digest(NEW_KEY),
        key_digest(vault_key),
    ]
    _wait_for(address, {NEW_KEY: 200, vault_key: 200})
    assert _main_pid(host) == pid, "a key change must not restart the service"
    # Back to the inventory's key alone: the retired key stops working, still without a restart.
    output = _converge_devices([{"api_key": vault_key}])
    assert recap(output)[1] == 0, output[-3000:]
    assert "RUNNING HANDLER [companion : Reload chi-companion]" in output
    _wait_for(address, {NEW_KEY: 401, vault_key: 200})
    assert _main_pid(host) == pid
    assert host.service(SERVICE).is_running
