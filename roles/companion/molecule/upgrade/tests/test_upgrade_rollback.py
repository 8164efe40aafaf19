"""Rollback to 0.1.0 after the upgrade, as docs/releasing.md ("Rolling back to 0.1.0") gives it:
remove 0.2.0 with its own role (companion_state: absent keeps the data), then converge 0.1.0's
role with the data directory kept. Runs after test_upgrade.py (file order) and leaves the host
on 0.1.0.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import requests
from conftest import DATA_DIR, fingerprint

testinfra_hosts = ["ansible://companion"]

SCENARIO = Path(__file__).resolve().parent.parent
ADDED_BY_0_2_0 = [
    "/etc/systemd/system/chi-companion-prune.timer",
    "/etc/systemd/system/chi-companion-prune.service",
    "/usr/local/bin/chi-companion",
]


def playbook(path: Path, *args: str, roles: str | None = None) -> str:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    if roles:
        env["ANSIBLE_ROLES_PATH"] = roles
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    result = subprocess.run(
        ["ansible-playbook", "--inventory", inventory, str(path), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=1200,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def test_rollback_to_0_1_0_serves_the_same_data(
    host: Any, base_url: str, keys: dict[str, str], before: dict[str, Any]
) -> None:
    rows_now = fingerprint(host)["synced_rows"]

    playbook(SCENARIO / "converge.yml", "--extra-vars", '{"companion_state": "absent"}')
    for path in ADDED_BY_0_2_0:
        assert not host.file(path).exists, path

    release = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "release-0.1.0"
    playbook(
        SCENARIO / "release-0.1.0.yml",
        "--extra-vars",
        f'{{"companion_data_dir": "{DATA_DIR}"}}',
        roles=str(release / "roles"),
    )

    assert requests.get(f"{base_url}/api/v1/health", timeout=30).json()["version"] == "0.1.0"
    assert host.service("chi-companion").is_running
    after = fingerprint(host)
    assert after["synced_rows"] == rows_now
    assert after["backups"] == before["backups"]
    assert after["analyses"] == before["analyses"]
    headers = {"X-API-Key": keys["device"]}
    for backup_id, *_rest, sha256, _received in before["backups"]:
        body = requests.get(f"{base_url}/api/v1/backups/{backup_id}", headers=headers, timeout=30)
        assert body.status_code == 200, body.text
        assert hashlib.sha256(body.content).hexdigest() == sha256
