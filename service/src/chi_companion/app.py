"""The Bottle application: core routes and JSON-only error handling."""

from __future__ import annotations

import logging
import re
import sqlite3
from importlib import resources
from typing import Any

from bottle import Bottle, HTTPError, HTTPResponse, request, response

from . import __version__
from .clock import now_iso
from .context import Companion
from .features import feature_routes
from .health import health_report
from .http_json import ApiError, NonFiniteCounter, json_response, read_json
from .params import install_id_filter, query_device_id
from .sync_store import validate

log = logging.getLogger(__name__)
API = "/api/v1"
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _error_handler(res: HTTPError) -> str:
    """Every error Bottle raises itself (404, 405, 500...) answers JSON, never HTML."""
    import json

    if res.status_code >= 500:
        log.error(
            "unhandled error on %s %s: %s\n%s",
            request.method,
            request.path,
            res.exception,
            res.traceback or "",
        )
        detail: Any = "the server hit an unexpected error; see the companion's log"
    else:
        detail = res.body if isinstance(res.body, str) else None
    response.content_type = "application/json"
    names = {404: "not found", 405: "method not allowed", 413: "payload too large"}
    error = names.get(res.status_code, res.status_line.split(" ", 1)[-1].lower())
    return json.dumps({"error": error, "detail": detail})


def transient_db_error(exc: sqlite3.Error) -> ApiError:
    """A database fault is not the client's fault: 503 tells the Pi to retry later."""
    text = str(exc)
    if "full" in text:
        log.error("database write failed: disk full")
        return ApiError(507, "insufficient storage", "the server's disk is full; retry later")
    log.error("database error: %s", text)
    return ApiError(
        503,
        "service unavailable",
        "database temporarily unavailable; retry later",
        headers={"Retry-After": "5"},
    )


def _check_path() -> None:
    """Refuse a path that no route can mean, before routing.

    Bottle decodes the path as UTF-8 ignoring bad bytes, so ``obd%FF.db`` would arrive as
    ``obd.db``: a name quietly changed. And its route patterns end in ``$``, which also matches
    before a trailing newline, so ``/backups/5%0A`` would be backup 5. No path of this API has
    a control character, so a path with one is refused whole."""
    try:
        path = request.environ["bottle.raw_path"].encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ApiError(400, "bad request", "the path is not valid UTF-8") from None
    if CONTROL_RE.search(path):
        raise ApiError(400, "bad request", "the path must not contain control characters")


def create_app(ctx: Companion) -> Bottle:
    app = Bottle(catchall=True)
    app.default_error_handler = _error_handler  # type: ignore[method-assign]
    app.add_hook("before_request", _check_path)
    install_id_filter(app)
    cfg = ctx.config
    body_limit = cfg.server["max_body_bytes"]

    @app.get(f"{API}/health")
    def health() -> Any:
        report = health_report(ctx)
        return json_response(503 if report["status"] == "unhealthy" else 200, report)

    @app.get(f"{API}/openapi.yaml")
    def openapi() -> Any:
        spec = resources.files("chi_companion").joinpath("openapi.yaml").read_bytes()
        return HTTPResponse(body=spec, status=200, headers={"Content-Type": "application/yaml"})

    @app.get(f"{API}/ping")
    def ping() -> Any:
        principal = ctx.keys.authenticate()
        return json_response(
            200,
            {
                "status": "ok",
                "deviceId": principal.device_id,
                "serverTime": now_iso(),
                "version": __version__,
            },
        )

    @app.post(f"{API}/sync")
    def sync() -> Any:
        principal = ctx.keys.authenticate()
        counter = NonFiniteCounter()
        batch_id = None
        try:
            body = read_json(body_limit, counter)
            if isinstance(body, dict) and isinstance(body.get("batchId"), str):
                batch_id = body["batchId"][:200]
            req = validate(body, counter.count)
            if principal.is_operator:
                raise ApiError(403, "forbidden", "rows are synced with the device's own key")
            principal.require_device(req.device_id)
        except ApiError as exc:
            ctx.sync.record_rejection(
                principal.device_id, batch_id, exc.status_code, exc.error, exc.detail
            )
            log.warning(
                "sync from %s rejected (%d %s): %s",
                principal.device_id or "operator",
                exc.status_code,
                exc.error,
                exc.detail,
            )
            raise
        try:
            result = ctx.sync.store(ctx.db.conn(), req)
        except sqlite3.Error as exc:
            raise transient_db_error(exc) from None
        return json_response(200, result.as_json())

    @app.get(f"{API}/sync/status")
    def sync_status() -> Any:
        principal = ctx.keys.authenticate()
        device_id = query_device_id() or principal.device_id
        if device_id is None:
            return json_response(
                200,
                {"devices": [ctx.sync.status(ctx.db.conn(), dev) for dev in sorted(cfg.devices)]},
            )
        if device_id not in cfg.devices:
            raise ApiError(404, "unknown device", f"no device {device_id[:64]!r} is configured")
        principal.require_device(device_id)
        return json_response(200, ctx.sync.status(ctx.db.conn(), device_id))

    @app.get(f"{API}/release/current")
    def release_current() -> Any:
        ctx.keys.authenticate()
        record, reason = ctx.release.current()
        if record is None:
            raise ApiError(503, "no release published", reason, headers={"Retry-After": "86400"})
        return json_response(200, record)

    feature_routes(app, ctx)
    return app
