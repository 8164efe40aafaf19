"""Fixtures of the companion scenario's tests (the `host` fixture is testinfra's)."""

from __future__ import annotations

from typing import Any

import pytest
import testinfra
from scenario import DEVICE, INVENTORY


@pytest.fixture(scope="module")
def address(host: Any) -> str:
    return str(host.ansible.get_variables()["ansible_host"])


@pytest.fixture(scope="module")
def outsider() -> Any:
    return testinfra.get_host("ansible://outsider", ansible_inventory=INVENTORY)


@pytest.fixture(scope="module")
def vault_key(host: Any) -> str:
    """The device key as the test vault provides it (decrypted by Ansible, not read back)."""
    result = host.ansible("debug", "var=vault_companion_device_keys", check=False)
    key = result["vault_companion_device_keys"][DEVICE]
    assert len(key) >= 16
    return str(key)
