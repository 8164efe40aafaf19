"""Sync bodies shaped like the real EclipseTuner client's (see the wire contract)."""

from __future__ import annotations

from typing import Any

PARAMETERS = (
    ("RPM", "rpm", 900.0),
    ("SPEED", "km/h", 0.0),
    ("COOLANT_TEMP", "C", 88.0),
    ("ENGINE_LOAD", "%", 21.5),
    ("THROTTLE_POS", "%", 14.1),
    ("INTAKE_TEMP", "C", 31.0),
    ("MAF", "g/s", 3.2),
    ("TIMING_ADVANCE", "deg", 12.0),
)


def realtime_rows(
    first_id: int, count: int, drive_id: int = 1, bump: float = 0.0
) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        row_id = first_id + i
        name, unit, base = PARAMETERS[row_id % len(PARAMETERS)]
        second = row_id // len(PARAMETERS)
        rows.append(
            {
                "id": row_id,
                "timestamp": f"2026-04-19T08:{(second // 60) % 60:02d}:{second % 60:02d}Z",
                "parameter_name": name,
                "value": base + (row_id % 37) * 1.5 + bump,
                "unit": unit,
                "profile_id": "daily",
                "data_source": "real",
                "drive_id": drive_id,
            }
        )
    return rows


def sync_body(
    table: str,
    rows: list[dict[str, Any]],
    device: str = "chi-eclipse-01",
    batch_id: str = "chi-eclipse-01-2026-04-19T08:00:02Z",
) -> dict[str, Any]:
    last = rows[-1]["id"] if rows else 0
    return {
        "deviceId": device,
        "batchId": batch_id,
        "tables": {table: {"lastSyncedId": last, "rows": rows}},
    }


CONTRACT_EXAMPLE = {
    "deviceId": "chi-eclipse-01",
    "batchId": "chi-eclipse-01-2026-04-19T08:00:02Z",
    "tables": {
        "realtime_data": {
            "lastSyncedId": 0,
            "rows": [
                {
                    "id": 1,
                    "timestamp": "2026-04-19T08:00:00Z",
                    "parameter_name": "RPM",
                    "value": 900.0,
                    "unit": "rpm",
                    "profile_id": "daily",
                    "data_source": "real",
                    "drive_id": 1,
                }
            ],
        }
    },
}
