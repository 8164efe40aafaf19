"""GET /api/v1/health: a cheap overall status with one entry per component.

Public (no key), so it reports states and numbers only: no keys, no paths.
Slow dependencies (Ollama) are reported from what their background pollers
last saw, never probed inline, so health stays fast when they hang.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from . import __version__
from .db import connect
from .sync_store import SyncStore

if TYPE_CHECKING:
    from .context import Companion

log = logging.getLogger(__name__)
RANK = {"ok": 0, "not_configured": 0, "degraded": 1, "unhealthy": 2}
OVERALL = {0: "healthy", 1: "degraded", 2: "unhealthy"}


def database_health(ctx: Companion) -> dict[str, Any]:
    try:
        conn = connect(ctx.config.db_path, busy_timeout_ms=2000)
        try:
            # Taking and releasing the write lock proves the file is writable
            # without writing a page on every health poll.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return {"status": "degraded", "writable": None, "detail": "database busy"}
        return {"status": "unhealthy", "writable": False, "detail": "database not writable"}
    return {"status": "ok", "writable": True}


def disk_health(ctx: Companion) -> dict[str, Any]:
    try:
        st = os.statvfs(ctx.config.data_dir)
    except OSError:
        return {"status": "unhealthy", "detail": "data directory unavailable"}
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    minimum = ctx.config.backups["min_free_bytes"]
    report: dict[str, Any] = {"freeBytes": free, "totalBytes": total, "minFreeBytes": minimum}
    if free < minimum:
        report.update(status="degraded", detail="free space is under backups.min_free_bytes")
    else:
        report["status"] = "ok"
    return report


def health_report(ctx: Companion) -> dict[str, Any]:
    components: dict[str, dict[str, Any]] = {
        "database": database_health(ctx),
        "disk": disk_health(ctx),
    }
    for name, check in ctx.health_checks.items():
        try:
            components[name] = check()
        except Exception:
            log.exception("health check %s failed", name)
            components[name] = {"status": "degraded", "detail": "health check failed"}
    worst = max((RANK.get(c.get("status", "degraded"), 1) for c in components.values()), default=0)
    try:
        devices = SyncStore.last_sync_per_device(ctx.db.conn())
    except sqlite3.Error:
        devices = {}
    return {
        "status": OVERALL[worst],
        "version": __version__,
        "uptimeSeconds": round(time.monotonic() - ctx.started_monotonic, 1),
        "components": components,
        "devices": {dev: {"lastSyncAt": devices.get(dev)} for dev in sorted(ctx.config.devices)},
    }
