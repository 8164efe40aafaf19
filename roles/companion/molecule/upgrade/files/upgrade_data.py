#!/usr/bin/env python3
"""Data for the upgrade scenario, on the test host (standard library only: it runs with the
host's python3, before and after the companion's own virtualenv changes).

    upgrade_data.py seed --push-tool F --work DIR      fill a running companion the way the Pi
                                                        does (key in $CHI_UPGRADE_KEY)
    upgrade_data.py fingerprint --data-dir DIR          what is stored, as JSON on stdout

`seed` talks only HTTP to 127.0.0.1: synced rows as the EclipseTuner client posts them, backups
through the release's own push tool, one analysis of the synced drive. `fingerprint` reads the
database and the files directly, so the tests compare what is on disk before and after the
upgrade, not what one version's API chooses to show.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SERVER = "http://127.0.0.1:8000"
DEVICE = "chi-eclipse-01"


def request(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(SERVER + path, data=data, method=method)
    req.add_header("X-API-Key", os.environ["CHI_UPGRADE_KEY"])
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def must(method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
    status, answer = request(method, path, body)
    if status not in ok:
        sys.exit(f"{method} {path}: {status} {answer}")
    return answer


def sync_batches() -> list[dict[str, Any]]:
    """One drive as the Pi sends it: one table per request, the three timestamp formats, a
    NaN, a child row before its parent, then the drive counter on its own."""
    realtime = [
        {
            "id": i,
            "timestamp": f"2026-04-19T08:00:{i:02d}Z",
            "parameter_name": "RPM" if i % 2 else "SPEED",
            "value": float("nan") if i == 7 else 800.0 + 10 * i,
            "unit": "rpm" if i % 2 else "km/h",
            "profile_id": "daily",
            "data_source": "real",
            "drive_id": 1,
        }
        for i in range(1, 41)
    ]
    connection = [
        {"id": 1, "timestamp": "2026-04-19 07:59:58", "event_type": "drive_start", "drive_id": 1},
        {"id": 2, "timestamp": "2026-04-19 08:00:41.697867", "event_type": "drive_end"},
    ]
    freeze = [{"id": 1, "dtc_log_id": 1, "pid_responses_json": '{"0C": "1AF8"}'}]
    dtc = [{"id": 1, "code": "P0171", "timestamp": "2026-04-19T08:00:20Z", "drive_id": 1}]
    tables = [
        ("realtime_data", realtime),
        ("connection_log", connection),
        ("dtc_freeze_frame", freeze),
        ("dtc_log", dtc),
    ]
    batches = [
        {
            "deviceId": DEVICE,
            "batchId": f"{DEVICE}-2026-04-19T08:01:0{n}Z",
            "tables": {name: {"lastSyncedId": 0, "rows": rows}},
        }
        for n, (name, rows) in enumerate(tables)
    ]
    batches.append(
        {
            "deviceId": DEVICE,
            "batchId": f"{DEVICE}-2026-04-19T08:01:09Z",
            "tables": {},
            "driveCounter": {"lastDriveId": 1},
        }
    )
    return batches


def make_pi(work: Path, rows: int) -> tuple[Path, Path]:
    """A Pi's live database and logs directory, for the push tool."""
    db, logs = work / "obd.db", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS realtime_data (id INTEGER PRIMARY KEY, v REAL)")
        conn.executemany(
            "INSERT OR IGNORE INTO realtime_data VALUES (?, ?)", [(i, i / 3) for i in range(rows)]
        )
    conn.close()
    (logs / "obd.log").write_text(f"{rows} rows logged\n")
    return db, logs


def push(tool: Path, work: Path, rows: int) -> None:
    db, logs = make_pi(work, rows)
    key_file = work / "key"
    key_file.write_text(os.environ["CHI_UPGRADE_KEY"] + "\n")
    key_file.chmod(0o600)
    argv = [sys.executable, str(tool), "push", "--server", SERVER, "--key-file", str(key_file)]
    argv += ["--device-id", DEVICE, "--db", str(db), "--logs", str(logs)]
    argv += ["--state-dir", str(work / "state")]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"push tool exit {result.returncode}: {result.stdout}{result.stderr}")


def analyse() -> None:
    job = must("POST", "/api/v1/analyze", {"deviceId": DEVICE, "driveId": 1}, ok=(200, 202))
    deadline = time.monotonic() + 240
    while job["status"] not in ("done", "failed"):
        if time.monotonic() > deadline:
            sys.exit(f"analysis {job['id']} still {job['status']} after 240 s")
        job = must("GET", f"/api/v1/analyses/{job['id']}?wait=20")
    if job["status"] != "done":
        sys.exit(f"analysis {job['id']} ended {job['status']}: {job}")


def cmd_seed(args: argparse.Namespace) -> None:
    for batch in sync_batches():
        must("POST", "/api/v1/sync", batch)
    # Two pushes, the database grown between them: two database backups and two log backups.
    push(args.push_tool, args.work, rows=100)
    push(args.push_tool, args.work, rows=200)
    analyse()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rows(conn: sqlite3.Connection, sql: str) -> list[list[Any]]:
    return [list(row) for row in conn.execute(sql)]


def fingerprint(data_dir: Path) -> dict[str, Any]:
    # Read-only, while the service runs: WAL readers never block its writer.
    conn = sqlite3.connect(f"file:{data_dir / 'companion.db'}?mode=ro", uri=True)
    try:
        synced = rows(
            conn,
            "SELECT device_id, table_name, row_id, doc, received_at FROM synced_rows"
            " ORDER BY device_id, table_name, row_id",
        )
        backups = rows(
            conn,
            "SELECT id, device_id, type, name, size, sha256, received_at FROM backups ORDER BY id",
        )
        return {
            "synced_rows": len(synced),
            "synced_rows_sha256": hashlib.sha256(json.dumps(synced).encode()).hexdigest(),
            "table_stats": rows(conn, "SELECT * FROM table_stats ORDER BY 1, 2"),
            "devices": rows(conn, "SELECT * FROM devices ORDER BY 1"),
            "sync_history": rows(conn, "SELECT count(*) FROM sync_history")[0][0],
            "backups": backups,
            "backup_files": {
                str(b[0]): sha256(data_dir / "backups" / b[1] / b[2] / b[3]) for b in backups
            },
            "analyses": rows(
                conn,
                "SELECT id, device_id, drive_id, status, summary, result_path, digest_json"
                " FROM analyses ORDER BY id",
            ),
            "ai_results": {
                str(p.relative_to(data_dir)): sha256(p)
                for p in sorted((data_dir / "ai_results").rglob("*"))
                if p.is_file()
            },
            "schema": rows(
                conn,
                "SELECT type, name, tbl_name, sql FROM sqlite_master"
                " WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
            ),
        }
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    seed = sub.add_parser("seed")
    seed.add_argument("--push-tool", type=Path, required=True)
    seed.add_argument("--work", type=Path, required=True)
    seed.set_defaults(run=cmd_seed)
    fp = sub.add_parser("fingerprint")
    fp.add_argument("--data-dir", type=Path, required=True)
    fp.set_defaults(run=lambda a: print(json.dumps(fingerprint(a.data_dir), indent=1)))
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
