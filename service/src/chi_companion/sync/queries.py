"""What other features may ask about the synced rows: the sync package's named interface.

Only the sync package reads the synced-rows tables; analysis finds drives, their rows and
their events through these functions (import-linter allows it this module and no other).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator

from ..core.ids import INT64_MAX, INT64_MIN

# Seconds since the Unix epoch from any timestamp SQLite's date functions read:
# the Pi sends "...T...Z", "YYYY-MM-DD HH:MM:SS" and naive times with microseconds.
UNIX_SECONDS = "(julianday({col}) - 2440587.5) * 86400.0"

_DRIVE_POINTS = """INSERT INTO {target} (p, v, ts, u, t)
    SELECT coalesce(substr(CAST(p AS TEXT), 1, {name_chars}), '(unnamed)'),
           CASE WHEN typeof(v) IN ('integer', 'real') THEN v END,
           ts, u, {unix_seconds}
    FROM (SELECT json_extract(doc, '$.parameter_name') AS p,
                 json_extract(doc, '$.value') AS v,
                 json_extract(doc, '$.timestamp') AS ts,
                 json_extract(doc, '$.unit') AS u
          FROM main.synced_rows INDEXED BY synced_rows_by_drive
          WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id = ?)"""
_DRIVE_EVENTS = """SELECT doc FROM synced_rows INDEXED BY synced_rows_by_drive
    WHERE device_id = ? AND table_name = ? AND drive_id = ? ORDER BY row_id LIMIT ?"""
_EVENT_TIME = UNIX_SECONDS.format(
    col="coalesce(json_extract(doc, '$.timestamp'), json_extract(doc, '$.created_at'))"
)
_TIMED_EVENTS = f"""SELECT doc FROM synced_rows
    WHERE device_id = ? AND table_name = ? AND drive_id IS NULL
      AND {_EVENT_TIME} BETWEEN ? AND ?
    ORDER BY row_id LIMIT ?"""


def copy_drive_points(
    conn: sqlite3.Connection, target: str, device_id: str, drive_id: int, name_chars: int
) -> None:
    """Project a drive's ``realtime_data`` rows into the caller's scratch table ``target``
    with columns (p, v, ts, u, t): parameter, numeric value or NULL, raw timestamp, unit, and
    Unix seconds. Done inside SQLite so memory does not grow with the drive's length."""
    sql = _DRIVE_POINTS.format(
        target=target, name_chars=int(name_chars), unix_seconds=UNIX_SECONDS.format(col="ts")
    )
    conn.execute(sql, (device_id, drive_id))


def drive_event_docs(
    conn: sqlite3.Connection, device_id: str, table: str, drive_id: int, limit: int
) -> list[str]:
    """The first ``limit`` rows (as stored JSON) of ``table`` that name the drive."""
    return [d for (d,) in conn.execute(_DRIVE_EVENTS, (device_id, table, drive_id, limit))]


def timed_event_docs(
    conn: sqlite3.Connection, device_id: str, table: str, t_from: float, t_to: float, limit: int
) -> list[str]:
    """Rows of ``table`` without a drive id whose time falls in [t_from, t_to] (Unix s)."""
    return [d for (d,) in conn.execute(_TIMED_EVENTS, (device_id, table, t_from, t_to, limit))]


def drive_exists(conn: sqlite3.Connection, device_id: str, drive_id: int) -> bool:
    row = conn.execute(
        """SELECT 1 FROM synced_rows INDEXED BY synced_rows_by_drive
           WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id = ? LIMIT 1""",
        (device_id, drive_id),
    ).fetchone()
    return row is not None


def drive_ids(conn: sqlite3.Connection, device_id: str) -> Iterator[int]:
    """Distinct drive ids of a device by skipping through the drive index: one
    index seek per drive, instead of reading every row of every drive.

    Sync refuses drive ids that are not 64-bit integers, but a row written some other way
    (an old release, a hand edit) may hold 1.5, 1e300 or "zz": those are stepped over, never
    yielded, and every step raises the lower bound, so the walk always ends."""
    bound = INT64_MIN
    while True:
        row = conn.execute(
            """SELECT min(drive_id) FROM synced_rows INDEXED BY synced_rows_by_drive
               WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id >= ?""",
            (device_id, bound),
        ).fetchone()
        value = None if row is None else row[0]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return  # nothing left, or text/blob, which SQLite sorts after every number
        if isinstance(value, float):
            # Not an integer: the next integer above it is the next candidate.
            if not math.isfinite(value) or value >= INT64_MAX:
                return
            bound = math.floor(value) + 1
            continue
        yield value
        if value >= INT64_MAX:
            return
        bound = value + 1


def received_since(conn: sqlite3.Connection, device_id: str, drive_id: int, cutoff: str) -> bool:
    """Whether any of the drive's rows arrived at or after ``cutoff`` (our ISO time)."""
    # Newest rows first (the index is ordered by row id within a drive), so a drive
    # that is still receiving rows is recognised after a few index entries.
    row = conn.execute(
        """SELECT 1 FROM synced_rows INDEXED BY synced_rows_by_drive
           WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id = ?
             AND received_at >= ?
           ORDER BY row_id DESC LIMIT 1""",
        (device_id, drive_id, cutoff),
    ).fetchone()
    return row is not None


def realtime_last_received(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(device id, when its newest ``realtime_data`` row arrived) for every device."""
    return conn.execute(
        """SELECT device_id, last_received_at FROM table_stats
           WHERE table_name = 'realtime_data'"""
    ).fetchall()


def last_sync_per_device(conn: sqlite3.Connection) -> dict[str, str | None]:
    return dict(conn.execute("SELECT device_id, last_sync_at FROM devices"))


def drive_count(conn: sqlite3.Connection, device_id: str) -> int:
    """How many drives (integer drive ids with realtime rows) the device has."""
    (n,) = conn.execute(
        "SELECT count(*) FROM drive_summaries WHERE device_id = ?", (device_id,)
    ).fetchone()
    return int(n)


def drive_list(
    conn: sqlite3.Connection, device_id: str, offset: int, limit: int
) -> list[tuple[int, int, float | None, float | None, list[str]]]:
    """(drive id, rows, first and last Unix second, parameter names) of ``limit`` drives,
    newest (highest id) first from ``offset``: read from the drive summaries, so the cost
    does not grow with the drives' length."""
    return [
        (int(d), int(n), t0, t1, sorted(json.loads(names)))
        for d, n, t0, t1, names in conn.execute(
            """SELECT drive_id, row_count, first_t, last_t, parameters FROM drive_summaries
               WHERE device_id = ? ORDER BY drive_id DESC LIMIT ? OFFSET ?""",
            (device_id, limit, offset),
        )
    ]


def table_row_counts(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(device id, table, rows stored) for every table of every device."""
    return [
        (d, t, int(n))
        for d, t, n in conn.execute(
            "SELECT device_id, table_name, row_count FROM table_stats ORDER BY 1, 2"
        )
    ]


_DRIVE_SERIES = f"""SELECT json_extract(doc, '$.parameter_name') AS p,
        CASE WHEN json_type(doc, '$.value') IN ('integer', 'real')
             THEN json_extract(doc, '$.value') END,
        json_extract(doc, '$.unit'),
        {UNIX_SECONDS.format(col="json_extract(doc, '$.timestamp')")}
    FROM synced_rows INDEXED BY synced_rows_by_drive
    WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id = ?"""


def drive_series(
    conn: sqlite3.Connection, device_id: str, drive_id: int
) -> Iterator[tuple[object, float | None, object, float | None]]:
    """(parameter, numeric value or None, unit, Unix seconds) of each of a drive's
    ``realtime_data`` rows, in one pass over the drive index (no scratch table)."""
    yield from conn.execute(_DRIVE_SERIES, (device_id, drive_id))
