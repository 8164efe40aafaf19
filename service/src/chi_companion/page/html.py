"""The page's HTML frame and the small formatting helpers every view shares.

Every value that came from a device, a file or the model goes through ``esc``: drive data
and analysis text are not trusted to be free of markup."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

from ..core.clock import parse_iso_z
from ..core.units import human_size

# Scripts are not used at all; styles live in the page itself so nothing is fetched.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}header form{margin-left:auto}
main{padding:1em 1.2em;max-width:1100px}h1{font-size:1.35em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #dde1e7;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5}.ok{color:#137333}.degraded,.not_configured{color:#a15c00}
.unhealthy,.failed{color:#b3261e}.muted{color:#667}.flash{background:#fff6d6;padding:.5em}
.chart{background:#fff;margin:0 0 1em;padding:.4em .6em}.chart svg text{font-size:11px;fill:#445}
.plot{fill:#fbfcfd;stroke:#c9ced6}.grid{stroke:#e4e7ec}
.series{fill:none;stroke:#1a5fb4;stroke-width:1.3}
button{padding:.35em .9em}code{font-size:.9em;word-break:break-all}
"""


def esc(value: Any) -> str:
    return escape("" if value is None else str(value))


def age(iso: str | None, now: datetime | None = None) -> str:
    """'3 h 5 min ago' from one of our ``...Z`` timestamps; 'never' for None."""
    if not iso:
        return "never"
    try:
        moment = parse_iso_z(iso)
    except ValueError:
        return "unknown"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    return f"{duration(max(0, seconds))} ago"


def duration(seconds: float) -> str:
    seconds = round(seconds)  # julianday arithmetic leaves 1198.9999... for 1199
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def size(n: int | None) -> str:
    return "-" if n is None else human_size(n)


def status(value: Any) -> str:
    text = esc(value)
    return f'<span class="{text}">{text}</span>'


def page(title: str, body: str, who: str | None = None, csrf: str | None = None) -> str:
    nav = ""
    if who is not None and csrf is not None:
        nav = (
            '<a href="/">Overview</a><a href="/backups">Backups &amp; analyses</a>'
            f'<span class="muted">signed in: {esc(who)}</span>'
            '<form method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            '<button type="submit" id="sign-out">Sign out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)} · chi-companion</title><style>{STYLE}</style></head>"
        f"<body><header><strong>chi-companion</strong>{nav}</header>"
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )
