"""Drive page benchmark: a one-hour drive (1 Hz, five parameters, 18,000 rows), the page as
served (min/max downsampled) against the same page drawing every raw row, same process.

The companion's Bottle app is called in this process through WSGI (no sockets), so the time
is the server's own: reading the drive from SQLite, downsampling, rendering HTML and SVG.
Prints bytes and median render time of both and their ratios. Goals (issue 16): the served
page < 300 KB and < 300 ms.

    .venv/bin/python bench/drive_page.py [--seconds 3600] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chi_companion.page import views

from bench.in_process import call, companion_app, session_cookie
from tests.drive_rows import FIVE, drive_rows
from tests.sync_payloads import sync_body

DEVICE, KEY = "chi-eclipse-01", "bench-key-" + "x" * 24
LIMIT_BYTES, LIMIT_MS = 300_000, 300.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ctx, app = companion_app(tmp, DEVICE, KEY)
        rows = drive_rows(1, args.seconds)
        for i in range(0, len(rows), 2000):
            body = json.dumps(sync_body("realtime_data", rows[i : i + 2000])).encode()
            status, _, out = call(
                app, "POST", "/api/v1/sync", body, Content_Type="application/json", X_API_KEY=KEY
            )
            assert status.startswith("200"), out
        cookie = session_cookie(app, KEY)
        path = f"/devices/{DEVICE}/drives/1?" + urlencode([("p", n) for n, _ in FIVE])

        def measure() -> tuple[int, float]:
            times, size = [], 0
            for _ in range(args.repeat):
                started = time.perf_counter()
                status, _, page = call(app, "GET", path, Cookie=cookie)
                times.append((time.perf_counter() - started) * 1000)
                assert status.startswith("200"), page[:500]
                size = len(page)
            return size, statistics.median(times)

        served = measure()
        views.CHART_BUCKETS = 10**9  # the baseline: every raw row drawn
        raw = measure()
        ctx.close()
    print(
        f"drive: {args.seconds} s at 1 Hz x {len(FIVE)} parameters = {len(rows)} rows, all "
        f"{len(FIVE)} parameters charted; median of {args.repeat}"
    )
    print(f"{'':12}{'bytes':>10}{'render ms':>12}")
    print(f"{'raw rows':12}{raw[0]:>10}{raw[1]:>12.1f}")
    print(f"{'downsampled':12}{served[0]:>10}{served[1]:>12.1f}")
    print(f"ratio downsampled/raw: size {served[0] / raw[0]:.3f}, time {served[1] / raw[1]:.3f}")
    ok = served[0] < LIMIT_BYTES and served[1] < LIMIT_MS
    print(f"goal < {LIMIT_BYTES} bytes and < {LIMIT_MS:.0f} ms: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
