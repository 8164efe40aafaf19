"""companion_state: absent removes what the role installed and keeps the data; a converge
afterwards serves the same data again; companion_purge_data: true deletes the data too
(testinfra, run by `molecule verify`, last: it leaves the host purged).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

from scenario import CONFIG, DATA_DIR, DEVICE, INVENTORY, PORT, SCENARIO_DIR, SERVICE, USER, VENV

testinfra_hosts = ["ansible://companion"]

ANSI = re.compile(r"\x1b\[[0-9;]*m")

INSTALLED = [
    f"/etc/systemd/system/{SERVICE}.service",
    f"/etc/systemd/system/{SERVICE}-firewall.service",
    "/usr/local/bin/chi-companion",
    VENV,
    CONFIG,
]


def converge(*extra_vars: str) -> tuple[str, str]:
    """Runs the scenario's converge with extra vars; returns (output, 'changed=N failed=N')."""
    argv = ["ansible-playbook", "--inventory", INVENTORY, str(SCENARIO_DIR / "converge.yml")]
    for extra in extra_vars:
        argv += ["--extra-vars", extra]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
        timeout=900,
    )
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, output[-3000:]
    recap = re.search(
        r"companion\s*:\s*ok=\d+\s+(changed=\d+)\s+unreachable=0\s+(failed=\d+)", output
    )
    assert recap, output[-3000:]
    return output, " ".join(recap.groups())


def health(host: Any) -> dict[str, Any]:
    return json.loads(host.check_output(f"curl -sf http://127.0.0.1:{PORT}/api/v1/health"))


def test_absent_removes_the_install_and_keeps_the_data(host: Any) -> None:
    synced_at = health(host)["devices"][DEVICE]["lastSyncAt"]
    assert synced_at, "test_companion.py synced rows before this module runs"

    output, recap = converge('{"companion_state": "absent"}')
    assert recap != "changed=0 failed=0", output[-3000:]

    for path in INSTALLED:
        assert not host.file(path).exists, path
    assert not host.service(SERVICE).is_running
    assert host.run("nft list table inet chi_companion").rc != 0, "the port filter's table stays"
    assert host.run(f"curl -s -m 3 http://127.0.0.1:{PORT}/").rc == 7
    assert host.file(f"{DATA_DIR}/companion.db").is_file
    assert host.user(USER).exists

    # Removing what is already removed changes nothing.
    _, recap = converge('{"companion_state": "absent"}')
    assert recap == "changed=0 failed=0"

    # Installed again: the same rows are served.
    converge()
    assert health(host)["devices"][DEVICE]["lastSyncAt"] == synced_at


def test_purge_deletes_the_data_and_the_user(host: Any) -> None:
    converge('{"companion_state": "absent", "companion_purge_data": true}')
    assert not host.file(DATA_DIR).exists
    assert not host.user(USER).exists
    for path in INSTALLED:
        assert not host.file(path).exists, path
