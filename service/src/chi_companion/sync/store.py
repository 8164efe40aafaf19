"""Rows synced from the Pi, stored as JSON documents keyed by (device, table, id).

Rows are documents rather than typed columns because the Pi's tables grow new
columns when its app is upgraded and the companion must keep them without a
server change or a migration; the one field analysis needs to find a drive
(``drive_id``) is a generated column with an index.

A sync request is validated completely before anything is written, then stored
in a single transaction: a body is either stored whole or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..core.clock import iso_z, now_iso, utc_now
from ..core.db import transaction
from ..core.errors import QuotaExceeded
from . import drive_summaries
from .request import SyncRequest, TableBatch

# Pruning the history costs a DELETE; doing it on every request while the Pi
# posts every 5 s would be wasted work, so it runs every Nth sync.
PRUNE_EVERY = 200

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS synced_rows (
        device_id   TEXT    NOT NULL,
        table_name  TEXT    NOT NULL,
        row_id      INTEGER NOT NULL,
        doc         TEXT    NOT NULL,
        received_at TEXT    NOT NULL,
        drive_id    INTEGER GENERATED ALWAYS AS (json_extract(doc, '$.drive_id')) VIRTUAL,
        PRIMARY KEY (device_id, table_name, row_id)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS synced_rows_by_drive
        ON synced_rows (device_id, table_name, drive_id) WHERE drive_id IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS table_stats (
        device_id        TEXT    NOT NULL,
        table_name       TEXT    NOT NULL,
        row_count        INTEGER NOT NULL,
        max_row_id       INTEGER NOT NULL,
        last_received_at TEXT    NOT NULL,
        PRIMARY KEY (device_id, table_name)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS devices (
        device_id     TEXT PRIMARY KEY,
        last_drive_id INTEGER,
        last_sync_at  TEXT,
        last_batch_id TEXT
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS sync_history (
        id           INTEGER PRIMARY KEY,
        device_id    TEXT    NOT NULL,
        batch_id     TEXT    NOT NULL,
        received_at  TEXT    NOT NULL,
        tables_json  TEXT    NOT NULL,
        non_finite   INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sync_history_by_time ON sync_history (received_at)",
    # Running total of each device's row documents in bytes, for its quota: updated in the
    # transaction that changes the rows, so it is as durable and as correct as they are.
    """CREATE TABLE IF NOT EXISTS sync_usage (
        device_id TEXT    PRIMARY KEY,
        doc_bytes INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # A database from before the running total (0.2.0): count each device that has rows but
    # no total, once. On later starts the device list is empty and nothing is scanned.
    """INSERT INTO sync_usage (device_id, doc_bytes)
        SELECT device_id, sum(length(CAST(doc AS BLOB))) FROM synced_rows
        WHERE device_id IN (SELECT device_id FROM table_stats
                            EXCEPT SELECT device_id FROM sync_usage)
        GROUP BY device_id""",
    *drive_summaries.SCHEMA,
]
QUOTA_SETTING = "quotas.synced_bytes_per_device"
QUOTA_REMEDY = (
    "the rows stay on the Pi; the operator raises quotas.synced_bytes_per_device (0: no quota) "
    "or removes old rows (chi-companion sync-prune)"
)


@dataclass
class Rejection:
    at: str
    device_id: str | None
    batch_id: str | None
    status: int
    error: str
    detail: str


@dataclass
class SyncResult:
    batch_id: str
    synced_at: str
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    drive_data_received: bool = False
    non_finite: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "batchId": self.batch_id,
            "tablesProcessed": self.tables,
            "syncedAt": self.synced_at,
            "driveDataReceived": self.drive_data_received,
            "nonFiniteValues": self.non_finite,
        }


@dataclass
class _Planned:
    """One table of a request, measured before anything is written."""

    table: TableBatch
    existing: set[int]
    old_bytes: int  # the documents these rows replace
    new_bytes: int  # the documents as they will be stored


class SyncStore:
    def __init__(
        self, history_max_age_days: int, history_max_entries: int, quota_bytes: int = 0
    ) -> None:
        self.history_max_age = timedelta(days=history_max_age_days)
        self.history_max_entries = history_max_entries
        self.quota_bytes = quota_bytes  # per device; 0: none
        self._since_prune = 0
        # Recent rejections, kept in memory for /sync/status: what the operator
        # needs to see why a table's sync stalls, without storing rejected data.
        self.rejections: deque[Rejection] = deque(maxlen=100)

    def record_rejection(
        self, device_id: str | None, batch_id: str | None, status: int, error: str, detail: Any
    ) -> None:
        self.rejections.append(
            Rejection(now_iso(), device_id, batch_id, status, error, str(detail)[:500])
        )

    def store(self, conn: sqlite3.Connection, req: SyncRequest) -> SyncResult:
        """Store a request in a transaction of its own (the CLI and tests; the route lets
        ``Database.writes`` group it with other requests)."""
        with transaction(conn):
            return self.write(conn, req)

    def write(self, conn: sqlite3.Connection, req: SyncRequest) -> SyncResult:
        """Store a request inside the caller's transaction; QuotaExceeded before any write
        when the device would pass its quota."""
        received_at = now_iso()
        result = SyncResult(req.batch_id, received_at, non_finite=req.non_finite)
        plans = [self._plan(conn, req.device_id, table) for table in req.tables if table.ids]
        growth = sum(p.new_bytes - p.old_bytes for p in plans)
        if growth:
            self._charge(conn, req.device_id, growth)
        for table in req.tables:
            result.tables[table.name] = {"inserted": 0, "updated": 0, "errors": 0}
        for plan in plans:
            result.tables[plan.table.name] = self._upsert(conn, req.device_id, plan, received_at)
            if plan.table.name == "realtime_data":
                result.drive_data_received = True
        conn.execute(
            """INSERT INTO devices (device_id, last_drive_id, last_sync_at, last_batch_id)
               VALUES (?, ?, ?, ?)
               ON CONFLICT (device_id) DO UPDATE SET
                 last_drive_id = CASE
                   WHEN excluded.last_drive_id IS NULL THEN devices.last_drive_id
                   WHEN devices.last_drive_id IS NULL THEN excluded.last_drive_id
                   ELSE max(devices.last_drive_id, excluded.last_drive_id) END,
                 last_sync_at = excluded.last_sync_at,
                 last_batch_id = excluded.last_batch_id""",
            (req.device_id, req.last_drive_id, received_at, req.batch_id),
        )
        conn.execute(
            """INSERT INTO sync_history (device_id, batch_id, received_at, tables_json,
               non_finite) VALUES (?, ?, ?, ?, ?)""",
            (
                req.device_id,
                req.batch_id,
                received_at,
                json.dumps(result.tables),
                req.non_finite,
            ),
        )
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            self.prune_history(conn)
        return result

    @staticmethod
    def _plan(conn: sqlite3.Connection, device_id: str, table: TableBatch) -> _Planned:
        existing: set[int] = set()
        old_bytes = 0
        for row_id, size in conn.execute(
            """SELECT row_id, length(CAST(doc AS BLOB)) FROM synced_rows
               WHERE device_id = ? AND table_name = ?
                 AND row_id IN (SELECT value FROM json_each(?))""",
            (device_id, table.name, json.dumps(table.ids)),
        ):
            existing.add(row_id)
            old_bytes += size
        # What the upsert below will store: each id's last document in the batch. json_each
        # gives each element's text as it is in the array (compact, ASCII: sync/request.py
        # encodes it), so with unique ids the documents are the array less its brackets and
        # commas, counted without parsing it again (tests/test_quotas.py checks the totals
        # against the stored bytes). With repeated ids SQLite measures the last of each (its
        # bare column next to max() comes from the row holding that max).
        if len(set(table.ids)) == len(table.ids):
            new_bytes = len(table.rows_json) - len(table.ids) - 1
        else:
            (new_bytes,) = conn.execute(
                """SELECT coalesce(sum(size), 0) FROM (
                     SELECT length(CAST(value AS BLOB)) AS size, max(key)
                     FROM json_each(?) GROUP BY json_extract(value, '$.id'))""",
                (table.rows_json,),
            ).fetchone()
        return _Planned(table, existing, old_bytes, int(new_bytes))

    def _charge(self, conn: sqlite3.Connection, device_id: str, growth: int) -> None:
        used = self.usage(conn, device_id)
        if self.quota_bytes and growth > 0 and used + growth > self.quota_bytes:
            raise QuotaExceeded(QUOTA_SETTING, self.quota_bytes, used, growth, QUOTA_REMEDY)
        conn.execute(
            """INSERT INTO sync_usage (device_id, doc_bytes) VALUES (?, ?)
               ON CONFLICT (device_id) DO UPDATE SET doc_bytes = doc_bytes + excluded.doc_bytes""",
            (device_id, growth),
        )

    @staticmethod
    def usage(conn: sqlite3.Connection, device_id: str) -> int:
        row = conn.execute(
            "SELECT doc_bytes FROM sync_usage WHERE device_id = ?", (device_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def usage_per_device(conn: sqlite3.Connection) -> dict[str, int]:
        return {d: int(n) for d, n in conn.execute("SELECT device_id, doc_bytes FROM sync_usage")}

    def _upsert(
        self, conn: sqlite3.Connection, device_id: str, plan: _Planned, received_at: str
    ) -> dict[str, int]:
        table = plan.table
        ids = table.ids
        inserted = updated = 0
        seen = set(plan.existing)
        for row_id in ids:
            if row_id in seen:
                updated += 1
            else:
                inserted += 1
                seen.add(row_id)
        summarised = table.name == drive_summaries.TABLE
        before = (
            drive_summaries.contributions(conn, device_id, plan.existing)
            if summarised and plan.existing
            else {}
        )
        # json_each splits the array inside SQLite: no per-row Python encoding, and
        # each document is stored exactly as the Pi sent it (key order, number text).
        # Rows repeated within one batch are applied in order, so the last one wins.
        conn.execute(
            """INSERT INTO synced_rows (device_id, table_name, row_id, doc, received_at)
               SELECT ?, ?, json_extract(value, '$.id'), value, ? FROM json_each(?) WHERE true
               ON CONFLICT (device_id, table_name, row_id) DO UPDATE SET
                 doc = excluded.doc, received_at = excluded.received_at""",
            (device_id, table.name, received_at, table.rows_json),
        )
        if summarised:
            drive_summaries.add_rows(conn, device_id, table.facts, seen - plan.existing)
            if before:
                after = drive_summaries.contributions(conn, device_id, plan.existing)
                drive_summaries.resummarise(
                    conn, device_id, drive_summaries.changed_drives(before, after)
                )
        conn.execute(
            """INSERT INTO table_stats (device_id, table_name, row_count, max_row_id,
                 last_received_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (device_id, table_name) DO UPDATE SET
                 row_count = table_stats.row_count + excluded.row_count,
                 max_row_id = max(table_stats.max_row_id, excluded.max_row_id),
                 last_received_at = excluded.last_received_at""",
            (device_id, table.name, inserted, max(ids), received_at),
        )
        return {"inserted": inserted, "updated": updated, "errors": 0}

    @staticmethod
    def prune_rows(
        conn: sqlite3.Connection, device_id: str, received_before: str, dry_run: bool = False
    ) -> dict[str, tuple[int, int]]:
        """Remove a device's rows received before a UTC time (``...Z``), keeping its row
        counts, drive summaries and quota usage right in the same transaction;
        table -> (rows, bytes)."""
        with transaction(conn):
            found = {
                str(table): (int(n), int(size))
                for table, n, size in conn.execute(
                    """SELECT table_name, count(*), sum(length(CAST(doc AS BLOB)))
                       FROM synced_rows WHERE device_id = ? AND received_at < ?
                       GROUP BY table_name""",
                    (device_id, received_before),
                )
            }
            if dry_run or not found:
                return found
            drives = drive_summaries.pruned_drives(conn, device_id, received_before)
            conn.execute(
                "DELETE FROM synced_rows WHERE device_id = ? AND received_at < ?",
                (device_id, received_before),
            )
            drive_summaries.resummarise(conn, device_id, drives)
            for table, (n, _) in found.items():
                conn.execute(
                    """UPDATE table_stats SET row_count = max(0, row_count - ?)
                       WHERE device_id = ? AND table_name = ?""",
                    (n, device_id, table),
                )
            conn.execute(
                "UPDATE sync_usage SET doc_bytes = doc_bytes - ? WHERE device_id = ?",
                (sum(size for _, size in found.values()), device_id),
            )
        return found

    def prune_history(self, conn: sqlite3.Connection) -> int:
        cutoff = iso_z(utc_now() - self.history_max_age)
        deleted = conn.execute("DELETE FROM sync_history WHERE received_at < ?", (cutoff,)).rowcount
        deleted += conn.execute(
            """DELETE FROM sync_history WHERE id <= (
                 SELECT max(id) FROM sync_history) - ?""",
            (self.history_max_entries,),
        ).rowcount
        return deleted

    def status(self, conn: sqlite3.Connection, device_id: str) -> dict[str, Any]:
        tables = {
            name: {"rows": count, "maxId": max_id, "lastReceivedAt": last}
            for name, count, max_id, last in conn.execute(
                """SELECT table_name, row_count, max_row_id, last_received_at
                   FROM table_stats WHERE device_id = ? ORDER BY table_name""",
                (device_id,),
            )
        }
        row = conn.execute(
            "SELECT last_drive_id, last_sync_at, last_batch_id FROM devices WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        last_drive_id, last_sync_at, last_batch_id = row if row else (None, None, None)
        return {
            "deviceId": device_id,
            "lastSyncAt": last_sync_at,
            "lastBatchId": last_batch_id,
            "driveCounter": {"lastDriveId": last_drive_id},
            "tables": tables,
            "recentRejections": [
                {
                    "at": r.at,
                    "batchId": r.batch_id,
                    "status": r.status,
                    "error": r.error,
                    "detail": r.detail,
                }
                for r in self.rejections
                if r.device_id == device_id
            ][-20:],
        }

    @staticmethod
    def last_sync_per_device(conn: sqlite3.Connection) -> dict[str, str | None]:
        return dict(conn.execute("SELECT device_id, last_sync_at FROM devices"))
