"""A drive as the Pi records it: every second, one row per parameter (tests, bench, demo)."""

from __future__ import annotations

import math
from typing import Any

FIVE = (
    ("RPM", "rpm"),
    ("SPEED", "km/h"),
    ("COOLANT_TEMP", "C"),
    ("ENGINE_LOAD", "%"),
    ("THROTTLE_POS", "%"),
)


def _value(name: str, s: int) -> float:
    phase = s / 90.0
    if name == "RPM":
        return round(850 + 2200 * abs(math.sin(phase)) + (s % 7) * 15, 1)
    if name == "SPEED":
        return round(max(0.0, 95 * math.sin(phase / 2) ** 2 + (s % 5)), 1)
    if name == "COOLANT_TEMP":
        return round(min(91.0, 20 + s * 0.12) + (s % 3) * 0.3, 1)
    if name == "ENGINE_LOAD":
        return round(20 + 50 * abs(math.sin(phase * 1.3)), 1)
    return round(10 + 60 * abs(math.sin(phase * 0.7)), 1)


def drive_rows(
    drive_id: int, seconds: int, first_id: int = 1, start_hour: int = 8
) -> list[dict[str, Any]]:
    rows = []
    row_id = first_id
    for s in range(seconds):
        stamp = f"2026-04-19T{start_hour + s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z"
        for name, unit in FIVE:
            rows.append(
                {
                    "id": row_id,
                    "timestamp": stamp,
                    "parameter_name": name,
                    "value": _value(name, s),
                    "unit": unit,
                    "profile_id": "daily",
                    "data_source": "real",
                    "drive_id": drive_id,
                }
            )
            row_id += 1
    return rows
