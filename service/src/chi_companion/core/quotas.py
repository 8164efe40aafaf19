"""The ``quotas`` component of /health: each device's stored bytes against its quotas.

The figures come from the stores' running totals (synced rows) and catalog (backups), so this
is cheap enough for every health poll. A device at or above ``WARN_SHARE`` of a quota makes the
component degraded: the operator hears of it before the Pi's syncs or uploads get 507.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import Config

WARN_SHARE = 0.9


def quota_health(
    config: Config, synced: Mapping[str, int], backups: Mapping[str, int]
) -> dict[str, Any]:
    limits = {
        "synced": config.quotas.synced_bytes_per_device,
        "backups": config.quotas.backup_bytes_per_device,
    }
    devices: dict[str, dict[str, int | None]] = {}
    near = 0
    for device in sorted(config.devices):
        used = {"synced": synced.get(device, 0), "backups": backups.get(device, 0)}
        devices[device] = {
            "syncedBytes": used["synced"],
            "syncedQuotaBytes": limits["synced"] or None,
            "backupBytes": used["backups"],
            "backupQuotaBytes": limits["backups"] or None,
        }
        near += sum(
            1 for kind, limit in limits.items() if limit and used[kind] >= WARN_SHARE * limit
        )
    report: dict[str, Any] = {"status": "degraded" if near else "ok", "devices": devices}
    if near:
        # visible_to() drops other devices' entries but not this sentence: it names none.
        report["detail"] = f"{near} quota(s) at {WARN_SHARE:.0%} or more of their limit"
    return report
