"""Sync ingest benchmark: HTTP /api/v1/sync against plain SQLite inserts, same process.

Posts N realistic 500-row realtime_data batches (about 88 KB each, one new TCP
connection per request like the Pi) to a real companion on 127.0.0.1, then
inserts the same rows into a plain SQLite table on the same filesystem with the
same durability settings (WAL, synchronous=FULL, one transaction per batch).
Prints rows/s for both and their ratio, batch latency p50/p99, and the server's
RSS. Goals (issue 2): ratio >= 0.3, p99 <= 50 ms, idle RSS <= 50 MB.

    .venv/bin/python bench/sync_ingest.py [--batches 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import cpu_seconds, peak_rss_mib, rss_mib, worker_pid
from tests.companion_process import Companion
from tests.sync_payloads import realtime_rows, sync_body

BATCH = 500


def post(port: int, key: str, payload: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/api/v1/sync",
        body=payload,
        headers={
            "Content-Type": "application/json",
            "X-Api-Key": key,
            "Connection": "close",
            "User-Agent": "Python-urllib/3.11",
        },
    )
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, time.perf_counter() - started


class Baseline:
    """The same rows into a plain SQLite table: same filesystem, same durability
    (WAL, synchronous=FULL), one transaction per batch."""

    COLS = (
        "id",
        "timestamp",
        "parameter_name",
        "value",
        "unit",
        "profile_id",
        "data_source",
        "drive_id",
    )

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("""CREATE TABLE realtime_data (id INTEGER PRIMARY KEY, timestamp TEXT,
                        parameter_name TEXT, value REAL, unit TEXT, profile_id TEXT,
                        data_source TEXT, drive_id INTEGER)""")

    def insert(self, rows: list[dict]) -> float:
        started = time.perf_counter()
        self.conn.execute("BEGIN")
        self.conn.executemany(
            "INSERT OR REPLACE INTO realtime_data VALUES (?,?,?,?,?,?,?,?)",
            [tuple(r[c] for c in self.COLS) for r in rows],
        )
        self.conn.execute("COMMIT")
        return time.perf_counter() - started


def concurrent(comp: Companion, payloads: list[bytes], senders: int, worker: int) -> int:
    """Every sender posts its share of the batches back to back; rows/s over the wall clock.

    Also prints the server's CPU time per batch (what the ingest costs, whatever else runs on
    the machine) and the load average: on a shared machine, other processes' load stretches
    every request, p50 and p99 alike, and the wall-clock figures move with it."""
    latencies: list[float] = []
    cpu_before = cpu_seconds(worker)
    started = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        for status, seconds in pool.map(lambda b: post(comp.port, comp.key, b), payloads):
            if status != 200:
                print(f"unexpected status {status}", file=sys.stderr)
                return 1
            latencies.append(seconds)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(worker) - cpu_before
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"senders               {senders}, {len(payloads)} batches of {BATCH} rows")
    print(f"companion over HTTP   {len(payloads) * BATCH / elapsed:10.0f} rows/s (wall clock)")
    print(f"batch latency p50     {p50 * 1000:10.1f} ms")
    print(f"batch latency p99     {p99 * 1000:10.1f} ms   (goal <= 3x p50: {p99 / p50:.1f}x)")
    print(f"server CPU per batch  {cpu / len(payloads) * 1000:10.1f} ms")
    load = os.getloadavg()[0]
    print(f"load average (1 min)  {load:10.1f}   on {os.cpu_count()} CPUs")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument(
        "--senders",
        type=int,
        default=1,
        help="concurrent senders (issue 15 item 11: with 4, p99 should stay <= 3x p50)",
    )
    parser.add_argument(
        "--data-parent",
        type=Path,
        default=Path(__file__).parent.parent,
        help="directory for the companion's data (default: the repository's filesystem); "
        "/dev/shm takes the disk's fsync out of the figures",
    )
    args = parser.parse_args()
    batches = [
        realtime_rows(i * BATCH + 1, BATCH, drive_id=1 + i // 50) for i in range(args.batches)
    ]
    payloads = [
        json.dumps(sync_body("realtime_data", rows, batch_id=f"bench-{i}")).encode()
        for i, rows in enumerate(batches)
    ]
    with tempfile.TemporaryDirectory(dir=args.data_parent) as tmp:
        comp = Companion(Path(tmp)).start()
        try:
            assert comp.proc is not None
            worker = worker_pid(comp.proc.pid)
            post(comp.port, comp.key, payloads[0])  # warm-up: first connection, imports
            idle = rss_mib(worker)
            if args.senders > 1:
                return concurrent(comp, payloads, args.senders, worker)
            baseline = Baseline(Path(tmp) / "baseline.db")
            latencies, base_times = [], []
            # Interleaved, batch by batch, so that load from other processes on this
            # noisy machine falls on both sides of the ratio alike.
            for payload, batch_rows in zip(payloads, batches, strict=True):
                status, seconds = post(comp.port, comp.key, payload)
                if status != 200:
                    print(f"unexpected status {status}", file=sys.stderr)
                    return 1
                latencies.append(seconds)
                base_times.append(baseline.insert(batch_rows))
            peak = peak_rss_mib(worker)
        finally:
            comp.stop()
    http_elapsed, base_elapsed = sum(latencies), sum(base_times)
    rows = args.batches * BATCH
    http_rate, base_rate = rows / http_elapsed, rows / base_elapsed
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"batch size            {BATCH} rows, {len(payloads[0]) / 1024:.1f} KiB JSON")
    print(f"batches               {args.batches}")
    print(f"companion over HTTP   {http_rate:10.0f} rows/s")
    print(f"plain SQLite baseline {base_rate:10.0f} rows/s")
    print(f"ratio                 {http_rate / base_rate:10.2f}   (goal >= 0.3)")
    print(f"batch latency p50     {statistics.median(latencies) * 1000:10.1f} ms")
    print(f"batch latency p99     {p99 * 1000:10.1f} ms   (goal <= 50)")
    print(f"server RSS idle       {idle:10.1f} MiB (goal <= 50)")
    print(f"server RSS peak       {peak:10.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
