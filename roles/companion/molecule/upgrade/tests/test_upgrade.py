"""After the upgrade from 0.1.0 (prepare.yml installed it and gave it data; converge ran this
tree over it): the same data, served by the new version (testinfra, run by `molecule verify`).

The last test sends new rows, so it stays last, and verify compares with the data of before
the upgrade only once: run it again on the same hosts and the row checks fail (by design; a new
`molecule test` starts from a fresh host).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from conftest import DATA_DIR, fingerprint

testinfra_hosts = ["ansible://companion"]

REPO_VERSION = "service/src/chi_companion/__init__.py"
VENV = "/opt/chi-companion/venv"
DEVICE = "chi-eclipse-01"


def current_version() -> str:
    init = Path(__file__).resolve().parents[5] / REPO_VERSION
    match = re.search(r'^__version__ = "([^"]+)"', init.read_text(), re.M)
    assert match, init
    return match.group(1)


def get(base_url: str, path: str, key: str) -> requests.Response:
    return requests.get(base_url + path, headers={"X-API-Key": key}, timeout=30)


def test_it_was_0_1_0_before(before: dict[str, Any]) -> None:
    assert before["version"] == "0.1.0"


def test_the_version_is_now_this_tree(host: Any, base_url: str) -> None:
    version = current_version()
    assert version != "0.1.0"
    assert requests.get(f"{base_url}/api/v1/health", timeout=30).json()["version"] == version
    assert host.check_output(f"{VENV}/bin/chi-companion --version").split()[-1] == version


def test_the_service_is_healthy(host: Any, base_url: str, keys: dict[str, str]) -> None:
    service = host.service("chi-companion")
    assert service.is_running and service.is_enabled
    restarts = host.check_output("systemctl show -p NRestarts --value chi-companion")
    assert restarts == "0", "the unit restarted on its own after the upgrade"
    resp = get(base_url, "/api/v1/health", keys["operator"])
    assert resp.status_code == 200, resp.text
    health = resp.json()
    assert health["status"] == "healthy", json.dumps(health, indent=1)


def test_the_data_moved_as_the_doc_says(host: Any) -> None:
    assert not host.file("/srv/chi-companion").exists
    assert host.user("chi-companion").home == DATA_DIR
    db = host.file(f"{DATA_DIR}/companion.db")
    assert (db.user, db.group) == ("chi-companion", "chi-companion")


def test_the_same_rows(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["synced_rows"] == 44, "upgrade_data.py seed sends 44 rows"
    for key in ("synced_rows", "synced_rows_sha256", "table_stats", "devices", "sync_history"):
        assert after[key] == before[key], key


def test_the_same_backups_on_disk(before: dict[str, Any], after: dict[str, Any]) -> None:
    types = sorted(b[2] for b in before["backups"])
    assert types == ["database", "database", "logs", "logs"], before["backups"]
    assert after["backups"] == before["backups"]
    assert after["backup_files"] == before["backup_files"]
    # Each file is what the catalog says it is.
    for backup in after["backups"]:
        assert after["backup_files"][str(backup[0])] == backup[5]


def test_every_backup_downloads_with_its_sha256(
    base_url: str, keys: dict[str, str], before: dict[str, Any]
) -> None:
    resp = get(base_url, f"/api/v1/backups?deviceId={DEVICE}", keys["device"])
    assert resp.status_code == 200, resp.text
    listed = {b["id"]: b for b in resp.json()["backups"]}
    assert sorted(listed) == [b[0] for b in before["backups"]]
    for backup_id, _device, _type, name, size, sha256, _received in before["backups"]:
        assert (listed[backup_id]["name"], listed[backup_id]["sha256"]) == (name, sha256)
        body = get(base_url, f"/api/v1/backups/{backup_id}", keys["device"])
        assert body.status_code == 200, body.text
        assert len(body.content) == size
        assert hashlib.sha256(body.content).hexdigest() == sha256


def test_the_analysis_is_kept_and_served(
    host: Any, base_url: str, keys: dict[str, str], before: dict[str, Any], after: dict[str, Any]
) -> None:
    assert [a[3] for a in before["analyses"]] == ["done"], before["analyses"]
    assert after["analyses"] == before["analyses"]
    assert after["ai_results"] == before["ai_results"] and before["ai_results"]
    analysis_id, result_path = before["analyses"][0][0], before["analyses"][0][5]
    resp = get(base_url, f"/api/v1/analyses/{analysis_id}", keys["device"])
    assert resp.status_code == 200, resp.text
    stored = json.loads(host.file(f"{DATA_DIR}/{result_path}").content_string)
    assert resp.json()["status"] == "done"
    assert resp.json()["result"] == stored["result"]


def test_the_schema_is_what_a_fresh_install_creates(host: Any, after: dict[str, Any]) -> None:
    """The companion migrates at start-up (CREATE ... IF NOT EXISTS) and keeps no schema
    version: the upgraded database must have every table and index a fresh one gets."""
    fresh = host.run(
        f"{VENV}/bin/python - /etc/chi-companion/companion.toml <<'EOF'\n"
        "import json, os, sqlite3, sys, tempfile\n"
        "from chi_companion.companion import Companion\n"
        "from chi_companion.core.config import load\n"
        "data = tempfile.mkdtemp()\n"
        "config = load(sys.argv[1], {**os.environ, 'COMPANION_DATA_DIR': data})\n"
        "Companion.from_config(config).prepare_storage()\n"
        "conn = sqlite3.connect(os.path.join(data, 'companion.db'))\n"
        'print(json.dumps([list(r) for r in conn.execute("SELECT type, name, tbl_name, sql'
        " FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name\")]))\n"
        "EOF"
    )
    assert fresh.rc == 0, fresh.stderr
    assert after["schema"] == json.loads(fresh.stdout)


def test_the_drives_are_summarised_from_the_rows(host: Any) -> None:
    """0.1.0 kept no drive summaries (the status page's drive list reads them): the first
    start of this version made them from the rows, equal to a scan of every row."""
    out = host.check_output(
        "python3 - <<'EOF'\n"
        "import json, sqlite3\n"
        f"conn = sqlite3.connect('file:{DATA_DIR}/companion.db?mode=ro', uri=True)\n"
        "t = \"(julianday(json_extract(doc, '$.timestamp')) - 2440587.5) * 86400.0\"\n"
        'scan = conn.execute(f"SELECT drive_id, count(*), min({t}), max({t}),'
        " json_group_array(DISTINCT json_extract(doc, '$.parameter_name')) FROM synced_rows"
        " WHERE table_name = 'realtime_data' AND typeof(drive_id) = 'integer'"
        ' GROUP BY device_id, drive_id").fetchall()\n'
        "kept = conn.execute('SELECT drive_id, row_count, first_t, last_t, parameters"
        " FROM drive_summaries').fetchall()\n"
        "norm = lambda rows: sorted([*r[:4], sorted(json.loads(r[4]))] for r in rows)\n"
        "print(json.dumps([norm(scan), norm(kept)]))\n"
        "EOF"
    )
    scan, kept = json.loads(out)
    start = datetime(2026, 4, 19, 8, 0, 1, tzinfo=UTC).timestamp()
    [(drive, count, first, last, names)] = scan  # upgrade_data.py's one drive
    assert (drive, count, names) == (1, 40, ["RPM", "SPEED"])
    assert abs(first - start) < 0.001 and abs(last - (start + 39)) < 0.001
    assert kept == scan


def test_it_still_takes_syncs(host: Any, base_url: str, keys: dict[str, str]) -> None:
    before_rows = fingerprint(host)["synced_rows"]
    rows = [
        {
            "id": 40,
            "timestamp": "2026-04-19T08:00:40Z",
            "parameter_name": "RPM",
            "value": 1.0,
            "drive_id": 1,
        },
        {
            "id": 41,
            "timestamp": "2026-04-19T08:00:41Z",
            "parameter_name": "RPM",
            "value": 2.0,
            "drive_id": 1,
        },
    ]
    body = {
        "deviceId": DEVICE,
        "batchId": f"{DEVICE}-2026-04-19T08:02:00Z",
        "tables": {"realtime_data": {"lastSyncedId": 39, "rows": rows}},
    }
    resp = requests.post(
        f"{base_url}/api/v1/sync",
        data=json.dumps(body),
        headers={"X-API-Key": keys["device"], "Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["tablesProcessed"]["realtime_data"] == {
        "inserted": 1,
        "updated": 1,
        "errors": 0,
    }
    assert fingerprint(host)["synced_rows"] == before_rows + 1
