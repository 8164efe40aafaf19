"""Mixed-load soak: three Pis syncing at driving cadence, backups, analyses, health polls.

For --duration seconds (default 600; CI runs 60) against a real companion on 127.0.0.1
and the Ollama API emulator (a test double, instant answers):

- three simulated Pis each post a 500-row realtime_data batch every 5 s; one batch in four
  re-sends the previous batch, one in four updates rows already sent (new values, same ids);
- one backup upload a minute (PUT, with its SHA-256);
- an analysis queued for each finished drive;
- /api/v1/health polled every second.

At the end it checks that every row sent is stored exactly once with its last value, every
backup is present with its hash, there were no errors, and the server's RSS did not keep
growing; it prints request counts, error counts, p50/p99 latency per endpoint and RSS over
time. Exit status 0 only when every check passes.

    .venv/bin/python bench/soak.py --duration 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import rss_mib, worker_pid
from tests.companion_process import Companion
from tests.ollama_emulator.emulator import OllamaEmulator
from tests.sync_payloads import realtime_rows, sync_body

DEVICES = ("chi-eclipse-01", "chi-eclipse-02", "chi-eclipse-03")
BATCH = 500
ROWS_PER_DRIVE = 3000


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)

    def record(self, endpoint: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies[endpoint].append(seconds)
            if error:
                self.errors[endpoint].append(error)


def call(
    stats: Stats,
    endpoint: str,
    url: str,
    method: str = "GET",
    key: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    ok: tuple[int, ...] = (200,),
) -> Any:
    all_headers = {"Connection": "close", **(headers or {})}
    if key:
        all_headers["X-API-Key"] = key
    req = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    started = time.perf_counter()
    status, payload, error = 0, b"", None
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    except OSError as err:
        error = f"{type(err).__name__}: {err}"
    if error is None and status not in ok:
        error = f"HTTP {status}: {payload[:200]!r}"
    stats.record(endpoint, time.perf_counter() - started, error)
    return json.loads(payload) if payload and error is None else None


class Pi(threading.Thread):
    """One car: sends batches at driving cadence, re-sends and updates some of them."""

    def __init__(
        self, device: str, key: str, base: str, stats: Stats, stop: threading.Event, interval: float
    ) -> None:
        super().__init__(name=device, daemon=True)
        self.device, self.key, self.base, self.stats = device, key, base, stats
        self.stop_event, self.interval = stop, interval
        self.last_value: dict[int, float] = {}  # row id -> value last sent
        self.next_id = 1
        self.drives_done: list[int] = []

    def post(self, rows: list[dict[str, Any]], n: int) -> None:
        payload = json.dumps(
            sync_body("realtime_data", rows, device=self.device, batch_id=f"{self.device}-{n}")
        ).encode()
        result = call(
            self.stats,
            "POST /sync",
            f"{self.base}/api/v1/sync",
            "POST",
            self.key,
            payload,
            {"Content-Type": "application/json"},
        )
        if result is not None:
            for row in rows:
                self.last_value[row["id"]] = row["value"]

    def run(self) -> None:
        n, previous = 0, None
        while not self.stop_event.is_set():
            started = time.monotonic()
            kind = n % 4
            if kind == 1 and previous:
                rows = previous  # a lost response: the same rows again
            elif kind == 3 and previous:
                rows = [dict(r, value=r["value"] + 1000 + n) for r in previous]  # updated rows
            else:
                drive = 1 + (self.next_id - 1) // ROWS_PER_DRIVE
                rows = realtime_rows(self.next_id, BATCH, drive_id=drive)
                self.next_id += BATCH
                if (self.next_id - 1) % ROWS_PER_DRIVE == 0:
                    self.drives_done.append(drive)
            self.post(rows, n)
            previous = rows
            n += 1
            self.stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))


def uploader(
    comp: Companion,
    keys: dict[str, str],
    stats: Stats,
    stop: threading.Event,
    interval: float,
    sent: list[tuple[str, str]],
) -> None:
    n = 0
    while not stop.is_set():
        device = DEVICES[n % len(DEVICES)]
        data = os.urandom(256 * 1024) + f"backup {n}".encode()
        digest = hashlib.sha256(data).hexdigest()
        result = call(
            stats,
            "PUT /backups",
            f"{comp.url}/api/v1/backups/{device}/database/obd-{n}.db",
            "PUT",
            keys[device],
            data,
            {"X-Content-SHA256": digest, "Content-Type": "application/octet-stream"},
            ok=(201,),
        )
        if result is not None:
            sent.append((device, digest))
        n += 1
        stop.wait(interval)


def analyser(
    comp: Companion,
    keys: dict[str, str],
    pis: list[Pi],
    stats: Stats,
    stop: threading.Event,
    queued: list[str],
) -> None:
    asked: set[tuple[str, int]] = set()
    while not stop.wait(2.0):
        for pi in pis:
            for drive in list(pi.drives_done):
                if (pi.device, drive) in asked:
                    continue
                asked.add((pi.device, drive))
                body = json.dumps({"deviceId": pi.device, "driveId": drive}).encode()
                result = call(
                    stats,
                    "POST /analyze",
                    f"{comp.url}/api/v1/analyze",
                    "POST",
                    keys[pi.device],
                    body,
                    {"Content-Type": "application/json"},
                    ok=(200, 202),
                )
                if result is not None:
                    queued.append(str(result["id"]))


def poller(comp: Companion, stats: Stats, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        call(stats, "GET /health", f"{comp.url}/api/v1/health")


def check_rows(comp: Companion, pis: list[Pi]) -> list[str]:
    problems = []
    conn = sqlite3.connect(comp.data_dir / "companion.db")
    try:
        for pi in pis:
            stored = {
                row_id: json.loads(doc)["value"]
                for row_id, doc in conn.execute(
                    "SELECT row_id, doc FROM synced_rows WHERE device_id = ? AND table_name = ?",
                    (pi.device, "realtime_data"),
                )
            }
            if set(stored) != set(pi.last_value):
                problems.append(
                    f"{pi.device}: {len(stored)} rows stored, "
                    f"{len(pi.last_value)} distinct rows acknowledged"
                )
            wrong = [i for i, v in pi.last_value.items() if stored.get(i) != v]
            if wrong:
                problems.append(f"{pi.device}: {len(wrong)} rows without their last value")
    finally:
        conn.close()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--sync-interval", type=float, default=5.0)
    parser.add_argument("--backup-interval", type=float, default=60.0)
    args = parser.parse_args()

    emulator = OllamaEmulator(models=("gemma2:2b",)).start()
    keys = {d: secrets.token_urlsafe(32) for d in DEVICES}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        overrides: dict[str, dict[str, Any]] = {
            "ollama": {"url": emulator.url},
            "analysis": {"auto": False},
            **{f"devices.{d}": {"api_key": k} for d, k in keys.items()},
        }
        comp = Companion(Path(tmp), overrides)
        comp.key = keys[DEVICES[0]]
        comp.start()
        assert comp.proc is not None
        worker = worker_pid(comp.proc.pid)
        stats, stop = Stats(), threading.Event()
        pis = [Pi(d, keys[d], comp.url, stats, stop, args.sync_interval) for d in DEVICES]
        backups: list[tuple[str, str]] = []
        analyses: list[str] = []
        threads: list[threading.Thread] = [
            *pis,
            threading.Thread(
                target=uploader,
                daemon=True,
                args=(comp, keys, stats, stop, args.backup_interval, backups),
            ),
            threading.Thread(
                target=analyser, daemon=True, args=(comp, keys, pis, stats, stop, analyses)
            ),
            threading.Thread(target=poller, daemon=True, args=(comp, stats, stop)),
        ]
        rss: list[tuple[float, float]] = []
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - started) < args.duration:
            rss.append((elapsed, rss_mib(worker)))
            time.sleep(min(5.0, args.duration - elapsed))
        stop.set()
        for thread in threads:
            thread.join(60)
        rss.append((time.monotonic() - started, rss_mib(worker)))

        problems = check_rows(comp, pis)
        listing = {}
        for device in DEVICES:
            _, _, body = comp.request("GET", f"/api/v1/backups?deviceId={device}", key=keys[device])
            listing.update({(device, b["sha256"]): b for b in body["backups"]})
        missing = [b for b in backups if b not in listing]
        if missing:
            problems.append(f"{len(missing)} acknowledged backups missing or with another hash")
        done = 0
        for analysis_id in analyses:
            _, _, body = comp.request(
                "GET", f"/api/v1/analyses/{analysis_id}?wait=30", key=comp.operator_key
            )
            done += body.get("status") == "done"
        comp.stop()
    emulator.stop()

    print(
        f"duration {args.duration:.0f} s, {len(DEVICES)} Pis, "
        f"{sum(len(p.last_value) for p in pis)} distinct rows, {len(backups)} backups, "
        f"{done}/{len(analyses)} analyses done"
    )
    print(f"{'endpoint':16s} {'requests':>8s} {'errors':>6s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for endpoint, unsorted in sorted(stats.latencies.items()):
        times = sorted(unsorted)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(
            f"{endpoint:16s} {len(times):8d} {len(stats.errors[endpoint]):6d} "
            f"{statistics.median(times) * 1000:8.1f} {p99 * 1000:8.1f}"
        )
    for endpoint, errors in stats.errors.items():
        if errors:
            problems.append(f"{len(errors)} errors on {endpoint}, first: {errors[0]}")
    if done != len(analyses):
        problems.append(f"only {done} of {len(analyses)} analyses finished")
    print("server RSS (MiB) over time: " + ", ".join(f"{t:.0f}s={m:.1f}" for t, m in rss))
    quarter = max(1, len(rss) // 4)
    early = statistics.mean(m for _, m in rss[:quarter])
    late = statistics.mean(m for _, m in rss[-quarter:])
    # Allow warm-up (caches, thread stacks) but not steady growth.
    if late > early * 1.5 + 10:
        problems.append(f"RSS grew from {early:.1f} to {late:.1f} MiB")
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak: OK" if not problems else f"soak: {len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
