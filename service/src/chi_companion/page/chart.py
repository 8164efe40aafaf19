"""Server-rendered SVG line charts: no script, nothing fetched, readable without a browser's
help. One chart per parameter, because parameters have different units and ranges."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from .downsample import Point

WIDTH, HEIGHT = 800, 170
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 28
X_TICKS, Y_TICKS = 6, 4


def _num(value: float) -> str:
    return f"{value:.4g}"


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def line_chart(name: str, unit: str | None, points: Sequence[Point], raw_count: int) -> str:
    """One parameter over time as an <svg>. ``points`` are already downsampled, in time order;
    ``raw_count`` is how many rows they stand for (said in the caption)."""
    label = f"{name} ({unit})" if unit else name
    title = f"{label}: {len(points)} points drawn from {raw_count} rows"
    head = (
        f'<figure class="chart" data-parameter="{escape(name)}" data-points="{len(points)}">'
        f"<figcaption>{escape(label)} <small>{len(points)} points from {raw_count} rows"
        "</small></figcaption>"
    )
    if not points:
        return head + "<p>No numeric values for this parameter.</p></figure>"
    t0, t1 = points[0][0], points[-1][0]
    v_lo = min(v for _, v in points)
    v_hi = max(v for _, v in points)
    t_span = (t1 - t0) or 1.0
    v_span = (v_hi - v_lo) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / t_span * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - (v - v_lo) / v_span * plot_h

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for i in range(Y_TICKS + 1):
        v = v_lo + v_span * i / Y_TICKS
        yy = y(v)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
            f'<text x="{LEFT - 4}" y="{yy + 4:.1f}" text-anchor="end">{_num(v)}</text>'
        )
    for i in range(X_TICKS + 1):
        t = t0 + t_span * i / X_TICKS
        xx = x(t)
        anchor = "start" if i == 0 else "end" if i == X_TICKS else "middle"
        parts.append(
            f'<text x="{xx:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{_clock(t)}</text>'
        )
    if unit:
        parts.append(f'<text x="4" y="{TOP + 10}" class="unit">{escape(unit)}</text>')
    coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    parts.append(f'<polyline class="series" points="{coords}"/></svg>')
    return head + "".join(parts) + "<small>time (UTC)</small></figure>"
