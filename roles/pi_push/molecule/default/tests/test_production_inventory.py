"""The production inventory ties the Pi to the companion (controller only: no host is contacted).

`ansible -m debug` renders variables on the controller; it opens no connection, so nothing is
sent to the production addresses the inventory names. The vault is replaced by a test value
given as an extra variable (the real vault is not in the repository).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from scenario import DEVICE, REPO

PI = "chi-eclipse-tuner"
SERVER = "chi-srv-01"
TEST_KEY = "test-key-for-the-inventory-check-0123"


def render(host: str, expression: str) -> Any:
    result = subprocess.run(
        [
            "ansible",
            host,
            "--inventory",
            str(REPO / "inventory/production/hosts.yml"),
            "--module-name",
            "ansible.builtin.debug",
            "--args",
            f"msg={{{{ {expression} | to_json }}}}",
            "--extra-vars",
            json.dumps({"vault_companion_device_keys": {DEVICE: TEST_KEY}}),
            "--one-line",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # "<host> | SUCCESS => {"changed": false, "msg": "<json>"}"
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith(f"{host} | SUCCESS"))
    return json.loads(json.loads(line.split("=>", 1)[1])["msg"])


def test_the_pi_uses_the_companions_device_key_and_address() -> None:
    pi = render(PI, "[pi_push_device_id, pi_push_api_key, pi_push_server_url]")
    device_id, key, url = pi
    assert device_id == DEVICE
    assert key == TEST_KEY, "the Pi's key is the companion's vault entry for its device"
    server = render(SERVER, "[companion_devices, ansible_host, companion_port]")
    devices, address, port = server
    assert {"id": DEVICE, "api_key": TEST_KEY} in devices
    assert url == f"http://{address}:{port}"
