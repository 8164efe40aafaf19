"""A drive's summary computed the slow, obviously right way: by reading every one of its rows.

The reference the drive list is checked against (tests) and measured against (bench): it is
what the page computed for each listed drive in 0.2.0.
"""

from __future__ import annotations

import json
import sqlite3

UNIX = "(julianday({col}) - 2440587.5) * 86400.0"
_SCAN = f"""SELECT count(*), min(t), max(t), json_group_array(DISTINCT p)
    FROM (SELECT json_extract(doc, '$.parameter_name') AS p,
                 {UNIX.format(col="json_extract(doc, '$.timestamp')")} AS t
          FROM synced_rows INDEXED BY synced_rows_by_drive
          WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id = ?)"""


def scan_summary(
    conn: sqlite3.Connection, device_id: str, drive_id: int
) -> tuple[int, float | None, float | None, list[str]]:
    """(rows, first and last Unix second, parameter names) of one drive from its rows."""
    count, t0, t1, names = conn.execute(_SCAN, (device_id, drive_id)).fetchone()
    return int(count), t0, t1, sorted(n for n in json.loads(names) if isinstance(n, str))


def scan_drive_ids(conn: sqlite3.Connection, device_id: str) -> list[int]:
    """Every integer drive id of the device's ``realtime_data`` rows, newest first."""
    return [
        d
        for (d,) in conn.execute(
            """SELECT DISTINCT drive_id FROM synced_rows
               WHERE device_id = ? AND table_name = 'realtime_data'
                 AND typeof(drive_id) = 'integer' ORDER BY drive_id DESC""",
            (device_id,),
        )
    ]
