"""A compact, bounded summary of one drive for the language model.

gemma2:2b has an 8192-token context and a drive can have hundreds of thousands
of ``realtime_data`` rows, so the model gets statistics, not rows: per
parameter the count, min/max/mean/sd, p5/p50/p95, the time span, the unit, when
the extremes happened, and a coarse time profile; plus the drive's alerts, DTCs
and summary rows when the Pi sent any.

Everything is computed in SQLite: the drive's rows are projected once into a
temporary table of (parameter, value, time) and aggregated there with GROUP BY
and window functions, so memory use does not grow with the drive's length.
The serialized digest is then trimmed to ``DIGEST_MAX_CHARS`` whatever the
drive's size or number of parameters (see ``_fit``).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.db import connect
from ..sync.queries import (
    UNIX_SECONDS,
    copy_drive_points,
    drive_event_docs,
    timed_event_docs,
)

DIGEST_VERSION = 1
# About 4.5k tokens even for digit-heavy JSON (Gemma tokenizes digits one by one):
# with the instructions (~800) and the answer (NUM_PREDICT 2048) it fits 8192.
DIGEST_MAX_CHARS = 10_000
MAX_PARAMETERS = 40
PROFILE_BUCKETS = 6
MAX_EVENTS = 12
MAX_NAME_CHARS = 64
MAX_EVENT_VALUE_CHARS = 120
MAX_EVENT_KEYS = 12
MAX_OMITTED_NAMES = 20
# Rows of these tables describe the drive for the model; keyed by the digest's field name.
EVENT_TABLES = {"alert_log": "alerts", "dtc_log": "dtcs", "drive_summary": "driveSummary"}
# Tables whose rows may lack drive_id; those are matched to the drive by time instead.
TIMED_EVENT_TABLES = ("alert_log", "dtc_log")
EVENT_TIME_SLACK_S = 60.0
EVENT_SKIP_KEYS = frozenset({"id", "drive_id", "device_id", "profile_id", "data_source"})
# Key order of a parameter entry, as documented (and as the model reads it).
PARAMETER_KEYS = (
    *("name", "unit", "n", "nonNumeric", "min", "p5", "p50", "p95", "max"),
    *("mean", "sd", "spanS", "minAtS", "maxAtS", "profile"),
)
QUANTILES = (("p5", 0.05), ("p50", 0.5), ("p95", 0.95))
POINTS_TABLE = """CREATE TEMP TABLE digest_points (
    p TEXT NOT NULL, v REAL, ts TEXT, u TEXT, t REAL)"""
INLINE_POINT = f"""INSERT INTO temp.digest_points (p, v, ts, u, t)
    VALUES (?, ?, ?, ?, {UNIX_SECONDS.format(col="?")})"""
PARAMETER_STATS = """SELECT p, count(*), count(v), min(v), max(v), avg(v), avg(v * v),
        min(t), max(t), group_concat(DISTINCT u)
    FROM temp.digest_points GROUP BY p"""
POINTS_INDEX = "CREATE INDEX temp.digest_points_order ON digest_points (p, v, t)"
# Order statistics by rank through the (p, v, t) index: each lookup walks at
# most n index entries of one parameter, and only one row leaves SQLite.
AT_RANK = """SELECT v, t FROM temp.digest_points
    WHERE p = ? AND v IS NOT NULL ORDER BY v, t LIMIT 1 OFFSET ?"""
PROFILE = """SELECT p, min(:buckets - 1, CAST((t - :t0) * :buckets / :span AS INTEGER)) AS b,
        avg(v)
    FROM temp.digest_points WHERE v IS NOT NULL AND t IS NOT NULL GROUP BY p, b"""


def _num(value: float | int | None) -> float | int | None:
    """Four significant digits: enough for advice, and every digit costs a token."""
    if value is None or not math.isfinite(value):
        return None
    rounded = float(f"{value:.4g}")
    if not math.isfinite(rounded):
        # Rounding up the largest floats (1.7976931348623157e308 -> 1.798e308) overflows;
        # the digest's JSON allows no infinity, so such a value stays as it was.
        rounded = float(value)
    if rounded.is_integer() and abs(rounded) < 1e15:
        return int(rounded)
    return rounded


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest_text(digest: dict[str, Any]) -> str:
    """The digest exactly as it goes into the prompt (and as its size is bounded)."""
    return _dumps(digest)


def _parameters(conn: sqlite3.Connection, t0: float | None) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for p, n, nv, vmin, vmax, mean, mean_sq, tmin, tmax, units in conn.execute(
        PARAMETER_STATS
    ).fetchall():
        entry: dict[str, Any] = {"name": p}
        if units:
            entry["unit"] = str(units)[:40]
        entry["n"] = n
        if nv < n:
            entry["nonNumeric"] = n - nv
        entry["_numeric"] = nv
        if nv:
            entry.update(min=_num(vmin), max=_num(vmax), mean=_num(mean))
            # Population standard deviation from E[v^2] - E[v]^2 (SQLite has no stdev).
            entry["sd"] = _num(math.sqrt(max(0.0, mean_sq - mean * mean)))
        if tmin is not None and tmax is not None:
            entry["spanS"] = _num(tmax - tmin)
        params.append(entry)
    params.sort(key=lambda e: (-e["n"], e["name"]))
    return params


def _order_statistics(
    conn: sqlite3.Connection, params: list[dict[str, Any]], t0: float | None
) -> None:
    """Percentiles (nearest rank below: the value at index floor(q * (n - 1)) of the
    sorted values) and the times of the minimum (earliest) and maximum (latest)."""
    conn.execute(POINTS_INDEX)
    for entry in params:
        n = entry["_numeric"]
        if not n:
            continue
        for name, fraction in QUANTILES:
            value, _ = conn.execute(AT_RANK, (entry["name"], int(fraction * (n - 1)))).fetchone()
            entry[name] = _num(value)
        if t0 is None:
            continue
        for name, offset in (("minAtS", 0), ("maxAtS", n - 1)):
            _, t = conn.execute(AT_RANK, (entry["name"], offset)).fetchone()
            if t is not None:
                entry[name] = _num(t - t0)


def _profiles(conn: sqlite3.Connection, params: list[dict[str, Any]], t0: float, t1: float) -> None:
    span = t1 - t0
    if span <= 0:
        return
    by_name = {e["name"]: e for e in params}
    buckets: dict[str, list[float | int | None]] = {}
    for p, bucket, mean in conn.execute(
        PROFILE, {"buckets": PROFILE_BUCKETS, "t0": t0, "span": span}
    ):
        if p in by_name and bucket is not None and 0 <= bucket < PROFILE_BUCKETS:
            buckets.setdefault(p, [None] * PROFILE_BUCKETS)[bucket] = _num(mean)
    for name, values in buckets.items():
        by_name[name]["profile"] = values


def _compact_event(doc: str) -> dict[str, Any] | None:
    try:
        row = json.loads(doc)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    event: dict[str, Any] = {}
    for key, value in row.items():
        if key in EVENT_SKIP_KEYS or value is None or len(event) >= MAX_EVENT_KEYS:
            continue
        if isinstance(value, bool):
            event[key] = value
        elif isinstance(value, int | float):
            event[key] = _num(value)
        elif isinstance(value, str):
            event[key] = value[:MAX_EVENT_VALUE_CHARS]
        else:
            event[key] = _dumps(value)[:MAX_EVENT_VALUE_CHARS]
    return event or None


def _events(
    conn: sqlite3.Connection,
    device_id: str,
    drive_id: int,
    t0: float | None,
    t1: float | None,
) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for table, field in EVENT_TABLES.items():
        docs = drive_event_docs(conn, device_id, table, drive_id, MAX_EVENTS)
        if table in TIMED_EVENT_TABLES and t0 is not None and t1 is not None:
            room = MAX_EVENTS - len(docs)
            if room > 0:
                docs += timed_event_docs(
                    conn,
                    device_id,
                    table,
                    t0 - EVENT_TIME_SLACK_S,
                    t1 + EVENT_TIME_SLACK_S,
                    room,
                )
        events = [e for e in map(_compact_event, docs) if e]
        if events:
            found[field] = events
    return found


def _fit(digest: dict[str, Any], max_chars: int) -> None:
    """Trim the digest until its JSON is at most max_chars, least informative first:
    fewer events, then the profiles of rarely sampled parameters, then those
    parameters themselves (named in omittedParameters)."""

    def size() -> int:
        return len(digest_text(digest))

    if size() <= max_chars:
        return
    digest["truncated"] = True
    for field in EVENT_TABLES.values():
        if field in digest:
            digest[field] = digest[field][:3]
    params: list[dict[str, Any]] = digest["parameters"]
    for entry in reversed(params):
        if size() <= max_chars:
            return
        entry.pop("profile", None)
    omitted: list[str] = digest.setdefault("omittedParameters", [])
    while params and size() > max_chars:
        dropped = params.pop()
        digest["omittedParameterCount"] = digest.get("omittedParameterCount", 0) + 1
        if len(omitted) < MAX_OMITTED_NAMES:
            omitted.append(dropped["name"])
    for field in EVENT_TABLES.values():
        if size() > max_chars:
            digest.pop(field, None)
    while omitted and size() > max_chars:
        omitted.pop()


def _summarize(
    conn: sqlite3.Connection,
    head: dict[str, Any],
    events: dict[str, list[dict[str, Any]]] | None,
    max_chars: int,
) -> dict[str, Any]:
    total, t0, t1 = conn.execute(
        "SELECT count(*), min(t), max(t) FROM temp.digest_points"
    ).fetchone()
    digest: dict[str, Any] = {"digestVersion": DIGEST_VERSION, **head}
    if t0 is not None and t1 is not None:
        start = conn.execute(
            "SELECT ts FROM temp.digest_points WHERE t = ? LIMIT 1", (t0,)
        ).fetchone()[0]
        end = conn.execute(
            "SELECT ts FROM temp.digest_points WHERE t = ? LIMIT 1", (t1,)
        ).fetchone()[0]
        digest.update(start=start, end=end, durationS=_num(t1 - t0))
    params = _parameters(conn, t0)
    omitted = params[MAX_PARAMETERS:]
    params = params[:MAX_PARAMETERS]
    if t0 is not None and t1 is not None:
        _profiles(conn, params, t0, t1)
    _order_statistics(conn, params, t0)
    # Key order as documented (and as the model reads it); drops the helper fields.
    params = [{k: e[k] for k in PARAMETER_KEYS if k in e} for e in params]
    digest.update(rowCount=total, parameterCount=len(params) + len(omitted), parameters=params)
    if omitted:
        digest["truncated"] = True
        digest["omittedParameterCount"] = len(omitted)
        digest["omittedParameters"] = [e["name"] for e in omitted[:MAX_OMITTED_NAMES]]
    if events:
        digest.update(events)
    _fit(digest, max_chars)
    return digest


def _prepare(conn: sqlite3.Connection) -> None:
    # The projection is scratch data: keep it in memory, out of the data directory.
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("DROP TABLE IF EXISTS temp.digest_points")
    conn.execute(POINTS_TABLE)


def build_drive_digest(
    db_path: Path, device_id: str, drive_id: int, max_chars: int = DIGEST_MAX_CHARS
) -> dict[str, Any]:
    """The digest of a synced drive. Uses its own connection so the scratch table
    and the read snapshot never leak into a connection shared with other work."""
    conn = connect(db_path)
    try:
        _prepare(conn)
        # One read transaction: statistics and events come from the same snapshot
        # even while the Pi keeps syncing.
        conn.execute("BEGIN")
        try:
            copy_drive_points(conn, "temp.digest_points", device_id, drive_id, MAX_NAME_CHARS)
            t0, t1 = conn.execute("SELECT min(t), max(t) FROM temp.digest_points").fetchone()
            events = _events(conn, device_id, drive_id, t0, t1)
            head = {"source": "drive", "deviceId": device_id, "driveId": drive_id}
            return _summarize(conn, head, events, max_chars)
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


InlinePoint = tuple[str, float | int | None, str | None, str | None]


def build_inline_digest(
    device_id: str, points: Iterable[InlinePoint], max_chars: int = DIGEST_MAX_CHARS
) -> dict[str, Any]:
    """The digest of rows sent with the request, via the same SQL in a private
    in-memory database (the rows are never written to the companion's database)."""
    conn = sqlite3.connect(":memory:")
    try:
        _prepare(conn)
        # Values as floats, as the REAL column keeps them anyway: sqlite3 cannot bind an int
        # beyond 64 bits (callers pass only values a double can hold).
        rows = ((p, None if v is None else float(v), ts, u, ts) for p, v, ts, u in points)
        conn.executemany(INLINE_POINT, rows)
        head = {"source": "inline", "deviceId": device_id}
        return _summarize(conn, head, None, max_chars)
    finally:
        conn.close()
