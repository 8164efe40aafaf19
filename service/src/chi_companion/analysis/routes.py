"""The analysis feature: ``POST /api/v1/analyze``, ``GET /api/v1/analyses[/{id}]``
(the ``ollama`` component of /health is in analysis.service).

Requests never wait for the model: they record a job and answer 202 at once
(see analysis.worker for the why). A device key sees only its own device's
analyses; the operator key sees all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any

from ..core.context import Core
from ..core.db import transaction
from ..core.errors import Invalid, NotFound, UnknownDevice
from ..core.http_json import (
    ApiError,
    NonFiniteCounter,
    declared_length,
    is_finite_number,
    json_response,
    read_json,
)
from ..core.ids import DEVICE_ID_RULE, as_int64, is_device_id
from ..core.params import query_choice, query_device_id, query_int, query_number
from ..sync.queries import drive_exists
from .digest import InlinePoint, build_inline_digest
from .jobs import PENDING, STATUSES, TERMINAL, Analysis
from .service import AnalysisService

if TYPE_CHECKING:
    from bottle import Bottle

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


# --------------------------------------------------------------------------- validation


def _bad(detail: str) -> Invalid:
    return Invalid("invalid analysis request", detail)


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


def _check_room(ctx: Core, svc: AnalysisService, conn: Any, device_id: str) -> int:
    """429 when the queue is full, or when this device holds its share of it; else the depth."""
    depth = svc.store.depth(conn)
    if depth >= svc.queue.max_queue:
        raise ApiError(
            429,
            "queue full",
            f"{depth} analyses are queued or running (analysis.max_queue); retry later",
            headers={"Retry-After": _retry_after(svc)},
        )
    share = max(1, int(svc.queue.max_queue * ctx.config.analysis.device_queue_share))
    mine = svc.store.device_depth(conn, device_id)
    if mine >= share:
        raise ApiError(
            429,
            "queue full",
            f"device {device_id!r} has {mine} analyses queued or running, its share of the "
            f"queue (analysis.device_queue_share); retry later",
            headers={"Retry-After": _retry_after(svc)},
        )
    return depth


def submit(ctx: Core, svc: AnalysisService, principal_device: str | None, body: Any) -> Any:
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    # Required, as in /sync and /backup: the body says which device's data it is about, and
    # the operator key (which has no device) can never be guessed wrong.
    device_id = body.get("deviceId")
    if not is_device_id(device_id):
        raise _bad(f"deviceId is required: a string of {DEVICE_ID_RULE}")
    if device_id not in ctx.config.devices:
        raise UnknownDevice(device_id)
    if principal_device is not None and principal_device != device_id:
        raise ApiError(
            403,
            "forbidden",
            f"this API key belongs to device {principal_device!r}, not {device_id!r}",
        )
    # Before any parsing of rows or digest: a full queue costs the caller nothing of ours.
    _check_room(ctx, svc, svc.store.conn(), device_id)
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
    # A database error reaches core.http_errors: 503, or 507 when the disk is full.
    if drive_id is not None and not drive_exists(conn, device_id, drive_id):
        raise NotFound(
            f"device {device_id!r} has synced no realtime_data rows for drive {drive_id}",
            "unknown drive",
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
        depth = _check_room(ctx, svc, conn, device_id)
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


def routes(app: Bottle, ctx: Core, svc: AnalysisService) -> None:
    data_dir = ctx.config.data_dir
    body_limit = ctx.config.server.max_body_bytes
    inline_limit = ctx.config.analysis.max_inline_body_bytes

    @app.post(f"{API}/analyze")
    def analyze() -> Any:
        principal = ctx.keys.authenticate()
        body = read_json(body_limit, NonFiniteCounter())
        size = declared_length() or 0
        if isinstance(body, dict) and "rows" in body and size > inline_limit:
            # The inline digest is built inside the request: its own, smaller limit.
            raise ApiError(
                413,
                "payload too large",
                f"a body with inline rows may have at most {inline_limit} bytes "
                "(analysis.max_inline_body_bytes); sync the rows and analyse the drive",
            )
        return submit(ctx, svc, principal.device_id, body)

    @app.get(f"{API}/analyses/<analysis_id:id>")
    def get_analysis(analysis_id: int) -> Any:
        principal = ctx.keys.authenticate()
        seconds = _wait_seconds()
        job = svc.store.get(analysis_id)
        # Another device's analysis answers 404 like a missing one: ids are
        # sequential and must not reveal what other devices have.
        if job is None or not principal.may_access(job.device_id):
            raise NotFound(f"no analysis {analysis_id}")
        job = wait_for(svc, analysis_id, seconds) or job
        return json_response(200, job.as_json(data_dir))

    @app.get(f"{API}/analyses")
    def list_analyses() -> Any:
        principal = ctx.keys.authenticate()
        device_id = query_device_id() or principal.device_id
        if device_id is not None:
            principal.require_visible(device_id)
            if device_id not in ctx.config.devices:
                raise UnknownDevice(device_id)
        drive_id = query_int("driveId")
        status = query_choice("status", STATUSES)
        limit = query_int("limit", 1, MAX_LIST) or DEFAULT_LIST
        jobs = svc.store.list(device_id, drive_id, status, limit)
        return json_response(
            200, {"analyses": [j.as_json(data_dir, full=False) for j in jobs], "limit": limit}
        )
