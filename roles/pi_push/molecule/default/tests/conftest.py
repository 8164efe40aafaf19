"""Fixtures of the pi_push scenario's tests (the `host` fixture is testinfra's: the pi host)."""

from __future__ import annotations

from typing import Any

import pytest
import testinfra
from scenario import DEVICE, INVENTORY, PORT


@pytest.fixture(scope="module")
def companion() -> Any:
    return testinfra.get_host("ansible://companion", ansible_inventory=INVENTORY)


@pytest.fixture(scope="module")
def base_url(companion: Any) -> str:
    return f"http://{companion.ansible.get_variables()['ansible_host']}:{PORT}"


@pytest.fixture(scope="module")
def vault_key(host: Any) -> str:
    """The device key as the test vault provides it (decrypted by Ansible, not read back)."""
    result = host.ansible("debug", "var=vault_companion_device_keys", check=False)
    key = result["vault_companion_device_keys"][DEVICE]
    assert len(key) >= 16
    return str(key)
