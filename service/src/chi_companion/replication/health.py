"""The NAS replication component of /health, read from the status file that
the nas_replication role's wrapper writes after every run."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from ..core.clock import parse_iso_z, utc_now
from ..core.config import Config


def replication_health(config: Config) -> dict[str, Any]:
    path = config.replication_status_file
    max_age = timedelta(hours=config.replication.max_age_hours)
    try:
        with open(path, encoding="utf-8") as fh:
            status = json.load(fh)
    except FileNotFoundError:
        return {"status": "not_configured", "detail": "no replication has run yet"}
    except (OSError, ValueError) as exc:
        return {"status": "degraded", "detail": f"status file unreadable: {exc.__class__.__name__}"}
    if not isinstance(status, dict):
        return {"status": "degraded", "detail": "status file is not a JSON object"}
    report: dict[str, Any] = {
        key: status.get(key)
        for key in ("started_at", "finished_at", "exit_code", "bytes", "files", "last_success_at")
    }
    last_success = status.get("last_success_at")
    try:
        age = utc_now() - parse_iso_z(last_success) if isinstance(last_success, str) else None
    except ValueError:
        age = None
    if age is None:
        report["status"] = "degraded"
        report["detail"] = "no successful replication recorded"
    elif age > max_age:
        report["status"] = "degraded"
        report["detail"] = f"last success {int(age.total_seconds() // 3600)} h ago"
    elif status.get("exit_code") not in (0, None):
        report["status"] = "degraded"
        report["detail"] = f"last run failed with exit code {status.get('exit_code')}"
    else:
        report["status"] = "ok"
    return report
