"""The guides' blocks about Ollama and the NAS copy run as written on the site's server
(testinfra, `molecule verify`; the parser and the markers: tests/docblocks.py).

Blocks marked `<!-- doc-test: site -->` need what only this scenario has: Ollama (the emulated
release) and the replication to a NAS. They run in the guides' order on `server`, after the
device's key was pasted on stdin (the troubleshooting guide's `companion key` block, run in
front of each), with one substitution: this scenario keeps the companion's data in
`companion_data_dir` (/srv/chi-companion), the production inventory in /mnt/raid5/chi-companion,
which the guides use ("replace them wherever yours differ").

They run with `bash -e` but without pipefail: several end in `... 2>&1 | grep`, whose answer is
grep's (an ssh that authenticates and is then refused a shell still shows the key works).

This file runs after test_site.py and before test_uninstall.py (alphabetical): the device's
uploads are rate-limited per hour, and test_site.py needs its share, so the database backup
the blocks look for is one test_site.py uploaded (one is uploaded here only if there is none).
`symptoms` also queues an analysis, as in real life, for "Analysis is slow or failing".
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shlex
import sqlite3
from typing import Any

import pytest
import requests
from site_scenario import DEVICE, REPO, docblocks

PRODUCTION_DATA_DIR = "/mnt/raid5/chi-companion"


ALL = docblocks.guide_blocks(REPO)
KEY_BLOCK = next(b for b in ALL if b.marker == "companion key")
BLOCKS = [b for b in ALL if b.marker == "site"]


def upload_database(base: str, headers: dict[str, str], tmp_path_factory: Any) -> None:
    """A database backup, gzipped SQLite, as chi-companion-push uploads it."""
    db = tmp_path_factory.mktemp("docs") / "obd.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE realtime_data (id INTEGER PRIMARY KEY, value REAL)")
        conn.execute("INSERT INTO realtime_data VALUES (1, 900.0)")
    conn.close()
    data = gzip.compress(db.read_bytes())
    resp = requests.put(
        f"{base}/backups/{DEVICE}/database/obd.db.gz",
        data=data,
        headers=headers
        | {
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
            "Content-Type": "application/octet-stream",
        },
        timeout=60,
    )
    assert resp.status_code == 201, resp.text


@pytest.fixture(scope="module")
def symptoms(server_vars: dict[str, Any], device_key: str, tmp_path_factory: Any) -> None:
    base = f"http://{server_vars['ansible_host']}:{server_vars['companion_port']}/api/v1"
    headers = {"X-API-Key": device_key}
    as_json = headers | {"Content-Type": "application/json"}
    listed = requests.get(
        f"{base}/backups?deviceId={DEVICE}&type=database", headers=headers, timeout=60
    )
    assert listed.status_code == 200, listed.text
    if not listed.json()["backups"]:
        upload_database(base, headers, tmp_path_factory)
    # A drive synced and its analysis queued ("Analysis is slow or failing").
    rows = [
        {
            "id": 9000 + i,
            "timestamp": f"2026-04-19T09:00:{i:02d}Z",
            "parameter_name": "RPM",
            "value": 900.0 + i,
            "unit": "rpm",
            "profile_id": "daily",
            "data_source": "real",
            "drive_id": 900,
        }
        for i in range(30)
    ]
    sync = {
        "deviceId": DEVICE,
        "batchId": "doc-test",
        "tables": {"realtime_data": {"lastSyncedId": 0, "rows": rows}},
    }
    resp = requests.post(f"{base}/sync", data=json.dumps(sync), headers=as_json, timeout=60)
    assert resp.status_code == 200, resp.text
    resp = requests.post(
        f"{base}/analyze",
        data=json.dumps({"deviceId": DEVICE, "driveId": 900}),
        headers=as_json,
        timeout=60,
    )
    assert resp.status_code in (200, 202), resp.text


def test_the_guides_mark_site_blocks() -> None:
    assert len(BLOCKS) >= 8, [b.where for b in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.where} {b.first[:40]}" for b in BLOCKS])
def test_site_block_runs_as_written(
    server: Any, server_vars: dict[str, Any], device_key: str, symptoms: None, block: Any
) -> None:
    script = block.script()
    if "read -rsp" not in script:  # a block that asks the key itself reads it from stdin
        script = KEY_BLOCK.script() + "\n" + script
    script = script.replace(PRODUCTION_DATA_DIR, server_vars["companion_data_dir"])
    result = server.run(
        f"printf '%s\\n' {shlex.quote(device_key)} | bash -e -c {shlex.quote(script)}"
    )
    assert result.rc == 0, (
        f"{block.where}:\n{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr
