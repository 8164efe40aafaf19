"""Query and path parameters, parsed strictly and the same way by every route.

A parameter that is present must be valid, even when empty: ``?deviceId=`` is a 400, not "no
device given" (a script with an unset variable must not silently list every device). Integers
are ASCII digits within SQLite's 64-bit range, so no value a client sends can reach the
database as an OverflowError (a 500). Every refusal is a 400 naming the parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bottle import request

from .http_json import ApiError
from .ids import DEVICE_ID_RULE, INT64_MAX, INT64_MIN, is_device_id, parse_int

if TYPE_CHECKING:
    from bottle import Bottle

# JSON's number syntax: what the spec's "type: number" means on the wire. Python's float()
# would also take "inf", "1_0" and " 5 ", which the spec does not allow.
NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _bad(name: str, detail: str) -> ApiError:
    return ApiError(400, "bad parameter", f"{name} {detail}")


def _int64(name: str, raw: str, minimum: int, maximum: int) -> int:
    value = parse_int(raw, minimum, maximum)
    if value is None:
        raise _bad(name, f"must be an integer from {minimum} to {maximum}")
    return value


def query_str(name: str) -> str | None:
    """The parameter as text, or None when it is absent (Bottle gives WSGI's latin-1 text)."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return str(raw.encode("latin-1").decode("utf-8"))
    except UnicodeError:
        raise _bad(name, "is not valid UTF-8") from None


def query_int(name: str, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int | None:
    raw = query_str(name)
    return None if raw is None else _int64(name, raw, minimum, maximum)


def query_number(name: str, minimum: float = 0.0) -> float | None:
    """A JSON-syntax number >= minimum; a huge one (1e999) is infinity, which callers cap."""
    raw = query_str(name)
    if raw is None:
        return None
    value = float(raw) if NUMBER_RE.fullmatch(raw) else math.nan
    if not value >= minimum:  # NaN (not a number at all) fails this too
        raise _bad(name, f"must be a number of at least {minimum:g}")
    return value


def query_device_id(name: str = "deviceId") -> str | None:
    raw = query_str(name)
    if raw is not None and not is_device_id(raw):
        raise _bad(name, f"must be {DEVICE_ID_RULE}")
    return raw


def query_choice(name: str, choices: Iterable[str]) -> str | None:
    raw = query_str(name)
    allowed = tuple(choices)
    if raw is not None and raw not in allowed:
        raise _bad(name, f"must be one of {', '.join(allowed)}")
    return raw


def install_id_filter(app: Bottle) -> None:
    """Route filter ``<name:id>``: a positive 64-bit integer, as every stored id is.

    Bottle's own ``int`` filter takes any length of digits (and Unicode digits): an id past
    SQLite's range would reach the database and fail there with a 500. Here anything that is
    not ASCII digits does not match the route (404, as an unknown path), and digits out of
    range are a 400 before the handler runs."""

    def to_python(raw: str) -> int:
        return _int64("the id in the path", raw, 1, INT64_MAX)

    app.router.add_filter("id", lambda _conf: (r"[0-9]+", to_python, str))
