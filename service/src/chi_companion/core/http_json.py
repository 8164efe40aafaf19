"""JSON in and out of HTTP: error responses and size-limited body reading.

Bodies are read from ``wsgi.input`` ourselves rather than through Bottle's
``request.json``: Bottle spools bodies over 100 KiB to disk and rejects large
JSON with its own HTML 413, and we need our own limit enforced before and while
reading so an oversized body is refused without being held in memory.
"""

from __future__ import annotations

import json
import math
from typing import Any

from bottle import HTTPResponse, request

API = "/api/v1"  # every route's prefix
READ_CHUNK = 64 * 1024


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> HTTPResponse:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    all_headers = {"Content-Type": "application/json"}
    if headers:
        all_headers.update(headers)
    return HTTPResponse(body=body, status=status, headers=all_headers)


class ApiError(HTTPResponse):
    """Raised from a handler to answer with ``{"error": ..., "detail": ...}``.

    A subclass of Bottle's HTTPResponse, so Bottle returns it as-is when raised.
    """

    def __init__(
        self,
        status: int,
        error: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        all_headers = {"Content-Type": "application/json"}
        if headers:
            all_headers.update(headers)
        # ``extra``: fields a client can act on besides the sentence (a quota's figures).
        payload = {"error": error, "detail": detail, **(extra or {})}
        super().__init__(
            body=json.dumps(payload, allow_nan=False), status=status, headers=all_headers
        )
        self.error = error
        self.detail = detail


def header(name: str) -> str | None:
    """A request header as the server received it (each byte one latin-1 character).

    Not Bottle's ``request.get_header``: it decodes the value as UTF-8 and raises on bytes
    like ``\\xff``, which ended as a 500 before any key was checked. A value read here is
    compared or matched as is, so a non-ASCII byte is simply a value no rule accepts (401 or
    400)."""
    value = request.environ.get("HTTP_" + name.upper().replace("-", "_"))
    return value if isinstance(value, str) else None


def require_json_content_type() -> None:
    ctype = request.environ.get("CONTENT_TYPE", "")
    mime = ctype.split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise ApiError(
            415,
            "unsupported media type",
            f"Content-Type must be application/json, got {ctype or 'none'!r}",
        )


def declared_length() -> int | None:
    """The request's Content-Length, or None when it is absent or not a count of bytes."""
    raw = request.environ.get("CONTENT_LENGTH", "")
    # ASCII digits only: int() would also take " 12", "1_000" and other scripts' digits.
    if not (isinstance(raw, str) and raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


def content_length(limit: int) -> int:
    """The declared body length, refusing a body over ``limit`` before reading any of it."""
    raw = request.environ.get("CONTENT_LENGTH", "")
    if not raw:
        raise ApiError(411, "length required", "send a Content-Length header")
    length = declared_length()
    if length is None:
        try:
            int(raw)
        except ValueError:
            raise ApiError(400, "bad request", "Content-Length is not an integer") from None
        raise ApiError(400, "bad request", "Content-Length is negative")
    if length > limit:
        raise ApiError(
            413,
            "payload too large",
            f"body of {length} bytes exceeds the limit of {limit} bytes",
            headers={"Connection": "close"},
        )
    return length


class Body:
    """A request body of declared length, read from ``wsgi.input`` in chunks.

    A stalled client (the socket's read timeout) is 408, a body shorter than its
    Content-Length is 400; both close the connection, which can no longer be trusted."""

    chunk_size = READ_CHUNK

    def __init__(self, length: int) -> None:
        self.stream = request.environ["wsgi.input"]
        self.length = length
        self.remaining = length

    def read(self) -> bytes:
        if self.remaining <= 0:
            return b""
        try:
            chunk: bytes = self.stream.read(min(self.chunk_size, self.remaining))
        except (TimeoutError, OSError):
            self.remaining = -1  # the connection is unusable: nothing left worth reading
            raise ApiError(
                408,
                "request timeout",
                "the body did not arrive in time",
                headers={"Connection": "close"},
            ) from None
        if not chunk:
            got = self.length - self.remaining
            self.remaining = -1
            raise ApiError(
                400,
                "incomplete body",
                f"the body ended after {got} of {self.length} bytes",
                headers={"Connection": "close"},
            )
        self.remaining -= len(chunk)
        return chunk


def read_body(limit: int) -> bytes:
    body = Body(content_length(limit))
    parts: list[bytes] = []
    while chunk := body.read():
        parts.append(chunk)
    return b"".join(parts)


class NonFiniteCounter:
    """json.loads hook: turns NaN/Infinity tokens into None and counts them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, token: str) -> None:
        self.count += 1


def parse_json(body: bytes, counter: NonFiniteCounter | None = None) -> Any:
    counter = counter or NonFiniteCounter()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid JSON", f"body is not valid UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        return json.loads(text, parse_constant=counter)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "invalid JSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ApiError(400, "invalid JSON", "nesting is too deep") from None
    except ValueError as exc:
        # e.g. an integer literal longer than Python's int/str digit limit.
        raise ApiError(400, "invalid JSON", str(exc)) from None


def read_json(limit: int, counter: NonFiniteCounter | None = None) -> Any:
    require_json_content_type()
    return parse_json(read_body(limit), counter)


def is_finite_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    )
