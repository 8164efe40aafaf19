"""Fixtures of the upgrade scenario's tests (the `host` fixture is testinfra's)."""

from __future__ import annotations

import json
from typing import Any

import pytest

WORK = "/var/lib/chi-upgrade-test"
DATA_DIR = "/mnt/raid5/chi-companion"


@pytest.fixture(scope="module")
def base_url(host: Any) -> str:
    return f"http://{host.ansible.get_variables()['ansible_host']}:8000"


@pytest.fixture(scope="module")
def keys(host: Any) -> dict[str, str]:
    """The device and operator keys as the test vault provides them (decrypted by Ansible)."""
    devices = host.ansible("debug", "var=vault_companion_device_keys", check=False)
    operator = host.ansible("debug", "var=vault_companion_operator_api_key", check=False)
    return {
        "device": str(devices["vault_companion_device_keys"]["chi-eclipse-01"]),
        "operator": str(operator["vault_companion_operator_api_key"]),
    }


@pytest.fixture(scope="module")
def before(host: Any) -> dict[str, Any]:
    """What 0.1.0 had stored (prepare.yml, files/upgrade_data.py fingerprint)."""
    return json.loads(host.file(f"{WORK}/before.json").content_string)


def fingerprint(host: Any) -> dict[str, Any]:
    out = host.check_output(f"python3 {WORK}/upgrade_data.py fingerprint --data-dir={DATA_DIR}")
    return json.loads(out)


@pytest.fixture(scope="module")
def after(host: Any) -> dict[str, Any]:
    return fingerprint(host)
