"""The Bottle application: JSON-only error handling, the core routes (health, ping, release,
the OpenAPI document) and every feature's routes, mounted in one place."""

from __future__ import annotations

import json
import logging
import re
from importlib import resources
from typing import Any

from bottle import Bottle, HTTPError, HTTPResponse, request, response

from . import __version__
from .analysis import routes as analysis_routes
from .backups import routes as backup_routes
from .companion import Companion
from .core.clock import now_iso
from .core.health import visible_to
from .core.http_errors import map_domain_errors
from .core.http_json import API, ApiError, header, json_response
from .core.params import install_id_filter
from .metrics import routes as metrics_routes
from .page import routes as page_routes
from .sync import routes as sync_routes

log = logging.getLogger(__name__)
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _error_handler(res: HTTPError) -> str:
    """Every error Bottle raises itself (404, 405, 500...) answers JSON, never HTML."""
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
    # Domain and database errors of every route become HTTP answers in core.http_errors.
    app.install(map_domain_errors)

    @app.get(f"{API}/health")
    def health() -> Any:
        principal = None
        if header("X-API-Key") is not None:
            principal = ctx.core.keys.authenticate()  # a wrong key is 401, not a silent less
        report = ctx.health()
        code = 503 if report["status"] == "unhealthy" else 200
        return json_response(code, visible_to(report, principal))

    @app.get(f"{API}/openapi.yaml")
    def openapi() -> Any:
        spec = resources.files("chi_companion").joinpath("openapi.yaml").read_bytes()
        return HTTPResponse(body=spec, status=200, headers={"Content-Type": "application/yaml"})

    @app.get(f"{API}/ping")
    def ping() -> Any:
        principal = ctx.core.keys.authenticate()
        return json_response(
            200,
            {
                "status": "ok",
                "deviceId": principal.device_id,
                "serverTime": now_iso(),
                "version": __version__,
            },
        )

    @app.get(f"{API}/release/current")
    def release_current() -> Any:
        ctx.core.keys.authenticate()
        record, reason = ctx.release.current()
        if record is None:
            raise ApiError(503, "no release published", reason, headers={"Retry-After": "86400"})
        return json_response(200, record)

    sync_routes.routes(app, ctx.core, ctx.sync)
    backup_routes.routes(app, ctx.core, ctx.backups)
    analysis_routes.routes(app, ctx.core, ctx.analysis)
    # The owner's window: the status page (HTML, session sign-in) and Prometheus's /metrics.
    page_routes.routes(app, ctx)
    metrics_routes.routes(app, ctx)
    return app
