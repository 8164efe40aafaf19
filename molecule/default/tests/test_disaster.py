"""Disaster recovery as docs/setup-guide.md "Disaster recovery" says (testinfra, `molecule verify`).

On the converged site: rows synced and a Pi backup uploaded to the server over HTTP; the
database backup timer's service run (the guide's `doc-test: disaster backup` block); the NAS
replication run. Then a FRESH host of this scenario (`fresh`, in no group, so the site
playbook never touched it) is provisioned as a new Chi-Srv-01 (playbooks/companion.yml with
the same inventory), gets the NAS copy, and runs the guide's `doc-test: disaster` blocks as
written. It must then serve the same rows and the same backups (same ids, names, sizes and
downloaded sha256) as the old server did.

The one step the guide leaves to the operator, bringing the NAS copy to the new server (the
server's replication key can only write to the NAS), is done here by this controller: rsync
from the NAS host to the fresh host with the rig's root key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import testinfra
from site_scenario import DEVICE, INVENTORY, REPO, docblocks

DATA_DIR = "/srv/chi-companion"
NAS_TARGET = "/srv/nas/chi-replica/chi-srv-01"
REPLICATE = "/usr/local/bin/chi-nas-replicate"


def guide_blocks(marker: str) -> list[str]:
    """The guide's blocks with exactly this marker ("disaster" or "disaster backup"), as
    scripts: their prompted lines (the others are sample output)."""
    return [block.script() for block in docblocks.marked(REPO, marker)]


def run_block(host: Any, body: str) -> Any:
    result = host.run(f"bash -eo pipefail -c {shlex.quote(body)}")
    assert result.rc == 0, f"{body}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def get_host(name: str) -> Any:
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


def request(method: str, url: str, key: str, **kwargs: Any) -> requests.Response:
    headers = {"X-API-Key": key, **kwargs.pop("headers", {})}
    return requests.request(method, url, headers=headers, timeout=60, **kwargs)


def served(base_url: str, key: str, operator_key: str) -> dict[str, Any]:
    """What the API serves: the device's tables and every backup with its downloaded sha256."""
    status = request("GET", f"{base_url}/api/v1/sync/status", key)
    assert status.status_code == 200, status.text
    listing = request("GET", f"{base_url}/api/v1/backups", operator_key)
    assert listing.status_code == 200, listing.text
    backups = listing.json()["backups"]
    for backup in backups:
        download = request("GET", f"{base_url}/api/v1/backups/{backup['id']}", operator_key)
        assert download.status_code == 200
        backup["downloadedSha256"] = hashlib.sha256(download.content).hexdigest()
    body = status.json()
    return {
        "tables": body["tables"],
        "lastSyncAt": body["lastSyncAt"],
        "lastBatchId": body["lastBatchId"],
        "backups": backups,
    }


def wait_healthy(base_url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/api/v1/health", timeout=5).status_code in (200, 503):
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"{base_url} did not answer within {timeout} s")


def ansible(*args: str) -> str:
    result = subprocess.run(
        ["ansible-playbook", "--inventory", INVENTORY, *args],
        env=dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1"),
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def relay(
    src_vars: dict[str, Any], src: str, dest_vars: dict[str, Any], dest: str, tmp: Path
) -> None:
    """Copy a directory tree host to host through this controller (root, the rig's key)."""
    ssh = (
        f"ssh -i {shlex.quote(str(src_vars['ansible_private_key_file']))}"
        " -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    )
    for command in (
        ["rsync", "-a", "-e", ssh, f"root@{src_vars['ansible_host']}:{src}/", f"{tmp}/"],
        ["rsync", "-a", "-e", ssh, f"{tmp}/", f"root@{dest_vars['ansible_host']}:{dest}/"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, (command, result.stderr)


def test_the_guide_marks_the_disaster_blocks() -> None:
    assert len(guide_blocks("disaster backup")) == 1
    restore_blocks = guide_blocks("disaster")
    assert len(restore_blocks) >= 2
    assert any("chi-companion db restore" in block for block in restore_blocks)


def test_a_new_server_restored_from_the_nas_serves_the_same_data(tmp_path: Path) -> None:
    server, nas, fresh = get_host("server"), get_host("nas"), get_host("fresh")
    server_vars = dict(server.ansible.get_variables())
    fresh_vars = dict(fresh.ansible.get_variables())
    nas_vars = dict(nas.ansible.get_variables())
    port = server_vars["companion_port"]
    old_url = f"http://{server_vars['ansible_host']}:{port}"
    new_url = f"http://{fresh_vars['ansible_host']}:{port}"
    key = {d["id"]: d["api_key"] for d in server_vars["companion_devices"]}[DEVICE]
    operator_key = server_vars["companion_operator_api_key"]

    # 1. The Pi syncs rows and uploads a database backup to the old server.
    first_id = 10_000_000 + secrets.randbelow(1_000_000) * 1000
    for batch in range(3):
        rows = [
            {
                "id": first_id + batch * 100 + i,
                "timestamp": f"2026-11-29T08:{batch:02d}:{i % 60:02d}Z",
                "parameter_name": "RPM",
                "value": 800.0 + i,
                "unit": "rpm",
                "profile_id": "daily",
                "data_source": "real",
                "drive_id": 4242,
            }
            for i in range(100)
        ]
        body = {
            "deviceId": DEVICE,
            "batchId": f"disaster-{first_id}-{batch}",
            "tables": {"realtime_data": {"lastSyncedId": rows[-1]["id"], "rows": rows}},
        }
        answer = request("POST", f"{old_url}/api/v1/sync", key, json=body)
        assert answer.status_code == 200, answer.text
    pi_backup = secrets.token_bytes(64 * 1024)
    answer = request(
        "PUT",
        f"{old_url}/api/v1/backups/{DEVICE}/database/disaster-{secrets.token_hex(4)}.db",
        key,
        data=pi_backup,
        headers={"X-Content-SHA256": hashlib.sha256(pi_backup).hexdigest()},
    )
    assert answer.status_code == 201, answer.text
    name = answer.json()["name"]  # the server adds its receive time to the Pi's file name

    # 2. The database backup timer's service, run as the guide's block runs it.
    assert server.service("chi-companion-db-backup.timer").is_enabled
    assert server.service("chi-companion-db-backup.timer").is_running
    [backup_block] = guide_blocks("disaster backup")
    run_block(server, backup_block)
    result = server.check_output("systemctl show -p Result --value chi-companion-db-backup.service")
    assert result.strip() == "success"
    newest = server.check_output(f"ls {DATA_DIR}/db-backups | tail -n 1").strip()
    assert re.fullmatch(r"companion-\d{8}T\d{6}Z\.db\.gz", newest), newest
    copy = server.file(f"{DATA_DIR}/db-backups/{newest}")
    assert copy.user == "chi-companion" and copy.mode == 0o640

    # 3. The NAS replication copies it (and logs/).
    replicated = server.run(REPLICATE)
    assert replicated.rc == 0, replicated.stdout + replicated.stderr
    assert nas.file(f"{NAS_TARGET}/db-backups/{newest}").sha256sum == copy.sha256sum
    assert nas.file(f"{NAS_TARGET}/logs/companion.log").exists
    before = served(old_url, key, operator_key)
    assert before["tables"]["realtime_data"]["rows"] >= 300
    assert name in [b["name"] for b in before["backups"]]

    # 4. The new server, provisioned like the first one: an empty companion.
    extra = tmp_path / "fresh.yml"
    extra.write_text(json.dumps({"companion_servers": {"hosts": {"fresh": {}}}}))
    ansible("--inventory", str(extra), "--limit", "fresh", str(REPO / "playbooks/companion.yml"))
    wait_healthy(new_url)
    empty = request("GET", f"{new_url}/api/v1/sync/status", key).json()
    assert empty["tables"] == {}

    # 5. The NAS copy reaches the new server (the guide's manual step 2).
    relay(nas_vars, NAS_TARGET, fresh_vars, "/var/tmp/from-nas", tmp_path / "from-nas")

    # 6. The guide's restore and check blocks, as written, on the new server.
    outputs = [run_block(fresh, block).stdout for block in guide_blocks("disaster")]
    assert any(f"restored {DATA_DIR}/db-backups/{newest}" in out for out in outputs), outputs
    assert fresh.file(DATA_DIR).listdir()  # the replaced empty database is kept aside
    assert [f for f in fresh.file(DATA_DIR).listdir() if f.startswith("companion.db.pre-restore-")]

    # 7. The same rows and backups, served by the new server.
    wait_healthy(new_url)
    after = served(new_url, key, operator_key)
    assert after == before
