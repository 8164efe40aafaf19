"""core.http_errors: one mapping from domain and database errors to HTTP, for every feature."""

from __future__ import annotations

import json
import sqlite3

import pytest
from chi_companion.core.errors import (
    Conflict,
    DiskFull,
    DomainError,
    Invalid,
    Malformed,
    NotFound,
    TooLarge,
    Unavailable,
    UnknownDevice,
)
from chi_companion.core.http_errors import map_domain_errors, to_api_error
from chi_companion.core.http_json import ApiError


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (Invalid("invalid sync body", "rows must be an array", "rows"), 422, "invalid sync body"),
        (Malformed("bad name", "the file name is empty"), 400, "bad name"),
        (NotFound("no backup with id 5"), 404, "not found"),
        (UnknownDevice("nobody"), 404, "unknown device"),
        (Conflict("conflict", "already there"), 409, "conflict"),
        (TooLarge("payload too large", "over 4096 bytes"), 413, "payload too large"),
        (DiskFull(), 507, "insufficient storage"),
        (Unavailable("could not find a free name; retry"), 503, "service unavailable"),
    ],
)
def test_each_kind_has_one_status(exc: DomainError, status: int, error: str) -> None:
    answer = to_api_error(exc)
    assert answer.status_code == status
    assert json.loads(answer.body) == {"error": error, "detail": exc.detail}
    assert answer.headers["Content-Type"] == "application/json"
    if status in (503, 507):
        assert int(answer.headers["Retry-After"]) > 0  # transient: the Pi retries


def test_database_errors_are_503_or_507_when_the_disk_is_full() -> None:
    busy = to_api_error(sqlite3.OperationalError("database is locked"))
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
    full = to_api_error(sqlite3.OperationalError("database or disk is full"))
    assert full.status_code == 507 and full.headers["Retry-After"]


def test_the_plugin_maps_what_a_route_raises() -> None:
    @map_domain_errors
    def route() -> str:
        raise UnknownDevice("chi-eclipse-09")

    with pytest.raises(ApiError) as info:
        route()
    assert info.value.status_code == 404 and info.value.error == "unknown device"
