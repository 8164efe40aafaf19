"""Fixtures of the site scenario's tests: its hosts and the inventory's values for them."""

from __future__ import annotations

from typing import Any

import pytest
import testinfra
from site_scenario import DEVICE, INVENTORY


@pytest.fixture(scope="module")
def server() -> Any:
    return testinfra.get_host("ansible://server", ansible_inventory=INVENTORY)


@pytest.fixture(scope="module")
def nas() -> Any:
    return testinfra.get_host("ansible://nas", ansible_inventory=INVENTORY)


@pytest.fixture(scope="module")
def server_vars(server: Any) -> dict[str, Any]:
    return dict(server.ansible.get_variables())


@pytest.fixture(scope="module")
def base_url(server_vars: dict[str, Any]) -> str:
    return f"http://{server_vars['ansible_host']}:{server_vars['companion_port']}"


@pytest.fixture(scope="module")
def device_key(server_vars: dict[str, Any]) -> str:
    devices = {d["id"]: d["api_key"] for d in server_vars["companion_devices"]}
    return str(devices[DEVICE])


@pytest.fixture(scope="module")
def operator_key(server_vars: dict[str, Any]) -> str:
    return str(server_vars["companion_operator_api_key"])
