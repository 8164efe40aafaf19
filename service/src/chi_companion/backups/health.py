"""The ``backups`` component of /health: the newest backup of each device and free space."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from .store import BackupStore


def backups_health(store: BackupStore, devices_configured: Iterable[str]) -> dict[str, Any]:
    """Newest backup per configured device, and free space against backups.min_free_bytes."""
    report: dict[str, Any] = {}
    try:
        free = store.free_bytes()
    except OSError:
        return {"status": "unhealthy", "detail": "backup directory unavailable"}
    report["freeBytes"] = free
    report["minFreeBytes"] = store.min_free_bytes
    try:
        newest = store.newest_per_device()
    except sqlite3.Error:
        newest = {}
        report["detail"] = "catalog unavailable"
    devices: dict[str, dict[str, Any]] = {}
    for dev in sorted(devices_configured):
        backup, count = newest.get(dev, (None, 0))
        devices[dev] = {
            "newestAt": backup.received_at if backup else None,
            "newestType": backup.type if backup else None,
            "count": count,
        }
    report["devices"] = devices
    if free < store.min_free_bytes:
        report["status"] = "degraded"
        report["detail"] = "free space is under backups.min_free_bytes; uploads are refused"
    elif "detail" in report:
        report["status"] = "degraded"
    else:
        report["status"] = "ok"
    return report
