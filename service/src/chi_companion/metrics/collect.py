"""What ``/metrics`` reports, read from the companion's parts at scrape time."""

from __future__ import annotations

import json
import time
from collections import defaultdict

from .. import __version__
from ..analysis.jobs import DONE
from ..companion import Companion
from ..core.clock import parse_iso_z
from ..sync.queries import last_sync_per_device, table_row_counts
from .exposition import Family, Histogram, histogram_of

SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ANALYSIS_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def _unix(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return parse_iso_z(iso).timestamp()
    except ValueError:
        return None


def collect(ctx: Companion, sync_latency: Histogram) -> list[Family]:
    now = time.time()
    conn = ctx.core.db.conn()
    fams: list[Family] = [
        Family("chi_companion_info", "gauge", "The companion's version.").add(
            1, version=__version__
        )
    ]

    rows = Family("chi_sync_rows", "gauge", "Rows stored per device and table.")
    for device, table, count in table_row_counts(conn):
        rows.add(count, device=device, table=table)
    last = Family(
        "chi_sync_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the device's last accepted sync.",
    )
    for device, at in sorted(last_sync_per_device(conn).items()):
        if (t := _unix(at)) is not None:
            last.add(t, device=device)
    counts, total = sync_latency.snapshot()
    latency = Family(
        "chi_sync_request_duration_seconds",
        "histogram",
        "Time to answer POST /api/v1/sync, observed since this process started.",
    ).add_histogram(sync_latency.bounds, counts, total)
    fams += [rows, last, latency]

    n = Family("chi_backups", "gauge", "Backups kept per device and type.")
    size = Family("chi_backup_bytes", "gauge", "Bytes of backups kept per device and type.")
    newest = Family(
        "chi_backup_newest_age_seconds", "gauge", "Age of the newest backup per device and type."
    )
    groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for b in ctx.backups.list():
        g = groups[(b.device_id, b.type)]
        g[0] += 1
        g[1] += b.size
        g[2] = max(g[2], _unix(b.received_at) or 0.0)
    for (device, kind), (count, nbytes, newest_t) in sorted(groups.items()):
        n.add(count, device=device, type=kind)
        size.add(nbytes, device=device, type=kind)
        newest.add(max(0.0, now - newest_t), device=device, type=kind)
    fams += [n, size, newest]

    used = Family(
        "chi_quota_used_bytes",
        "gauge",
        "Bytes a device stores, by kind (synced: row documents; backups: files).",
    )
    limit = Family(
        "chi_quota_limit_bytes", "gauge", "The device's quota by kind (absent: no quota)."
    )
    quotas = ctx.health_checks()["quotas"]()["devices"]
    for device, q in sorted(quotas.items()):
        for kind, used_key, limit_key in (
            ("synced", "syncedBytes", "syncedQuotaBytes"),
            ("backups", "backupBytes", "backupQuotaBytes"),
        ):
            used.add(q[used_key], device=device, kind=kind)
            if q[limit_key] is not None:
                limit.add(q[limit_key], device=device, kind=kind)
    fams += [used, limit]

    rep = ctx.health_checks()["replication"]()
    configured = rep.get("status") != "not_configured"
    rep_age = Family(
        "chi_replication_last_success_age_seconds",
        "gauge",
        "Seconds since the last successful replication to the NAS (absent: none yet).",
    )
    if (t := _unix(rep.get("last_success_at"))) is not None:
        rep_age.add(max(0.0, now - t))
    rep_exit = Family(
        "chi_replication_last_exit_code", "gauge", "Exit code of the last replication run."
    )
    if configured and isinstance(rep.get("exit_code"), int):
        rep_exit.add(rep["exit_code"])
    rep_ok = Family(
        "chi_replication_ok", "gauge", "1 when replication is healthy (recent and succeeding)."
    ).add(1 if rep.get("status") == "ok" else 0)
    fams += [rep_age, rep_exit, rep_ok]

    store = ctx.analysis.store
    depth = Family("chi_analysis_queue_depth", "gauge", "Analyses queued or running, by status.")
    for status, count in sorted(store.counts().items()):
        depth.add(count, status=status)
    seconds = []
    for (text,) in conn.execute(
        "SELECT durations_json FROM analyses WHERE status = ? AND durations_json IS NOT NULL",
        (DONE,),
    ):
        try:
            seconds.append(float(json.loads(text)["totalMs"]) / 1000)
        except (TypeError, ValueError, KeyError):
            continue
    a_counts, a_sum = histogram_of(seconds, ANALYSIS_BUCKETS)
    durations = Family(
        "chi_analysis_duration_seconds", "histogram", "Run time of finished analyses."
    ).add_histogram(ANALYSIS_BUCKETS, a_counts, a_sum)
    fams += [depth, durations]

    oll = ctx.health_checks()["ollama"]()
    fams += [
        Family("chi_ollama_up", "gauge", "1 when Ollama answered the last probe.").add(
            1 if oll.get("reachable") else 0
        ),
        Family("chi_ollama_model_present", "gauge", "1 when the configured model is pulled.").add(
            1 if oll.get("modelPresent") else 0, model=str(oll.get("model"))
        ),
        Family(
            "chi_ollama_model_on_gpu",
            "gauge",
            "1 when the loaded model is wholly in GPU memory, 0 when on CPU, split or unloaded.",
        ).add(1 if oll.get("processor") == "gpu" else 0, model=str(oll.get("model"))),
    ]
    return fams
