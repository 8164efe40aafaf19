"""The analysis feature: ``POST /api/v1/analyze``, ``GET /api/v1/analyses[/{id}]``
and the ``ollama`` component of /health.

Requests never wait for the model: they record a job and answer 202 at once
(see analysis_queue for the why). A device key sees only its own device's
analyses; the operator key sees all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .analysis_queue import (
    PENDING,
    SCHEMA,
    STATUSES,
    TERMINAL,
    WAITING_MODEL,
    WAITING_OLLAMA,
    Analysis,
    AnalysisQueue,
    AnalysisStore,
    OllamaMonitor,
)
from .db import transaction
from .drive_digest import InlinePoint, build_inline_digest, drive_exists
from .http_json import ApiError, NonFiniteCounter, is_finite_number, json_response, read_json
from .ids import DEVICE_ID_RULE, as_int64, is_device_id
from .ollama_client import OllamaClient
from .params import query_choice, query_device_id, query_int, query_number

if TYPE_CHECKING:
    from bottle import Bottle

    from .context import Companion

log = logging.getLogger(__name__)
API = "/api/v1"
WAIT_CAP_SECONDS = 30.0
WAIT_POLL_SECONDS = 1.0  # re-read the row even without a wake-up (the CLI may change it)
MAX_FOCUS = 8
FOCUS_RE = re.compile(r"[A-Za-z][A-Za-z0-9 _-]{0,39}")
MAX_LIST = 500
DEFAULT_LIST = 100
MAX_INLINE_ROWS = 200_000
MAX_TEXT = 64
DEFAULT_RETRY_AFTER = 60
# A parameter name must have something besides blanks. The blanks are spelled out rather than
# written \s, whose meaning differs between Python and the spec's ECMA-262 patterns.
NAME_RE = re.compile(r"[^ \t\n\r\f\v]")


@dataclass
class AnalysisService:
    store: AnalysisStore
    queue: AnalysisQueue
    monitor: OllamaMonitor
    client: OllamaClient
    # Long-poll waiters hold a server thread each; past this many, ?wait answers at once.
    max_waiters: int
    waiters: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def service(ctx: Companion) -> AnalysisService:
    # Stored on the context instance: the core's Companion has no field for each feature.
    return vars(ctx)["analysis_service"]  # type: ignore[no-any-return]


def _cleanup_temp_results(data_dir: Path) -> None:
    """Drop half-written result files left by a crash (their jobs run again)."""
    for tmp in (data_dir / "ai_results").glob("*/.*.tmp"):
        tmp.unlink(missing_ok=True)


def install(ctx: Companion) -> None:
    cfg = ctx.config
    client = OllamaClient(
        cfg.ollama["url"],
        cfg.ollama["timeout_seconds"],
        cfg.ollama["keep_alive"],
        cfg.ollama["num_ctx"],
    )
    monitor = OllamaMonitor(client, cfg.ollama["model"], float(cfg.ollama["poll_seconds"]))
    queue = AnalysisQueue(ctx, client, monitor)
    svc = AnalysisService(
        store=queue.store,
        queue=queue,
        monitor=monitor,
        client=client,
        max_waiters=max(1, cfg.server["threads"] // 2),
    )
    vars(ctx)["analysis_service"] = svc
    ctx.schemas.extend(SCHEMA)
    ctx.background.extend([monitor, queue])
    ctx.startup_tasks.append(lambda: _cleanup_temp_results(cfg.data_dir))
    ctx.health_checks["ollama"] = lambda: ollama_health(ctx)


def ollama_health(ctx: Companion) -> dict[str, Any]:
    """From the monitor's last probe and the queue table; never a network call."""
    svc = service(ctx)
    snap = svc.monitor.snapshot()
    report: dict[str, Any] = {
        "reachable": snap.reachable,
        "version": snap.version,
        "model": svc.queue.model,
        "modelPresent": snap.model_present,
        "checkedAt": snap.checked_at,
    }
    try:
        counts = svc.store.counts()
        report["queueDepth"] = sum(counts.values())
        report["queue"] = counts
        report["lastAnalysisAt"] = svc.store.last_finished_at()
    except sqlite3.Error:
        report["queueDepth"] = None
        report["lastAnalysisAt"] = None
        counts = {}
    if snap.checked_at is None and snap.reachable is None:
        report.update(status="degraded", detail="Ollama not checked yet")
    elif not snap.reachable:
        report.update(status="degraded", detail="Ollama is unreachable; analyses wait")
    elif snap.model_present is None:
        report.update(
            status="degraded", detail="Ollama answers but its model list could not be read"
        )
    elif not snap.model_present:
        report.update(
            status="degraded",
            detail=f"model {svc.queue.model} is not pulled; analyses wait for it",
        )
    elif counts.get(WAITING_OLLAMA) or counts.get(WAITING_MODEL):
        report.update(status="degraded", detail="some analyses are waiting for Ollama")
    else:
        report["status"] = "ok"
    return report


# --------------------------------------------------------------------------- validation


def _bad(detail: str) -> ApiError:
    return ApiError(422, "invalid analysis request", detail)


def _focus(body: dict[str, Any]) -> list[str]:
    focus = body.get("focus", [])
    if not isinstance(focus, list) or len(focus) > MAX_FOCUS:
        raise _bad(f"focus must be a list of at most {MAX_FOCUS} areas")
    for item in focus:
        if not isinstance(item, str) or not FOCUS_RE.fullmatch(item):
            raise _bad(
                "each focus area must be 1-40 characters of letters, digits, space, _ or -, "
                'starting with a letter (e.g. "cooling", "fuel trims")'
            )
    # Order kept, duplicates dropped: the text goes into the prompt as given.
    return list(dict.fromkeys(focus))


def _is_double(value: Any) -> bool:
    """A finite number a double can hold (the digest stores values as SQLite REAL): JSON
    also allows integers like 1 followed by 400 zeros, which no double can."""
    if not is_finite_number(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _optional_text(row: dict[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{where}.{key} must be a string or null")
    return value[:MAX_TEXT]


def _inline_points(rows: Any) -> list[InlinePoint]:
    if not isinstance(rows, list) or not rows:
        raise _bad("rows must be a non-empty array of realtime_data rows")
    if len(rows) > MAX_INLINE_ROWS:
        raise _bad(f"at most {MAX_INLINE_ROWS} rows per request; sync the drive instead")
    points: list[InlinePoint] = []
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise _bad(f"{where} must be an object")
        name = row.get("parameter_name")
        if not isinstance(name, str) or not NAME_RE.search(name):
            raise _bad(f"{where}.parameter_name must be a string that is not blank")
        value = row.get("value")
        if value is not None and not _is_double(value):
            raise _bad(f"{where}.value must be a number within +-1.8e308, or null")
        points.append(
            (
                name[:MAX_TEXT],
                value,
                _optional_text(row, "timestamp", where),
                _optional_text(row, "unit", where),
            )
        )
    return points


def _retry_after(svc: AnalysisService) -> str:
    """Seconds until the queue likely has room: the recent average run time per
    worker, within sane bounds; a minute when there is no history yet."""
    conn = svc.store.conn()
    rows = conn.execute(
        """SELECT durations_json FROM analyses WHERE status = 'done'
           ORDER BY id DESC LIMIT 20"""
    ).fetchall()
    totals = []
    for (text,) in rows:
        try:
            totals.append(float(json.loads(text)["totalMs"]) / 1000)
        except (TypeError, ValueError, KeyError):
            continue
    if not totals:
        return str(DEFAULT_RETRY_AFTER)
    estimate = sum(totals) / len(totals) / max(1, svc.queue.workers)
    return str(int(min(3600, max(5, estimate))))


# --------------------------------------------------------------------------- routes


def _accepted(job: Analysis, depth: int) -> Any:
    location = f"{API}/analyses/{job.id}"
    body = {
        "id": job.id,
        "status": job.status,
        "deviceId": job.device_id,
        "driveId": job.drive_id,
        "source": job.source,
        "focus": job.focus,
        "createdAt": job.created_at,
        "queueDepth": depth,
        "location": location,
    }
    return json_response(202, body, headers={"Location": location})


def submit(ctx: Companion, principal_device: str | None, body: Any) -> Any:
    svc = service(ctx)
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    # Required, as in /sync and /backup: the body says which device's data it is about, and
    # the operator key (which has no device) can never be guessed wrong.
    device_id = body.get("deviceId")
    if not is_device_id(device_id):
        raise _bad(f"deviceId is required: a string of {DEVICE_ID_RULE}")
    if device_id not in ctx.config.devices:
        raise ApiError(404, "unknown device", f"no device {device_id[:64]!r} is configured")
    if principal_device is not None and principal_device != device_id:
        raise ApiError(
            403,
            "forbidden",
            f"this API key belongs to device {principal_device!r}, not {device_id!r}",
        )
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise _bad("force must be true or false")
    focus = _focus(body)
    has_drive, has_rows = "driveId" in body, "rows" in body
    if has_drive == has_rows:
        raise _bad('give either "driveId" (a synced drive) or "rows" (inline data), not both')
    digest: dict[str, Any] | None = None
    drive_id: int | None = None
    if has_drive:
        drive_id = as_int64(body["driveId"])
        if drive_id is None:
            raise _bad("driveId must be a 64-bit integer")
        source, source_key = "drive", f"drive:{drive_id}"
    else:
        points = _inline_points(body["rows"])
        canonical = json.dumps([list(p) for p in points], separators=(",", ":"))
        source = "inline"
        source_key = "inline:" + hashlib.sha256(canonical.encode()).hexdigest()
    conn = svc.store.conn()
    try:
        if drive_id is not None and not drive_exists(conn, device_id, drive_id):
            raise ApiError(
                404,
                "unknown drive",
                f"device {device_id!r} has synced no realtime_data rows for drive {drive_id}",
            )
        if has_rows:
            # Built now, while the rows are in hand: inline rows are never stored,
            # only their bounded digest is.
            digest = build_inline_digest(device_id, points)
        with transaction(conn):
            existing = svc.store.latest_for(conn, device_id, source_key)
            # Forcing while an earlier job has not started yet would only queue the
            # same work twice: that job will read the newest rows anyway.
            if existing is not None and (not force or existing.status in PENDING):
                return json_response(
                    200,
                    {**existing.as_json(ctx.config.data_dir), "existing": True},
                    headers={"Location": f"{API}/analyses/{existing.id}"},
                )
            depth = svc.store.depth(conn)
            if depth >= svc.queue.max_queue:
                raise ApiError(
                    429,
                    "queue full",
                    f"{depth} analyses are queued or running (analysis.max_queue); retry later",
                    headers={"Retry-After": _retry_after(svc)},
                )
            job = svc.store.insert(
                conn,
                device_id=device_id,
                drive_id=drive_id,
                source=source,
                source_key=source_key,
                trigger="api",
                focus=focus,
                model=svc.queue.model,
                digest=digest,
            )
    except sqlite3.Error as exc:
        log.error("analysis request failed on the database: %s", exc)
        raise ApiError(
            503, "service unavailable", "database busy; retry later", headers={"Retry-After": "5"}
        ) from None
    log.info(
        "analysis %d queued for %s %s (%s)",
        job.id,
        device_id,
        f"drive {drive_id}" if drive_id is not None else "inline rows",
        "forced" if force and existing is not None else "new",
    )
    svc.queue.notify()
    return _accepted(job, depth + 1)


def _wait_seconds() -> float:
    return min(query_number("wait") or 0.0, WAIT_CAP_SECONDS)


def wait_for(svc: AnalysisService, analysis_id: int, seconds: float) -> Analysis | None:
    """Block until the job is done or failed, or the time is up. Wake-ups come
    from the worker in this process; the periodic re-read covers the CLI."""
    job = svc.store.get(analysis_id)
    if job is None or seconds <= 0 or job.status in TERMINAL:
        return job
    with svc.lock:
        if svc.waiters >= svc.max_waiters:
            return job
        svc.waiters += 1
    try:
        deadline = time.monotonic() + seconds
        while job is not None and job.status not in TERMINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with svc.queue.changed:
                svc.queue.changed.wait(min(remaining, WAIT_POLL_SECONDS))
            job = svc.store.get(analysis_id)
        return job
    finally:
        with svc.lock:
            svc.waiters -= 1


def routes(app: Bottle, ctx: Companion) -> None:
    data_dir = ctx.config.data_dir
    body_limit = ctx.config.server["max_body_bytes"]

    @app.post(f"{API}/analyze")
    def analyze() -> Any:
        principal = ctx.keys.authenticate()
        body = read_json(body_limit, NonFiniteCounter())
        return submit(ctx, principal.device_id, body)

    @app.get(f"{API}/analyses/<analysis_id:id>")
    def get_analysis(analysis_id: int) -> Any:
        principal = ctx.keys.authenticate()
        seconds = _wait_seconds()
        svc = service(ctx)
        job = svc.store.get(analysis_id)
        # Another device's analysis answers 404 like a missing one: ids are
        # sequential and must not reveal what other devices have.
        if job is None or not principal.may_access(job.device_id):
            raise ApiError(404, "not found", f"no analysis {analysis_id}")
        job = wait_for(svc, analysis_id, seconds) or job
        return json_response(200, job.as_json(data_dir))

    @app.get(f"{API}/analyses")
    def list_analyses() -> Any:
        principal = ctx.keys.authenticate()
        device_id = query_device_id() or principal.device_id
        if device_id is not None:
            if device_id not in ctx.config.devices:
                raise ApiError(404, "unknown device", f"no device {device_id!r} is configured")
            principal.require_device(device_id)
        drive_id = query_int("driveId")
        status = query_choice("status", STATUSES)
        limit = query_int("limit", 1, MAX_LIST) or DEFAULT_LIST
        jobs = service(ctx).store.list(device_id, drive_id, status, limit)
        return json_response(
            200, {"analyses": [j.as_json(data_dir, full=False) for j in jobs], "limit": limit}
        )
