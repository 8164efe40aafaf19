"""What each page shows, read from the companion's parts and rendered as HTML fragments."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from ..companion import Companion
from ..sync.queries import drive_count, drive_exists, drive_list, drive_series
from .chart import WIDTH, line_chart
from .downsample import min_max
from .html import age, duration, esc, size, status
from .session import Session

DRIVES_PER_PAGE = 20
# Half a point per horizontal pixel of the plot: min and max per bucket fill it exactly.
CHART_BUCKETS = WIDTH // 2
DEFAULT_PARAMETERS = ("RPM", "SPEED", "COOLANT_TEMP")
MAX_CHARTS = 8


class BadRequest(Exception):
    """A request the page cannot answer as asked (400 with the reason)."""


class Missing(Exception):
    """Nothing by that name or number (404 with the reason)."""


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def visible_devices(ctx: Companion, session: Session) -> list[str]:
    return [d for d in sorted(ctx.config.devices) if session.may_access(d)]


# ------------------------------------------------------------------------------ overview


def overview(ctx: Companion, session: Session) -> str:
    report = ctx.health()
    newest = ctx.backups.newest_per_device()
    rows = []
    for device in visible_devices(ctx, session):
        last_sync = report["devices"].get(device, {}).get("lastSyncAt")
        backup, count = newest.get(device, (None, 0))
        rows.append(
            f'<tr><td><a href="/devices/{quote(device)}">{esc(device)}</a></td>'
            f"<td>{esc(last_sync or 'never')}<br><small>{age(last_sync)}</small></td>"
            f"<td>{esc(backup.received_at if backup else 'never')}"
            f"<br><small>{age(backup.received_at if backup else None)}"
            f"{f', {count} kept' if count else ''}</small></td></tr>"
        )
    comps = report["components"]
    parts = [
        f"<p>Overall: {status(report['status'])} · version {esc(report['version'])} · "
        f"up {duration(report['uptimeSeconds'])}</p>",
        '<h2>Devices</h2><table id="devices"><tr><th>Device</th><th>Last sync</th>'
        "<th>Last backup</th></tr>",
        *rows,
        "</table>",
    ]
    rep = comps.get("replication", {})
    parts.append(
        "<h2>Replication to the NAS</h2><table><tr><th>Status</th><th>Last success</th>"
        "<th>Last run</th><th>Exit code</th><th>Detail</th></tr>"
        f"<tr><td>{status(rep.get('status'))}</td><td>{esc(rep.get('last_success_at') or '-')}"
        f"<br><small>{age(rep.get('last_success_at'))}</small></td>"
        f"<td>{esc(rep.get('finished_at') or '-')}</td><td>{esc(rep.get('exit_code'))}</td>"
        f"<td>{esc(rep.get('detail') or '')}</td></tr></table>"
    )
    oll = comps.get("ollama", {})
    reachable = "yes" if oll.get("reachable") else "no"
    runs_on = esc(oll.get("processor") or "not loaded")
    if oll.get("vramBytes"):
        runs_on += f"<br><small>{size(oll['vramBytes'])} of VRAM</small>"
    parts.append(
        "<h2>Ollama</h2><table><tr><th>Status</th><th>Reachable</th><th>Model</th>"
        "<th>Runs on</th><th>Queue</th><th>Detail</th></tr>"
        f"<tr><td>{status(oll.get('status'))}</td><td>{reachable}</td>"
        f"<td>{esc(oll.get('model'))} ({'present' if oll.get('modelPresent') else 'missing'})"
        f"</td><td>{runs_on}</td>"
        f"<td>{esc(oll.get('queueDepth'))}</td><td>{esc(oll.get('detail') or '')}</td></tr>"
        "</table>"
    )
    disk, db = comps.get("disk", {}), comps.get("database", {})
    parts.append(
        "<h2>Storage</h2><table><tr><th>Disk</th><th>Free</th><th>Total</th>"
        "<th>Database</th></tr>"
        f"<tr><td>{status(disk.get('status'))}</td><td>{size(disk.get('freeBytes'))}</td>"
        f"<td>{size(disk.get('totalBytes'))}</td><td>{status(db.get('status'))}</td></tr></table>"
    )
    return "".join(parts)


# ------------------------------------------------------------------------------ drives


def drives(ctx: Companion, device: str, page_no: int) -> tuple[str, int]:
    conn = ctx.core.db.conn()
    total = drive_count(conn, device)
    pages = max(1, -(-total // DRIVES_PER_PAGE))
    if page_no > pages:
        raise BadRequest(f"page {page_no} does not exist: this device has {pages}")
    rows = []
    listed = drive_list(conn, device, (page_no - 1) * DRIVES_PER_PAGE, DRIVES_PER_PAGE)
    for drive_id, count, t0, t1, params in listed:
        jobs = ctx.analysis.store.list(device, drive_id, None, 1)
        analysed = status(jobs[0].status) if jobs else '<span class="muted">not analysed</span>'
        span = duration(t1 - t0) if t0 is not None and t1 is not None else "-"
        rows.append(
            f'<tr><td><a href="/devices/{quote(device)}/drives/{drive_id}">{drive_id}</a></td>'
            f"<td>{_when(t0)}</td><td>{span}</td><td>{count}</td>"
            f"<td>{esc(', '.join(params))}</td><td>{analysed}</td></tr>"
        )
    nav = []
    if page_no > 1:
        nav.append(f'<a rel="prev" href="?page={page_no - 1}">newer</a>')
    nav.append(f"page {page_no} of {pages}")
    if page_no < pages:
        nav.append(f'<a rel="next" href="?page={page_no + 1}">older</a>')
    body = (
        f"<p>{total} drives, newest first.</p>"
        '<table id="drives"><tr><th>Drive</th><th>Start</th><th>Duration</th><th>Rows</th>'
        "<th>Parameters</th><th>Analysis</th></tr>" + "".join(rows) + "</table>"
        f'<p class="pager">{" · ".join(nav)}</p>'
    )
    return body, total


# ------------------------------------------------------------------------------ one drive


def default_parameters(seen: list[str]) -> list[str]:
    by_upper = {p.upper(): p for p in seen}
    chosen = [by_upper[d] for d in DEFAULT_PARAMETERS if d in by_upper]
    return chosen or seen[:3]


def drive_charts(
    conn: sqlite3.Connection, device: str, drive_id: int, wanted: list[str]
) -> tuple[list[str], list[str], str, dict[str, Any]]:
    """(parameters seen, parameters charted, the charts' HTML, facts) for one drive.

    One pass over the drive's rows; only the charted parameters' points are kept."""
    wanted_set = set(wanted)
    series: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, int] = {}
    units: dict[str, str] = {}
    total, t0, t1 = 0, None, None
    for p, v, u, t in drive_series(conn, device, drive_id):
        total += 1
        name = str(p) if p is not None else "(unnamed)"
        if t is not None:
            t0 = t if t0 is None or t < t0 else t0
            t1 = t if t1 is None or t > t1 else t1
        if name not in counts:
            counts[name] = 0
        if name not in units and isinstance(u, str):
            units[name] = u
        if v is not None and t is not None and (not wanted_set or name in wanted_set):
            counts[name] += 1
            series.setdefault(name, []).append((t, v))
    seen = sorted(counts)
    chosen = wanted or default_parameters(seen)
    unknown = [p for p in chosen if p not in counts]
    if unknown:
        raise BadRequest(f"drive {drive_id} has no parameter {unknown[0]!r}")
    if len(chosen) > MAX_CHARTS:
        raise BadRequest(f"pick at most {MAX_CHARTS} parameters")
    charts = []
    for name in chosen:
        points = sorted(series.get(name, []))
        drawn = min_max(points, CHART_BUCKETS)
        charts.append(line_chart(name, units.get(name), drawn, len(points)))
    return seen, chosen, "".join(charts), {"rows": total, "start": t0, "end": t1}


def _picker(device: str, drive_id: int, seen: list[str], chosen: list[str]) -> str:
    boxes = "".join(
        f'<label><input type="checkbox" name="p" value="{esc(p)}"'
        f"{' checked' if p in chosen else ''}> {esc(p)}</label> "
        for p in seen
    )
    return (
        f'<form method="get" id="picker" action="/devices/{quote(device)}/drives/{drive_id}">'
        f'<fieldset><legend>Parameters</legend>{boxes}<button type="submit">Show</button>'
        "</fieldset></form>"
    )


def analysis_html(job: dict[str, Any] | None, action: str, csrf: str) -> str:
    label = "Re-analyse" if job else "Analyse"
    button = (
        f'<form method="post" action="{esc(action)}" id="analyse">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<button type="submit">{label}</button></form>'
    )
    if job is None:
        return f'<section id="analysis"><p>Not analysed yet.</p>{button}</section>'
    head = (
        f"<p>Analysis {job['id']}: {status(job['status'])} · model {esc(job['model'])} · "
        f"requested {esc(job['createdAt'])}</p>"
    )
    if job.get("error"):
        head += f'<p class="failed">{esc(job["error"])}</p>'
    result = job.get("result")
    if not result:
        return f'<section id="analysis">{head}{button}</section>'
    recs = "".join(
        f"<tr><td>{r['rank']}</td><td>{esc(r['category'])}</td>"
        f"<td>{esc(r['recommendation'])}</td><td>{round(float(r['confidence']) * 100)} %</td>"
        f"<td><ul>{''.join(f'<li>{esc(e)}</li>' for e in r['evidence'])}</ul></td></tr>"
        for r in result.get("recommendations", [])
    )
    anomalies = "".join(
        f"<tr><td>{esc(a['parameter'])}</td><td>{status(a['severity'])}</td>"
        f"<td>{esc(a['description'])}</td><td>{esc(a.get('when', ''))}</td></tr>"
        for a in result.get("anomalies", [])
    )
    return (
        f'<section id="analysis">{head}<h3>Summary</h3>'
        f'<p id="summary">{esc(result.get("summary"))}</p>'
        '<h3>Recommendations</h3><table id="recommendations"><tr><th>#</th><th>Area</th>'
        "<th>Recommendation</th><th>Confidence</th><th>Evidence</th></tr>"
        f"{recs or '<tr><td colspan=5>none</td></tr>'}</table>"
        '<h3>Anomalies</h3><table id="anomalies"><tr><th>Parameter</th><th>Severity</th>'
        "<th>What</th><th>When</th></tr>"
        f"{anomalies or '<tr><td colspan=4>none</td></tr>'}</table>{button}</section>"
    )


def drive(
    ctx: Companion, device: str, drive_id: int, wanted: list[str], csrf: str, flash: str = ""
) -> str:
    conn = ctx.core.db.conn()
    if not drive_exists(conn, device, drive_id):
        raise Missing(f"{device} has no drive {drive_id}")
    seen, chosen, charts, facts = drive_charts(conn, device, drive_id, wanted)
    jobs = ctx.analysis.store.list(device, drive_id, None, 1)
    job = jobs[0].as_json(ctx.config.data_dir) if jobs else None
    t0, t1 = facts["start"], facts["end"]
    span = duration(t1 - t0) if t0 is not None and t1 is not None else "-"
    action = f"/devices/{quote(device)}/drives/{drive_id}/analyze"
    back = f'<a href="/devices/{quote(device)}">{esc(device)}</a>'
    return (
        (f'<p class="flash">{esc(flash)}</p>' if flash else "")
        + f"<p>{back} · start {_when(t0)} · {span} · {facts['rows']} rows</p>"
        + _picker(device, drive_id, seen, chosen)
        + f'<section id="charts">{charts}</section><h2>Analysis</h2>'
        + analysis_html(job, action, csrf)
    )


def drive_query(params: list[str]) -> str:
    return urlencode([("p", p) for p in params])


# ------------------------------------------------------------------------------ backups


def backups(ctx: Companion, session: Session) -> str:
    device = session.device_id
    items = ctx.backups.list(device)
    replicated_at = _last_replication(ctx)
    rows = []
    for b in items:
        on_nas = "yes" if replicated_at and b.received_at <= replicated_at else "not yet"
        rows.append(
            f"<tr><td>{esc(b.device_id)}</td><td>{esc(b.type)}</td><td>{esc(b.received_at)}</td>"
            f"<td>{size(b.size)}</td><td><code>{esc(b.sha256)}</code></td><td>{on_nas}</td>"
            f'<td><a href="/backups/{b.id}/file">{esc(b.name)}</a></td></tr>'
        )
    jobs = ctx.analysis.store.list(device, None, None, 50)
    job_rows = "".join(
        f"<tr><td>{j.id}</td><td>{esc(j.device_id)}</td><td>"
        + (
            f'<a href="/devices/{quote(j.device_id)}/drives/{j.drive_id}">{j.drive_id}</a>'
            if j.drive_id is not None
            else "inline"
        )
        + f"</td><td>{status(j.status)}</td><td>{esc(j.created_at)}</td>"
        f"<td>{esc(j.finished_at or '-')}</td></tr>"
        for j in jobs
    )
    return (
        f"<p>{len(items)} backups. On the NAS: received before the last successful "
        f"replication ({esc(replicated_at or 'none yet')}).</p>"
        '<table id="backups"><tr><th>Device</th><th>Type</th><th>Received</th><th>Size</th>'
        "<th>sha256</th><th>On NAS</th><th>Download</th></tr>" + "".join(rows) + "</table>"
        '<h2>Analyses</h2><table id="analyses"><tr><th>#</th><th>Device</th><th>Drive</th>'
        "<th>Status</th><th>Requested</th><th>Finished</th></tr>" + job_rows + "</table>"
    )


def _last_replication(ctx: Companion) -> str | None:
    """When the last successful NAS run started: backups received before it are on the NAS."""
    rep = ctx.health_checks()["replication"]()
    if rep.get("status") == "not_configured":
        return None
    started, success = rep.get("started_at"), rep.get("last_success_at")
    if isinstance(success, str) and isinstance(started, str) and rep.get("exit_code") == 0:
        return min(started, success)
    return success if isinstance(success, str) else None
