"""The server-side command blocks of the docs run as written on the converged host (testinfra,
run by `molecule verify`).

A fenced block preceded by `<!-- doc-test: companion -->` in docs/setup-guide.md or
docs/troubleshooting.md is executed here, so a doc change is tested (the parser and the
markers: tests/docblocks.py). Lines with a prompt (`chi-srv-01# `, `$ `) are the commands and
the others their sample output; a block without prompts is one script. Variants:

- `companion key`: the block that sets $KEY. It reads the key from stdin, as an operator pastes
  it; here the test vault's key is piped in. It runs in front of every other block and its key
  must be accepted.
- `companion stops`: a block that stops the service on purpose (Rollback); the test starts it
  again afterwards and waits for /health.
- `companion lan`: a block an operator runs on another LAN machine; it runs on this controller
  with the production address replaced by the test host's (the guide's own "replace them
  wherever yours differ").

Blocks run in the guides' order, after `symptoms` made what the troubleshooting entries look
for: a refused key, a refused sync, a database backup.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import shlex
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest
import requests
import yaml
from scenario import DEVICE, PORT, REPO, http

testinfra_hosts = ["ansible://companion"]

_spec = importlib.util.spec_from_file_location("chi_docblocks", REPO / "tests" / "docblocks.py")
assert _spec and _spec.loader
docblocks = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = docblocks  # dataclasses look their module up there
_spec.loader.exec_module(docblocks)

ALL = docblocks.guide_blocks(REPO)
KEY_BLOCKS = [b for b in ALL if b.marker == "companion key"]
BLOCKS = [b for b in ALL if b.marker in ("companion", "companion stops")]
LAN_BLOCKS = [b for b in ALL if b.marker == "companion lan"]


def production_server() -> str:
    """The production server's address, as the guide's blocks name it. The production inventory
    is the one place it is written down (tests never spell it out); a block that names it runs
    against the test host instead."""
    inventory = yaml.safe_load((REPO / "inventory/production/hosts.yml").read_text())
    return str(
        inventory["all"]["children"]["companion_servers"]["hosts"]["chi-srv-01"]["ansible_host"]
    )


PRODUCTION_SERVER = production_server()


def ids(blocks: list[Any]) -> list[str]:
    return [f"{b.where} {b.first[:40]}" for b in blocks]


def run(host: Any, key: str, body: str) -> Any:
    # A block that asks the key itself reads it from stdin; the others get the key block first.
    script = body if "read -rsp" in body else KEY_BLOCKS[0].script() + "\n" + body
    return host.run(
        f"printf '%s\\n' {shlex.quote(key)} | bash -eo pipefail -c {shlex.quote(script)}"
    )


@pytest.fixture(scope="module")
def symptoms(host: Any, address: str, vault_key: str, tmp_path_factory: Any) -> None:
    """What the diagnose blocks look for, made the way it happens in real life."""
    base = f"http://{address}:{PORT}/api/v1"
    # "401 or 403": a refused key, in the access log.
    status, _ = http("GET", f"{base}/ping", "wrong-key-wrong-key")
    assert status == 401
    # "Sync stalls on a table": a row without an integer id, refused and logged.
    bad = {
        "deviceId": DEVICE,
        "batchId": "doc-test-bad",
        "tables": {"dtc_log": {"lastSyncedId": 0, "rows": [{"id": "A1"}]}},
    }
    status, _ = http("POST", f"{base}/sync", vault_key, bad)
    assert status == 422
    # "Restoring a Pi's database": a database backup as the Pi pushes it (gzipped SQLite).
    db = tmp_path_factory.mktemp("docs") / "obd.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE realtime_data (id INTEGER PRIMARY KEY, value REAL)")
        conn.execute("INSERT INTO realtime_data VALUES (1, 900.0)")
    conn.close()
    data = gzip.compress(db.read_bytes())
    # The scenario's http() sends JSON; a backup is raw bytes.
    resp = requests.put(
        f"{base}/backups/{DEVICE}/database/obd.db.gz",
        data=data,
        headers={
            "X-API-Key": vault_key,
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
            "Content-Type": "application/octet-stream",
        },
        timeout=60,
    )
    assert resp.status_code == 201, resp.text
    # A rerun of verify on the same host must not trip over the previous run's restore.
    host.run("rm -f /tmp/obd-*.db.gz /tmp/obd-*.db")


def test_the_docs_mark_blocks_to_run() -> None:
    assert len(KEY_BLOCKS) == 1, [b.where for b in KEY_BLOCKS]
    assert len(BLOCKS) >= 10, ids(BLOCKS)
    assert LAN_BLOCKS, "no block marked doc-test: companion lan"


def test_the_key_block_reads_an_accepted_key(host: Any, vault_key: str) -> None:
    result = run(
        host,
        vault_key,
        'test -n "$KEY"\n'
        f'curl -sf -o /dev/null -H "X-API-Key: $KEY" http://127.0.0.1:{PORT}/api/v1/ping',
    )
    assert result.rc == 0, (KEY_BLOCKS[0].body, result.stdout, result.stderr)


def wait_healthy(host: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while host.run(f"curl -sf -o /dev/null http://127.0.0.1:{PORT}/api/v1/health").rc != 0:
        assert time.monotonic() < deadline, host.run("journalctl -u chi-companion -n 30").stdout
        time.sleep(1)


@pytest.mark.parametrize("block", BLOCKS, ids=ids(BLOCKS))
def test_marked_block_runs_as_written(
    host: Any, vault_key: str, symptoms: None, block: Any
) -> None:
    body = block.script()
    result = run(host, vault_key, body)
    if block.marker == "companion stops":
        host.run("systemctl start chi-companion")
        wait_healthy(host)
    assert result.rc == 0, (
        f"{block.where}:\n{body}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("block", LAN_BLOCKS, ids=ids(LAN_BLOCKS))
def test_lan_block_runs_from_another_machine(address: str, vault_key: str, block: Any) -> None:
    script = block.script().replace(PRODUCTION_SERVER, address)
    assert PRODUCTION_SERVER not in script  # nothing run here may reach the production LAN
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        input=vault_key + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (block.where, script, result.stdout, result.stderr)
    # The guide's expectation: health, then the device's ping, then 401 for a wrong key.
    assert f'"deviceId":"{DEVICE}"' in result.stdout.replace(" ", ""), result.stdout
    assert result.stdout.rstrip().endswith("401"), result.stdout
