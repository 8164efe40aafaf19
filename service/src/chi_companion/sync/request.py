"""A sync body, checked completely against the Pi's wire contract before anything is stored.

Refusals are ``Invalid`` domain errors naming the bad field; ``core.http_errors`` answers them
with 422, which the Pi reads as "give up on this batch for now".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import Invalid
from ..core.ids import DEVICE_ID_RULE, as_int64, is_device_id

TABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_BATCH_ID = 200
# The table whose rows are drives' data points (sync/drive_summaries.py adds them up).
SUMMARISED_TABLE = "realtime_data"
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass
class TableBatch:
    name: str
    ids: list[int]  # in arrival order
    rows_json: str  # the rows as one JSON array; SQLite splits it with json_each
    # realtime_data only: row id -> (drive id, parameter_name, timestamp) as validated, the
    # last of a repeated id winning as in the store; what drive_summaries adds up.
    facts: dict[int, tuple[int | None, Any, Any]] = field(default_factory=dict)


@dataclass
class SyncRequest:
    device_id: str
    batch_id: str
    tables: list[TableBatch]
    last_drive_id: int | None
    non_finite: int = 0


def _bad(detail: str) -> Invalid:
    # 422: well-formed JSON that the contract cannot accept. The Pi treats any
    # non-429 4xx as "give up on this batch for now", which is what we want.
    return Invalid("invalid sync body", detail)


def _scrub(value: Any) -> tuple[Any, int]:
    """Replace non-finite floats (from tokens like 1e999) by None; count them."""
    if isinstance(value, float):
        return (value, 0) if math.isfinite(value) else (None, 1)
    if isinstance(value, dict):
        total = 0
        for key, inner in value.items():
            clean, n = _scrub(inner)
            if n:
                value[key] = clean
                total += n
        return value, total
    if isinstance(value, list):
        total = 0
        for i, inner in enumerate(value):
            clean, n = _scrub(inner)
            if n:
                value[i] = clean
                total += n
        return value, total
    return value, 0


# Fields the server derives something from (timestamps are parsed by SQLite's date functions,
# which give NULL for anything else: a string or nothing is all they may be).
TIMESTAMP_FIELDS = ("timestamp", "created_at")


def _check_derived(table: str, index: int, row: dict[str, Any]) -> None:
    """Refuse a row whose derived fields could poison what is built from them: a drive id
    that is not a 64-bit integer once made the analysis scheduler spin or die (issue 15)."""
    if "drive_id" in row and row["drive_id"] is not None:
        drive_id = as_int64(row["drive_id"])
        if drive_id is None:
            shown = json.dumps(row["drive_id"])[:40]
            raise _bad(
                f"tables.{table}.rows[{index}].drive_id must be a 64-bit integer or null, "
                f"got {shown}"
            )
        row["drive_id"] = drive_id  # 5.0 is stored as 5, so SQLite sees an INTEGER
    for key in TIMESTAMP_FIELDS:
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            shown = json.dumps(value)[:40]
            raise _bad(f"tables.{table}.rows[{index}].{key} must be a string or null, got {shown}")


def validate(body: Any, non_finite_tokens: int) -> SyncRequest:
    """Check a parsed sync body against the contract; raise a 4xx naming the bad field."""
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    device_id = body.get("deviceId")
    if not is_device_id(device_id):
        raise _bad(f"deviceId must be a string of {DEVICE_ID_RULE}")
    batch_id = body.get("batchId")
    if not isinstance(batch_id, str) or not (0 < len(batch_id) <= MAX_BATCH_ID):
        raise _bad(f"batchId must be a non-empty string of at most {MAX_BATCH_ID} characters")
    tables_raw = body.get("tables")
    if not isinstance(tables_raw, dict):
        raise _bad("tables must be an object of {tableName: {lastSyncedId, rows}}")
    last_drive_id: int | None = None
    if "driveCounter" in body and body["driveCounter"] is not None:
        counter = body["driveCounter"]
        last_drive_id = as_int64(counter.get("lastDriveId")) if isinstance(counter, dict) else None
        if last_drive_id is None:
            raise _bad('driveCounter must be {"lastDriveId": <integer>}')
    non_finite = non_finite_tokens
    tables: list[TableBatch] = []
    for name, table in tables_raw.items():
        if not TABLE_NAME_RE.fullmatch(name):
            raise _bad(
                f"table name {name[:80]!r} is not a safe identifier "
                "(letters, digits, underscore; at most 64)"
            )
        if not isinstance(table, dict):
            raise _bad(f"tables.{name} must be an object with rows")
        last_synced = table.get("lastSyncedId")
        if last_synced is not None and as_int64(last_synced) is None:
            raise _bad(f"tables.{name}.lastSyncedId must be an integer")
        rows = table.get("rows")
        if not isinstance(rows, list):
            raise _bad(f"tables.{name}.rows must be an array")
        ids: list[int] = []
        facts: dict[int, tuple[int | None, Any, Any]] = {}
        summarised = name == SUMMARISED_TABLE
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise _bad(f"tables.{name}.rows[{index}] must be an object")
            row_id = as_int64(row.get("id"))
            if row_id is None:
                raw = row.get("id")
                shown = json.dumps(raw)[:40] if raw is not None else "nothing"
                raise _bad(f"tables.{name}.rows[{index}].id must be a 64-bit integer, got {shown}")
            row["id"] = row_id
            ids.append(row_id)
            _check_derived(name, index, row)
            if summarised:
                facts[row_id] = (
                    row.get("drive_id"),
                    row.get("parameter_name"),
                    row.get("timestamp"),
                )
        try:
            rows_json = _ENCODER.encode(rows)
        except ValueError:
            # Only literals like 1e999 (parsed as inf) get here; NaN/Infinity tokens
            # were already turned into None by the parser. Scrubbing is the slow path.
            rows, scrubbed = _scrub(rows)
            non_finite += scrubbed
            rows_json = _ENCODER.encode(rows)
        tables.append(TableBatch(name, ids, rows_json, facts))
    return SyncRequest(device_id, batch_id, tables, last_drive_id, non_finite)
