"""Analysis benchmark: drive digest build time, and the companion's own overhead per analysis.

1. Digest: drives of 1k, 10k and 100k realtime_data rows (8 parameters, like the Pi's
   default set) in a SQLite file with the companion's sync schema; the device also holds
   two other drives of the same size, so the drive lookup has to use the index. The
   baseline is the same statistics computed in Python from all of the drive's rows, in
   the same process: the ratio (digest time / baseline time) shows what doing the work
   in SQL costs or saves, and the digest's size shows it stays bounded.
2. Overhead: a real companion process and the Ollama API emulator (a test double that
   answers at once), analyses run one after another (POST /analyze, then
   GET /analyses/{id}?wait=); overhead = end-to-end time minus the Ollama call time the
   companion measured (request, emulator's answer, response).

    .venv/bin/python bench/analysis.py [--runs 20] [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chi_companion.analysis.digest import DIGEST_MAX_CHARS, build_drive_digest, digest_text
from chi_companion.core.db import connect
from chi_companion.sync.store import SCHEMA

from tests.companion_process import Companion
from tests.ollama_emulator import OllamaEmulator
from tests.sync_payloads import realtime_rows, sync_body

DEVICE = "chi-eclipse-01"


def make_db(path: Path, rows_per_drive: int) -> None:
    conn = connect(path)
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute("BEGIN")
    for drive in (1, 2, 3):
        rows = realtime_rows(drive * 10_000_000, rows_per_drive, drive_id=drive)
        conn.executemany(
            """INSERT INTO synced_rows (device_id, table_name, row_id, doc, received_at)
               VALUES (?, 'realtime_data', ?, ?, '2026-04-19T09:00:00Z')""",
            [(DEVICE, r["id"], json.dumps(r)) for r in rows],
        )
    conn.execute("COMMIT")
    conn.close()


def python_baseline(path: Path, drive: int) -> dict[str, Any]:
    """The naive way: every row into Python, then sort and aggregate there."""
    conn = sqlite3.connect(path)
    try:
        docs = conn.execute(
            """SELECT doc FROM synced_rows INDEXED BY synced_rows_by_drive
               WHERE device_id = ? AND table_name = 'realtime_data' AND drive_id = ?""",
            (DEVICE, drive),
        ).fetchall()
    finally:
        conn.close()
    series: dict[str, list[float]] = {}
    for (doc,) in docs:
        row = json.loads(doc)
        if isinstance(row.get("value"), int | float):
            series.setdefault(row["parameter_name"], []).append(row["value"])
    stats = {}
    for name, values in series.items():
        values.sort()
        n = len(values)
        stats[name] = {
            "n": n,
            "min": values[0],
            "max": values[-1],
            "mean": sum(values) / n,
            **{q: values[int(f * (n - 1))] for q, f in (("p5", 0.05), ("p50", 0.5), ("p95", 0.95))},
        }
    return stats


def timed(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_digest(sizes: list[int], repeat: int) -> None:
    print(f"== digest build (median of {repeat} runs)")
    print(f"{'rows':>8}  {'digest ms':>10}  {'python ms':>10}  {'ratio':>6}  {'chars':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"bench-{size}.db"
            make_db(path, size)
            digest = build_drive_digest(path, DEVICE, 2)
            assert digest["rowCount"] == size, digest["rowCount"]
            chars = len(digest_text(digest))
            assert chars <= DIGEST_MAX_CHARS
            t_digest = timed(lambda p=path: build_drive_digest(p, DEVICE, 2), repeat)
            t_python = timed(lambda p=path: python_baseline(p, 2), repeat)
            print(
                f"{size:>8}  {t_digest * 1000:>10.1f}  {t_python * 1000:>10.1f}  "
                f"{t_digest / t_python:>6.2f}  {chars:>6}"
            )


def bench_overhead(runs: int, drive_rows: int) -> None:
    emu = OllamaEmulator(models=("gemma2:2b",)).start()
    with tempfile.TemporaryDirectory() as tmp:
        comp = Companion(
            Path(tmp),
            {"ollama": {"url": emu.url, "poll_seconds": 5}, "analysis": {"auto": False}},
        ).start()
        try:
            rows = realtime_rows(1, drive_rows, drive_id=1)
            for i in range(0, drive_rows, 500):
                status, _, body = comp.request(
                    "POST", "/api/v1/sync", sync_body("realtime_data", rows[i : i + 500])
                )
                assert status == 200, body
            e2e, ollama, digest, overhead = [], [], [], []
            for n in range(runs + 1):
                started = time.perf_counter()
                status, _, accepted = comp.request(
                    "POST",
                    "/api/v1/analyze",
                    {"deviceId": comp.device, "driveId": 1, "force": True},
                )
                assert status in (200, 202), accepted
                status, _, job = comp.request(
                    "GET", f"/api/v1/analyses/{accepted['id']}?wait=30", timeout=60
                )
                elapsed = (time.perf_counter() - started) * 1000
                assert job["status"] == "done", job
                if n == 0:
                    continue  # warm-up: first-use imports and caches
                e2e.append(elapsed)
                ollama.append(job["durations"]["ollamaMs"])
                digest.append(job["durations"]["digestMs"])
                overhead.append(elapsed - job["durations"]["ollamaMs"])
        finally:
            comp.stop()
            emu.stop()

    def fmt(values: list[float]) -> str:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return f"p50 {statistics.median(values):7.1f} ms   p95 {p95:7.1f} ms"

    print(f"== per analysis, {drive_rows}-row drive, instant emulator, {runs} runs")
    print(f"   end to end     {fmt(e2e)}")
    print(f"   Ollama call    {fmt(ollama)}")
    print(f"   digest         {fmt(digest)}")
    print(f"   overhead       {fmt(overhead)}   (end to end minus Ollama call)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    bench_digest([int(s) for s in args.sizes.split(",")], args.repeat)
    for drive_rows in (1000, 10_000):
        bench_overhead(args.runs, drive_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
