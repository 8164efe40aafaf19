"""The one place where errors become HTTP answers.

Stores raise domain errors (``core.errors``) and let ``sqlite3.Error`` through; this module
turns both into ``{"error": ..., "detail": ...}`` with one status per kind, for every route of
every feature: 422 invalid, 400 malformed, 404 not found, 409 conflict, 413 too large, 507 disk
full or a device over its quota (with Retry-After: either clears when the operator frees room,
and the Pi must keep its rows until then), 503 for a database or other transient fault
(Retry-After, so the Pi's retry is what happens).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from functools import wraps
from typing import Any

from .errors import (
    Conflict,
    DiskFull,
    DomainError,
    Invalid,
    Malformed,
    NotFound,
    QuotaExceeded,
    RateLimited,
    TooLarge,
    Unavailable,
)
from .http_json import ApiError

log = logging.getLogger(__name__)
DISK_FULL_RETRY_AFTER = "300"
STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (Invalid, 422),
    (Malformed, 400),
    (NotFound, 404),
    (Conflict, 409),
    (TooLarge, 413),
    (DiskFull, 507),
    (QuotaExceeded, 507),
    (Unavailable, 503),
    (RateLimited, 429),
)


def status_of(exc: DomainError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def to_api_error(exc: DomainError | sqlite3.Error) -> ApiError:
    if isinstance(exc, sqlite3.Error):
        return transient_db_error(exc)
    headers: dict[str, str] | None = None
    extra: dict[str, object] | None = None
    if isinstance(exc, DiskFull | QuotaExceeded):
        headers = {"Retry-After": DISK_FULL_RETRY_AFTER}
    elif isinstance(exc, Unavailable | RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, QuotaExceeded):
        extra = {"quota": exc.as_json()}
    return ApiError(status_of(exc), exc.error, exc.detail, headers=headers, extra=extra)


def transient_db_error(exc: sqlite3.Error) -> ApiError:
    """A database fault is not the client's fault: 503 tells the Pi to retry later."""
    text = str(exc)
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in text:
        log.error("database write failed: disk full")
        return to_api_error(DiskFull())
    log.error("database error: %s", text)
    return to_api_error(Unavailable("database temporarily unavailable; retry later"))


def map_domain_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Bottle plugin: every route's domain and database errors answered the same way."""

    @wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (DomainError, sqlite3.Error) as exc:
            raise to_api_error(exc) from None

    return wrapper
