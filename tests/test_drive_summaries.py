"""The per-drive summaries behind the status page's drive list, against a real companion.

The list reads ``drive_summaries`` instead of every row of the drives it shows. These tests
check that table against the slow way (tests/drive_scan.py reads every row) after new rows,
re-sent rows that change or move, rows without a drive or with odd fields, sync-prune, a
database from before the table (summarised once at start), and a kill -9 in the middle of
syncs; and that the page lists what the rows say, newest first, a page at a time.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from tests.companion_process import Companion
from tests.drive_rows import drive_rows
from tests.drive_scan import scan_drive_ids, scan_summary
from tests.sync_payloads import sync_body

Summary = tuple[int, float | None, float | None, list[str]]


def _sync(comp: Companion, rows: list[dict[str, Any]], device: str | None = None) -> None:
    device = device or comp.device
    key = comp.key if device == comp.device else comp.other_key
    for i in range(0, len(rows), 2000):
        body = sync_body("realtime_data", rows[i : i + 2000], device=device)
        status, _, answer = comp.request("POST", "/api/v1/sync", body, key=key)
        assert status == 200, answer


def _db(comp: Companion) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(comp.data_dir / "companion.db"))


def stored(comp: Companion, device: str) -> dict[int, Summary]:
    with _db(comp) as conn:
        return {
            d: (n, t0, t1, sorted(json.loads(p)))
            for d, n, t0, t1, p in conn.execute(
                """SELECT drive_id, row_count, first_t, last_t, parameters FROM drive_summaries
                   WHERE device_id = ?""",
                (device,),
            )
        }


def scanned(comp: Companion, device: str) -> dict[int, Summary]:
    with _db(comp) as conn:
        return {d: scan_summary(conn, device, d) for d in scan_drive_ids(conn, device)}


def assert_exact(comp: Companion, device: str | None = None) -> dict[int, Summary]:
    device = device or comp.device
    expected = scanned(comp, device)
    assert stored(comp, device) == expected
    return expected


def _rows(drive_id: int, seconds: int, first_id: int, hour: int = 8) -> list[dict[str, Any]]:
    return drive_rows(drive_id, seconds, first_id, start_hour=hour)


def test_summaries_equal_the_rows_after_inserts_and_changed_resends(companion: Companion) -> None:
    comp = companion
    _sync(comp, _rows(1, 60, 1) + _rows(2, 30, 301, hour=9))
    first = assert_exact(comp)
    assert sorted(first) == [1, 2] and first[1][0] == 300 and first[2][0] == 150
    # Odd rows: no drive, a name that is not text, no or unreadable timestamps, a drive id
    # repeated within one batch under another drive (the last copy wins: drive 6 only).
    odd = [
        {"id": 1001, "parameter_name": "RPM", "value": 1, "drive_id": None},
        {"id": 1002, "parameter_name": 42, "value": 1, "drive_id": 3, "timestamp": "x"},
        {"id": 1003, "parameter_name": None, "value": 1, "drive_id": 3},
        {"id": 1004, "parameter_name": "MAF", "drive_id": 3, "timestamp": "2026-04-20 10:00:05"},
        {"id": 1005, "parameter_name": "MAF", "drive_id": 5, "timestamp": "2026-04-20T10:00Z"},
        {"id": 1005, "parameter_name": "IAT", "drive_id": 6, "timestamp": "2026-04-20T11:00:00Z"},
    ]
    _sync(comp, odd)
    got = assert_exact(comp)
    assert sorted(got) == [1, 2, 3, 6], "drive 5 only existed inside the batch"
    assert got[3][0] == 3 and got[3][3] == ["MAF"]
    # The same batches again (the Pi retrying): nothing changes.
    _sync(comp, _rows(1, 60, 1) + _rows(2, 30, 301, hour=9))
    _sync(comp, odd)
    assert assert_exact(comp) == got
    # Re-sent rows that change: ten rows of drive 2 move to drive 1, one of drive 1 gets a
    # new name and a later time, drive 6's only row loses its drive (drive 6 is gone), and
    # rows of drive 3 move to a new drive 9 in the same batch as new rows of drive 9.
    moved = _rows(2, 2, 301, hour=9)
    for row in moved:
        row["drive_id"] = 1
    renamed = _rows(1, 1, 1)[:1]
    renamed[0].update(parameter_name="OIL_TEMP", timestamp="2026-04-19T23:59:59Z")
    gone = [{"id": 1005, "parameter_name": "IAT", "drive_id": None}]
    to_nine = [dict(r, drive_id=9) for r in odd[1:4]] + _rows(9, 2, 2001, hour=12)
    _sync(comp, moved + renamed + gone + to_nine)
    got = assert_exact(comp)
    assert sorted(got) == [1, 2, 9]
    assert got[1][0] == 310 and "OIL_TEMP" in got[1][3] and got[2][0] == 140
    assert got[9][0] == 13
    # New rows of a drive already summarised: a new name, an earlier and a later time.
    early, late = "2026-04-19T07:00:00Z", "2026-04-20T00:00:00Z"
    _sync(
        comp,
        [
            {"id": 4001, "parameter_name": "BOOST", "drive_id": 1, "timestamp": early},
            {"id": 4002, "parameter_name": "RPM", "drive_id": 1, "timestamp": late},
        ],
    )
    was, got = got, assert_exact(comp)
    assert got[1][0] == 312 and "BOOST" in got[1][3]
    assert got[1][1] < was[1][1] and got[1][2] > was[1][2]
    # The other device's drives are its own.
    _sync(comp, _rows(1, 5, 1), device=comp.other_device)
    assert sorted(assert_exact(comp, comp.other_device)) == [1]
    assert assert_exact(comp) == got


def _signed_in(comp: Companion) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{comp.url}/login", data={"key": comp.key}, allow_redirects=False)
    assert r.status_code == 303
    return s


def test_the_page_lists_what_the_rows_say_newest_first_a_page_at_a_time(
    companion: Companion,
) -> None:
    comp = companion
    rows: list[dict[str, Any]] = []
    for drive in range(1, 46):  # 45 drives: pages of 20, 20 and 5
        rows += _rows(drive * 10, 1 + drive % 7, len(rows) + 1)
    _sync(comp, rows)
    expected = assert_exact(comp)
    s = _signed_in(comp)
    listed: list[tuple[int, int, str]] = []
    for page in (1, 2, 3):
        r = s.get(f"{comp.url}/devices/{comp.device}", params={"page": page})
        assert r.status_code == 200 and "45 drives, newest first." in r.text
        assert f"page {page} of 3" in r.text
        for drive, cells in re.findall(
            r'<tr><td><a href="[^"]+/drives/(\d+)">\d+</a></td>(.*?)</tr>', r.text
        ):
            cell = re.findall(r"<td>(.*?)</td>", cells)
            listed.append((int(drive), int(cell[2]), cell[3]))
    assert [d for d, _, _ in listed] == sorted(expected, reverse=True)
    for drive, count, names in listed:
        assert count == expected[drive][0]
        assert names == ", ".join(expected[drive][3])
    assert s.get(f"{comp.url}/devices/{comp.device}", params={"page": 4}).status_code == 400


def test_sync_prune_keeps_the_summaries_exact(make_companion: Callable[..., Companion]) -> None:
    comp = make_companion()
    _sync(comp, _rows(1, 20, 1) + _rows(2, 20, 101, hour=9) + _rows(3, 20, 201, hour=10))
    assert_exact(comp)
    # Rows that arrived long ago: all of drive 1, the first half of drive 2.
    with _db(comp) as conn, conn:
        conn.execute(
            "UPDATE synced_rows SET received_at = '2020-01-01T00:00:00Z' WHERE row_id <= 150"
        )
    cli = [sys.executable, "-m", "chi_companion", "sync-prune", "--config", str(comp.config_path)]
    cli += ["--device", comp.device, "--received-before", "2021-01-01"]
    dry = subprocess.run([*cli, "--dry-run"], capture_output=True, text=True, check=False)
    assert dry.returncode == 0, dry.stderr
    assert sorted(stored(comp, comp.device)) == [1, 2, 3], "a dry run changes nothing"
    done = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "removed 150 row(s)" in done.stdout
    got = assert_exact(comp)
    assert sorted(got) == [2, 3] and got[2][0] == 50 and got[3][0] == 100
    # Later rows of drive 2 still add to what is left.
    _sync(comp, _rows(2, 4, 5001, hour=11))
    assert assert_exact(comp)[2][0] == 70


def test_a_database_from_before_the_table_is_summarised_once_at_start(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion()
    _sync(comp, _rows(4, 300, 1) + _rows(5, 10, 5001, hour=9))
    _sync(comp, _rows(1, 10, 1), device=comp.other_device)
    before = (stored(comp, comp.device), stored(comp, comp.other_device))
    comp.stop()
    # What 0.1.0 and 0.2.0 left: the same synced_rows, no drive_summaries.
    with _db(comp) as conn, conn:
        conn.execute("DROP TABLE drive_summaries")
    comp.start()
    assert (assert_exact(comp), assert_exact(comp, comp.other_device)) == before
    assert sorted(before[0]) == [4, 5] and before[0][4][0] == 1500
    # Once: a summary changed by hand now stays as it is across a restart (nothing rescans).
    comp.stop()
    with _db(comp) as conn, conn:
        conn.execute("UPDATE drive_summaries SET row_count = -1 WHERE drive_id = 5")
    comp.start()
    assert stored(comp, comp.device)[5][0] == -1


def test_kill9_mid_sync_leaves_summaries_equal_to_the_rows(companion: Companion) -> None:
    comp = companion
    stop = threading.Event()
    acknowledged = 0

    def pi() -> None:
        nonlocal acknowledged
        n = 0
        while not stop.is_set():
            # Each batch: new rows over two drives, and re-sent earlier rows moved to the
            # next drive (so both ways of keeping the summaries run when the kill lands).
            rows = _rows(n, 40, n * 300 + 1) + _rows(n + 1, 20, n * 300 + 201, hour=9)
            if n:
                rows += [dict(r, drive_id=n + 1) for r in _rows(n - 1, 10, (n - 1) * 300 + 1)]
            try:
                status, _, _ = comp.request(
                    "POST", "/api/v1/sync", sync_body("realtime_data", rows), timeout=5
                )
            except OSError:
                return
            if status == 200:
                acknowledged += 1
            n += 1

    thread = threading.Thread(target=pi)
    thread.start()
    time.sleep(2.0)
    comp.kill9()
    stop.set()
    thread.join(10)
    assert acknowledged >= 2, "too few batches were acknowledged before the kill"
    comp.start()
    got = assert_exact(comp)
    assert len(got) >= 2


def test_db_backup_and_restore_carry_the_summaries(companion: Companion) -> None:
    comp = companion
    _sync(comp, _rows(1, 30, 1) + _rows(2, 10, 1001, hour=9))
    backed_up = assert_exact(comp)

    def db(*args: str) -> None:
        cmd = [sys.executable, "-m", "chi_companion", "db", *args]
        done = subprocess.run(
            [*cmd, "--config", str(comp.config_path)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr

    db("backup")
    [copy] = sorted((comp.data_dir / "db-backups").glob("companion-*.db.gz"))
    _sync(comp, _rows(2, 10, 2001, hour=10) + _rows(3, 10, 3001, hour=11))
    assert sorted(assert_exact(comp)) == [1, 2, 3]
    comp.stop()
    db("restore", str(copy))
    comp.start()
    assert assert_exact(comp) == backed_up
