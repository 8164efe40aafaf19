"""``GET /metrics`` and the timer around ``POST /api/v1/sync`` that feeds its latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bottle import HTTPResponse, request

from ..companion import Companion
from ..core.http_json import API, ApiError
from .collect import SYNC_BUCKETS, collect
from .exposition import Histogram, render

if TYPE_CHECKING:
    from bottle import Bottle, Route

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SyncTimer:
    """Bottle plugin: times the sync route only, whatever its answer (errors included)."""

    name = "chi_sync_timer"
    api = 2

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def apply(self, callback: Callable[..., Any], route: Route) -> Callable[..., Any]:
        if route.rule != f"{API}/sync" or route.method != "POST":
            return callback

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return callback(*args, **kwargs)
            finally:
                self.histogram.observe(time.perf_counter() - started)

        return timed


def routes(app: Bottle, ctx: Companion) -> None:
    latency = Histogram(SYNC_BUCKETS)
    app.install(SyncTimer(latency))

    allowed = ctx.config.metrics

    @app.get("/metrics")
    def metrics() -> Any:
        client = request.environ.get("REMOTE_ADDR", "")
        if not allowed.allows(client):
            raise ApiError(403, "forbidden", "this address may not read /metrics")
        body = render(collect(ctx, latency))
        return HTTPResponse(body=body, status=200, headers={"Content-Type": CONTENT_TYPE})
