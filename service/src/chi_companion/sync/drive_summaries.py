"""One row per drive (rows, first and last time, parameter names), kept exact by sync.

The status page lists a device's drives 20 at a time. Computing those facts from the rows
means reading every row of every listed drive: 18,000 JSON documents for a one-hour drive at
1 Hz x 5 parameters, over a second per page on a year-two device (bench/drive_list.py). This
table holds them instead, so a page reads 20 small rows whatever the drives' length.

It is exact, not a cache: every change to ``realtime_data`` rows updates it in the same
transaction (a crash keeps both or neither). New rows are added to their drive's totals;
a re-sent row that moves to another drive, parameter or time, and rows that are pruned,
make their drives be summarised again from their rows, because a minimum or a set of names
cannot be taken apart. Only integer drive ids are summarised: sync refuses any other, and
an older release's 1.5 or "zz" is no drive the page can show.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from .queries import UNIX_SECONDS
from .request import SUMMARISED_TABLE

TABLE = SUMMARISED_TABLE
# Unix seconds of a row's timestamp, as every reader of drive times computes them.
_UNIX = UNIX_SECONDS.format(col="json_extract(doc, '$.timestamp')")

# The facts of each (device, drive) among the rows that ``where`` selects. Parameter names
# that are not text (a number, null) are not names the page can show, as in 0.2.0's list.
_SUMMARISE = f"""SELECT device_id, drive_id, count(*), min(t), max(t),
        json_group_array(DISTINCT p) FILTER (WHERE typeof(p) = 'text')
    FROM (SELECT device_id, drive_id, json_extract(doc, '$.parameter_name') AS p, {_UNIX} AS t
          FROM synced_rows {{index}}
          WHERE table_name = '{TABLE}' AND typeof(drive_id) = 'integer' AND {{where}})
    GROUP BY device_id, drive_id"""

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS drive_summaries (
        device_id  TEXT    NOT NULL,
        drive_id   INTEGER NOT NULL,
        row_count  INTEGER NOT NULL,
        first_t    REAL,
        last_t     REAL,
        parameters TEXT    NOT NULL,
        PRIMARY KEY (device_id, drive_id)
    ) WITHOUT ROWID""",
    # A database from before this table (0.1.0, 0.2.0): summarise each device that has
    # realtime rows but no summary, once. Later starts find no such device with drive rows
    # (a device whose rows have no drive id reads nothing: the drive index skips them).
    "INSERT INTO drive_summaries "
    + _SUMMARISE.format(
        index="INDEXED BY synced_rows_by_drive",
        where=f"""drive_id IS NOT NULL AND device_id IN (
            SELECT device_id FROM table_stats WHERE table_name = '{TABLE}'
            EXCEPT SELECT device_id FROM drive_summaries)""",
    ),
]

# A drive's new rows, added up from the facts the request already parsed: the rows' count and
# names come from Python, their times from SQLite's own date functions (the expression the
# full summary uses), so the totals stay what a scan of the stored rows would give, without
# reading the stored documents again. The parameter union keeps each name once (UNION drops
# repeats); readers sort it.
_ADD = f"""INSERT INTO drive_summaries (device_id, drive_id, row_count, first_t, last_t,
        parameters)
    SELECT ?, ?, ?, min(t), max(t), ?
    FROM (SELECT {UNIX_SECONDS.format(col="value")} AS t
          FROM json_each(?))
    WHERE true
    ON CONFLICT (device_id, drive_id) DO UPDATE SET
        row_count = row_count + excluded.row_count,
        first_t = coalesce(min(first_t, excluded.first_t), first_t, excluded.first_t),
        last_t = coalesce(max(last_t, excluded.last_t), last_t, excluded.last_t),
        parameters = (SELECT json_group_array(value) FROM (
            SELECT value FROM json_each(drive_summaries.parameters)
            UNION SELECT value FROM json_each(excluded.parameters)))"""

_RECOMPUTE = "INSERT INTO drive_summaries " + _SUMMARISE.format(
    index="INDEXED BY synced_rows_by_drive",
    where="device_id = ? AND drive_id IS NOT NULL AND drive_id IN (SELECT value FROM json_each(?))",
)

# What a row contributes to its drive's summary: if none of it changes, neither does the summary.
_CONTRIBUTION = f"""SELECT row_id, CASE WHEN typeof(drive_id) = 'integer' THEN drive_id END,
        json_extract(doc, '$.parameter_name'), json_extract(doc, '$.timestamp')
    FROM synced_rows
    WHERE device_id = ? AND table_name = '{TABLE}' AND row_id IN (SELECT value FROM json_each(?))"""

Contribution = dict[int, tuple[object, object, object]]


def contributions(conn: sqlite3.Connection, device_id: str, row_ids: Iterable[int]) -> Contribution:
    """Row id -> (drive id or None, parameter, timestamp) of stored ``realtime_data`` rows."""
    return {
        row_id: (drive, p, ts)
        for row_id, drive, p, ts in conn.execute(
            _CONTRIBUTION, (device_id, json.dumps(sorted(row_ids)))
        )
    }


def add_rows(
    conn: sqlite3.Connection, device_id: str, facts: Contribution, row_ids: Iterable[int]
) -> None:
    """Count rows just inserted (ids that did not exist before) into their drives, from
    ``facts``: row id -> (drive id, parameter name, timestamp) as the request carried them.
    One statement per drive in the batch (usually one)."""
    drives: dict[int, tuple[set[str], list[str | None]]] = {}
    for row_id in row_ids:
        drive, name, timestamp = facts[row_id]
        if not isinstance(drive, int) or isinstance(drive, bool):
            continue  # no drive id: not part of any drive's summary
        names, times = drives.setdefault(drive, (set(), []))
        if isinstance(name, str):
            names.add(name)
        times.append(timestamp if isinstance(timestamp, str) else None)  # one per row
    for drive, (names, times) in drives.items():
        conn.execute(
            _ADD, (device_id, drive, len(times), json.dumps(sorted(names)), json.dumps(times))
        )


def resummarise(conn: sqlite3.Connection, device_id: str, drive_ids: Iterable[object]) -> None:
    """Summarise these drives again from their rows (a drive with none left loses its row)."""
    ids = sorted({d for d in drive_ids if isinstance(d, int) and not isinstance(d, bool)})
    if not ids:
        return
    conn.execute(
        """DELETE FROM drive_summaries
           WHERE device_id = ? AND drive_id IN (SELECT value FROM json_each(?))""",
        (device_id, json.dumps(ids)),
    )
    conn.execute(_RECOMPUTE, (device_id, json.dumps(ids)))


def changed_drives(before: Contribution, after: Contribution) -> set[object]:
    """Drives whose summary a re-sent row changed: its old and new drive, if any field moved."""
    drives: set[object] = set()
    for row_id, old in before.items():
        new = after.get(row_id)
        if new != old:
            drives.add(old[0])
            if new is not None:
                drives.add(new[0])
    drives.discard(None)
    return drives


def pruned_drives(conn: sqlite3.Connection, device_id: str, received_before: str) -> list[int]:
    """Drives that lose rows when the device's rows received before a time go."""
    return [
        d
        for (d,) in conn.execute(
            f"""SELECT DISTINCT drive_id FROM synced_rows
                WHERE device_id = ? AND table_name = '{TABLE}' AND received_at < ?
                  AND typeof(drive_id) = 'integer'""",
            (device_id, received_before),
        )
    ]
