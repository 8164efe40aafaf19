"""Fewer points for a chart without losing its peaks: min and max per time bucket.

A one-hour drive at 1 Hz has 3,600 points per parameter, more than a chart is pixels wide.
Each bucket keeps its lowest and its highest point (in time order), so a spike of one
second still shows, and the result has at most ``2 * buckets`` points whatever the input.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]  # (unix seconds, value)


def min_max(points: Sequence[Point], buckets: int) -> list[Point]:
    """``points`` sorted by time; at most 2 points per bucket of equal time span."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    if len(points) <= 2 * buckets:
        return list(points)
    t0, t1 = points[0][0], points[-1][0]
    span = (t1 - t0) or 1.0
    out: list[Point] = []
    current = -1
    lo: Point | None = None
    hi: Point | None = None

    def flush() -> None:
        if lo is None or hi is None:
            return
        if lo is hi:
            out.append(lo)
        else:
            out.extend(sorted((lo, hi)))

    for point in points:
        b = min(buckets - 1, int((point[0] - t0) * buckets / span))
        if b != current:
            flush()
            current, lo, hi = b, point, point
            continue
        assert lo is not None and hi is not None
        if point[1] < lo[1]:
            lo = point
        if point[1] > hi[1]:
            hi = point
    flush()
    return out
