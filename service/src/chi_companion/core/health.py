"""GET /api/v1/health: a cheap overall status with one entry per component.

Without a key it answers the overall status and version only; the components need a key
(``visible_to``). It reports states and numbers only: no keys, no paths.
Slow dependencies (Ollama) are reported from what their background pollers
last saw, never probed inline, so health stays fast when they hang.
"""

from __future__ import annotations

import copy
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import __version__
from .auth import Principal
from .config import Config
from .db import connect

log = logging.getLogger(__name__)
RANK = {"ok": 0, "not_configured": 0, "degraded": 1, "unhealthy": 2}
OVERALL = {0: "healthy", 1: "degraded", 2: "unhealthy"}
HealthCheck = Callable[[], dict[str, Any]]


def database_health(config: Config) -> dict[str, Any]:
    try:
        conn = connect(config.db_path, busy_timeout_ms=2000)
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


def disk_health(config: Config) -> dict[str, Any]:
    try:
        st = os.statvfs(config.data_dir)
    except OSError:
        return {"status": "unhealthy", "detail": "data directory unavailable"}
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    minimum = config.backups.min_free_bytes
    report: dict[str, Any] = {"freeBytes": free, "totalBytes": total, "minFreeBytes": minimum}
    if free < minimum:
        report.update(status="degraded", detail="free space is under backups.min_free_bytes")
    else:
        report["status"] = "ok"
    return report


def health_report(
    config: Config,
    checks: Mapping[str, HealthCheck],
    last_sync_per_device: Callable[[], dict[str, str | None]],
    started_monotonic: float,
) -> dict[str, Any]:
    """The database and disk components, then each feature's ``checks`` in order."""
    components: dict[str, dict[str, Any]] = {
        "database": database_health(config),
        "disk": disk_health(config),
    }
    for name, check in checks.items():
        try:
            components[name] = check()
        except Exception:
            log.exception("health check %s failed", name)
            components[name] = {"status": "degraded", "detail": "health check failed"}
    worst = max((RANK.get(c.get("status", "degraded"), 1) for c in components.values()), default=0)
    try:
        devices = last_sync_per_device()
    except sqlite3.Error:
        devices = {}
    return {
        "status": OVERALL[worst],
        "version": __version__,
        "uptimeSeconds": round(time.monotonic() - started_monotonic, 1),
        "components": components,
        "devices": {dev: {"lastSyncAt": devices.get(dev)} for dev in sorted(config.devices)},
    }


def visible_to(report: dict[str, Any], principal: Principal | None) -> dict[str, Any]:
    """What a caller may see of the report. Without a key: the overall status and version
    only (the components tell when each car last synced, i.e. when it is home). A device key:
    the components with only its own device's entries. The operator: everything."""
    if principal is None:
        return {"status": report["status"], "version": report["version"]}
    if principal.is_operator:
        return report
    own = principal.device_id
    shown = copy.deepcopy(report)
    shown["devices"] = {d: v for d, v in report["devices"].items() if d == own}
    for component in shown["components"].values():
        per_device = component.get("devices")
        if isinstance(per_device, dict):
            component["devices"] = {d: v for d, v in per_device.items() if d == own}
    background = shown["components"].get("background")
    if isinstance(background, dict):
        background.pop("failing", None)  # errors may quote another device's data
    return shown
