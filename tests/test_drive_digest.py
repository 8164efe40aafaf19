"""The drive digest against a real SQLite file with the companion's own sync schema."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chi_companion.analysis.digest import (
    DIGEST_MAX_CHARS,
    MAX_PARAMETERS,
    build_drive_digest,
    build_inline_digest,
    digest_text,
)
from chi_companion.core.db import connect
from chi_companion.sync.queries import drive_exists
from chi_companion.sync.store import SCHEMA

DEVICE = "chi-eclipse-01"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    path = tmp_path / "companion.db"
    conn = connect(path)
    for statement in SCHEMA:
        conn.execute(statement)
    yield path, conn
    conn.close()


def insert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    conn.execute("BEGIN")
    conn.executemany(
        """INSERT INTO synced_rows (device_id, table_name, row_id, doc, received_at)
           VALUES (?, ?, ?, ?, '2026-04-19T09:00:00Z')""",
        [(DEVICE, table, r["id"], json.dumps(r)) for r in rows],
    )
    conn.execute("COMMIT")


def row(row_id: int, name: str, value: Any, ts: str, *, drive: int = 1, unit: str = "C") -> Any:
    return {
        "id": row_id,
        "timestamp": ts,
        "parameter_name": name,
        "value": value,
        "unit": unit,
        "drive_id": drive,
    }


def nearest_rank(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


def test_statistics_are_exact(db: tuple[Path, sqlite3.Connection]) -> None:
    path, conn = db
    rng = random.Random(7)
    coolant = [round(rng.uniform(70, 110), 2) for _ in range(997)]
    rows = [
        row(i + 1, "COOLANT_TEMP", v, f"2026-04-19T08:{i // 60 % 60:02d}:{i % 60:02d}Z")
        for i, v in enumerate(coolant)
    ]
    # Another drive and another device must not leak in.
    rows.append(row(5000, "COOLANT_TEMP", 999.0, "2026-04-19T08:00:00Z", drive=2))
    insert(conn, "realtime_data", rows)
    conn.execute(
        "INSERT INTO synced_rows VALUES ('other', 'realtime_data', 1, ?, 'x')",
        (json.dumps(row(1, "COOLANT_TEMP", -50.0, "2026-04-19T08:00:00Z")),),
    )
    digest = build_drive_digest(path, DEVICE, 1)
    (entry,) = digest["parameters"]
    assert entry["name"] == "COOLANT_TEMP" and entry["unit"] == "C"
    assert entry["n"] == len(coolant)
    assert entry["min"] == pytest.approx(min(coolant), rel=1e-3)
    assert entry["max"] == pytest.approx(max(coolant), rel=1e-3)
    assert entry["mean"] == pytest.approx(sum(coolant) / len(coolant), rel=1e-3)
    mean = sum(coolant) / len(coolant)
    sd = math.sqrt(sum((v - mean) ** 2 for v in coolant) / len(coolant))
    assert entry["sd"] == pytest.approx(sd, rel=1e-3)
    for name, q in (("p5", 0.05), ("p50", 0.5), ("p95", 0.95)):
        assert entry[name] == pytest.approx(nearest_rank(coolant, q), rel=1e-3)
    assert entry["minAtS"] == coolant.index(min(coolant))  # one sample per second
    assert entry["maxAtS"] == coolant.index(max(coolant))
    assert entry["spanS"] == len(coolant) - 1
    assert len(entry["profile"]) == 6
    assert digest["start"] == "2026-04-19T08:00:00Z"
    assert digest["durationS"] == len(coolant) - 1
    assert digest["rowCount"] == len(coolant)
    assert drive_exists(conn, DEVICE, 1) and not drive_exists(conn, DEVICE, 3)


def test_mixed_timestamp_formats_and_odd_values(db: tuple[Path, sqlite3.Connection]) -> None:
    path, conn = db
    insert(
        conn,
        "realtime_data",
        [
            row(1, "RPM", 800, "2026-04-19 08:00:00", unit="rpm"),
            row(2, "RPM", 3000.5, "2026-04-19T08:00:30Z", unit="rpm"),
            row(3, "RPM", None, "2026-04-19 08:01:00.250000", unit="rpm"),
            row(4, "RPM", "n/a", "2026-04-19T08:01:30Z", unit="rpm"),
            row(5, "VIN_OK", True, "2026-04-19T08:01:40Z", unit=None),  # type: ignore[arg-type]
            {"id": 6, "drive_id": 1, "value": 1.0},  # no name, no time
        ],
    )
    digest = build_drive_digest(path, DEVICE, 1)
    by_name = {p["name"]: p for p in digest["parameters"]}
    rpm = by_name["RPM"]
    assert rpm["n"] == 4 and rpm["nonNumeric"] == 2
    assert (rpm["min"], rpm["max"]) == (800, 3000)  # four significant digits
    assert rpm["spanS"] == 90
    assert digest["durationS"] == 100  # the three formats share one clock
    assert by_name["(unnamed)"]["n"] == 1
    assert by_name["VIN_OK"]["n"] == 1
    text = digest_text(digest)
    assert "NaN" not in text and "Infinity" not in text


def test_events_by_drive_id_and_by_time(db: tuple[Path, sqlite3.Connection]) -> None:
    path, conn = db
    insert(
        conn,
        "realtime_data",
        [row(i, "SPEED", i, f"2026-04-19T08:10:{i:02d}Z") for i in range(1, 40)],
    )
    insert(
        conn,
        "alert_log",
        [
            {
                "id": 1,
                "drive_id": 1,
                "timestamp": "2026-04-19T08:10:05Z",
                "alert_type": "OVERHEAT",
                "message": "x" * 500,
            },
            # No drive_id: matched by time (inside the drive, and far outside it).
            {"id": 2, "timestamp": "2026-04-19T08:10:20Z", "alert_type": "LOW_VOLTAGE"},
            {"id": 3, "timestamp": "2026-04-20T08:10:20Z", "alert_type": "OTHER_DAY"},
            {"id": 4, "drive_id": 2, "timestamp": "2026-04-19T08:10:20Z", "alert_type": "DRIVE_2"},
        ],
    )
    insert(conn, "dtc_log", [{"id": 9, "drive_id": 1, "dtc_code": "P0301", "status": "active"}])
    insert(conn, "drive_summary", [{"id": 1, "drive_id": 1, "max_rpm": 5200, "notes": None}])
    digest = build_drive_digest(path, DEVICE, 1)
    assert [a["alert_type"] for a in digest["alerts"]] == ["OVERHEAT", "LOW_VOLTAGE"]
    assert len(digest["alerts"][0]["message"]) == 120
    assert digest["dtcs"] == [{"dtc_code": "P0301", "status": "active"}]
    assert digest["driveSummary"] == [{"max_rpm": 5200}]


def test_size_stays_bounded_with_many_long_parameters(db: tuple[Path, sqlite3.Connection]) -> None:
    path, conn = db
    rows = []
    for i in range(20_000):
        name = f"MANUFACTURER_SPECIFIC_PARAMETER_WITH_A_LONG_NAME_{i % 200:03d}" + "X" * 40
        rows.append(
            row(
                i + 1,
                name,
                i * 1.2345678,
                f"2026-04-19T08:{i // 600 % 60:02d}:{i // 10 % 60:02d}Z",
                unit="some/unit" * 10,
            )
        )
    insert(conn, "realtime_data", rows)
    insert(
        conn,
        "alert_log",
        [
            {"id": i, "drive_id": 1, "timestamp": "2026-04-19T08:10:00Z", "text": "y" * 300}
            for i in range(1, 50)
        ],
    )
    digest = build_drive_digest(path, DEVICE, 1)
    assert len(digest_text(digest)) <= DIGEST_MAX_CHARS
    assert digest["truncated"] is True
    assert digest["parameterCount"] == 200
    assert len(digest["parameters"]) <= MAX_PARAMETERS
    assert len(digest["parameters"]) + digest["omittedParameterCount"] == 200
    assert all(len(p["name"]) <= 64 for p in digest["parameters"])
    # A smaller budget trims further but still keeps the most sampled parameters.
    small = build_drive_digest(path, DEVICE, 1, max_chars=4000)
    assert len(digest_text(small)) <= 4000 and small["parameters"]


def test_inline_digest_matches_the_synced_one(db: tuple[Path, sqlite3.Connection]) -> None:
    path, conn = db
    rng = random.Random(3)
    rows = [
        row(
            i,
            rng.choice(["RPM", "MAF", "LOAD"]),
            rng.uniform(0, 100),
            f"2026-04-19T08:{i // 60:02d}:{i % 60:02d}Z",
        )
        for i in range(1, 1500)
    ]
    insert(conn, "realtime_data", rows)
    synced = build_drive_digest(path, DEVICE, 1)
    inline = build_inline_digest(
        DEVICE, [(r["parameter_name"], r["value"], r["timestamp"], r["unit"]) for r in rows]
    )
    assert inline["parameters"] == synced["parameters"]
    assert inline["source"] == "inline" and "driveId" not in inline
