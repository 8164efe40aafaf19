"""The sync routes: ``POST /api/v1/sync`` (the Pi's rows) and ``GET /api/v1/sync/status``.

A refused body is recorded (in memory) for /sync/status, so the operator can see why a
table's sync stalls without the server keeping rejected data.
"""

from __future__ import annotations

import logging
from typing import Any

from bottle import Bottle

from ..core.context import Core
from ..core.errors import DomainError, UnknownDevice
from ..core.http_errors import to_api_error
from ..core.http_json import API, ApiError, NonFiniteCounter, json_response, read_json
from ..core.params import query_device_id
from .request import validate
from .store import SyncStore

log = logging.getLogger(__name__)


def routes(app: Bottle, ctx: Core, store: SyncStore) -> None:
    cfg = ctx.config
    body_limit = cfg.server.max_body_bytes

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
            # Grouped with other requests' writes: one commit (one fsync) for all of them.
            result = ctx.db.writes.run(lambda conn: store.write(conn, req))
        except (ApiError, DomainError) as exc:
            refusal = to_api_error(exc) if isinstance(exc, DomainError) else exc
            store.record_rejection(
                principal.device_id, batch_id, refusal.status_code, refusal.error, refusal.detail
            )
            log.warning(
                "sync from %s rejected (%d %s): %s",
                principal.device_id or "operator",
                refusal.status_code,
                refusal.error,
                refusal.detail,
            )
            raise refusal from None
        return json_response(200, result.as_json())

    @app.get(f"{API}/sync/status")
    def sync_status() -> Any:
        principal = ctx.keys.authenticate()
        device_id = query_device_id() or principal.device_id
        if device_id is None:
            return json_response(
                200,
                {"devices": [store.status(ctx.db.conn(), dev) for dev in sorted(cfg.devices)]},
            )
        principal.require_visible(device_id)
        if device_id not in cfg.devices:
            raise UnknownDevice(device_id)
        return json_response(200, store.status(ctx.db.conn(), device_id))
