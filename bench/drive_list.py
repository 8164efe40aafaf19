"""Drive list benchmark: a device's drive list page on a year-two device, against the
0.2.0 way of summarising the listed drives (reading every row of each), same process.

The device has ``--drives`` drives (a Pi that logs every day for two years has ~700); most
are short, the newest ``--long`` (page 1: the worst page) are an hour long at 1 Hz x five
parameters, 18,000 rows each. Rows arrive through /api/v1/sync like the Pi's. The
companion's Bottle app is called in this process through WSGI (no sockets), so times are the
server's own. Prints the median time of page 1 (long drives), of the last page (short
drives) and of the baseline (0.2.0's list of page 1: each drive summarised from its rows), and the
ratios. Goal: page 1 < 300 ms and not growing with drive length (page 1 / last page < 2).

    .venv/bin/python bench/drive_list.py [--drives 700] [--long 20] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chi_companion.page.views import DRIVES_PER_PAGE
from chi_companion.sync.queries import drive_ids
from chi_companion.sync.store import SCHEMA as SYNC_SCHEMA

from bench.in_process import call, companion_app, session_cookie
from tests.drive_rows import drive_rows
from tests.drive_scan import scan_summary
from tests.sync_payloads import sync_body

DEVICE, KEY = "chi-eclipse-01", "bench-key-" + "x" * 24
LIMIT_MS = 300.0
BATCH = 2000


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drives", type=int, default=700)
    ap.add_argument("--long", type=int, default=DRIVES_PER_PAGE)
    ap.add_argument("--long-seconds", type=int, default=3600)
    ap.add_argument("--short-seconds", type=int, default=120)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ctx, app = companion_app(tmp, DEVICE, KEY)

        started = time.perf_counter()
        next_id, pending, total = 1, [], 0
        first_day = date(2024, 12, 1)

        def flush() -> None:
            body = json.dumps(sync_body("realtime_data", pending)).encode()
            status, _, out = call(
                app, "POST", "/api/v1/sync", body, Content_Type="application/json", X_API_KEY=KEY
            )
            assert status.startswith("200"), out[:300]
            pending.clear()

        for drive_id in range(1, args.drives + 1):
            long = drive_id > args.drives - args.long
            rows = drive_rows(drive_id, args.long_seconds if long else args.short_seconds, next_id)
            day = (first_day + timedelta(days=drive_id)).isoformat()
            for row in rows:
                row["timestamp"] = day + row["timestamp"][10:]
            next_id += len(rows)
            total += len(rows)
            pending += rows
            while len(pending) >= BATCH:
                rest = pending[BATCH:]
                del pending[BATCH:]
                flush()
                pending += rest
        if pending:
            flush()
        generated = time.perf_counter() - started

        cookie = session_cookie(app, KEY)
        last_page = -(-args.drives // DRIVES_PER_PAGE)

        def page(n: int) -> Callable[[], None]:
            def get() -> None:
                status, _, out = call(app, "GET", f"/devices/{DEVICE}?page={n}", Cookie=cookie)
                assert status.startswith("200"), out[:300]
                assert f"{args.drives} drives" in out.decode(), "drive count missing"

            return get

        conn = ctx.core.db.conn()

        def baseline() -> None:
            # 0.2.0's list: every drive id by skipping through the drive index, then each
            # listed drive summarised from its rows (page 1: the newest 20).
            for drive_id in sorted(drive_ids(conn, DEVICE), reverse=True)[:DRIVES_PER_PAGE]:
                scan_summary(conn, DEVICE, drive_id)

        first = median_ms(page(1), args.repeat)
        last = median_ms(page(last_page), args.repeat)
        base = median_ms(baseline, args.repeat)
        # The one-off cost of an upgrade from 0.2.0: every drive summarised from its rows.
        conn.execute("DROP TABLE drive_summaries")
        started = time.perf_counter()
        ctx.core.db.migrate(SYNC_SCHEMA)
        upgrade = time.perf_counter() - started
        ctx.close()
    print(
        f"device: {args.drives} drives, {total} rows (the newest {args.long} drives "
        f"{args.long_seconds} s, the others {args.short_seconds} s, at 1 Hz x 5 parameters), "
        f"generated through /api/v1/sync in {generated:.1f} s; median of {args.repeat}"
    )
    print(f"{'':44}{'ms':>10}")
    print(f"{'page 1 (20 one-hour drives)':44}{first:>10.1f}")
    print(f"{f'page {last_page} (short drives)':44}{last:>10.1f}")
    print(f"{'baseline: page 1 the 0.2.0 way':44}{base:>10.1f}")
    print(f"ratio page 1 / baseline: {first / base:.4f}")
    print(f"ratio page 1 / page {last_page}: {first / last:.2f}")
    print(f"upgrade from 0.2.0 (every drive summarised once at start): {upgrade:.1f} s")
    ok = first < LIMIT_MS and first / last < 2
    print(f"goal page 1 < {LIMIT_MS:.0f} ms and < 2x the short page: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
