"""Formats of identifiers and integers, defined once for the config, the stores and the API.

One definition each, so a device id the config accepts is exactly one the API, the sync body
and the backup tree accept, and an integer the API takes always fits an SQLite INTEGER (a
bigger one would make sqlite3 raise OverflowError, which is not a client error to the server).
Patterns are used with ``fullmatch``: ``re.match`` with a ``$`` anchor lets a trailing newline
through.
"""

from __future__ import annotations

import re
from typing import Any

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEVICE_ID_RULE = "1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
# SQLite INTEGER is a signed 64-bit integer.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INTEGER_RE = re.compile(r"-?[0-9]+")
# More digits than this cannot be in range; checked before int() so a 100,000-digit value
# costs nothing (and never hits Python's int/str digit limit).
MAX_INT64_DIGITS = 19


def is_device_id(value: Any) -> bool:
    return isinstance(value, str) and DEVICE_ID_RE.fullmatch(value) is not None


def as_int64(value: Any) -> int | None:
    """The value as a 64-bit integer, or None when it is not one.

    A float with no fractional part (5.0) counts, as JSON Schema counts it: some JSON writers
    print integral numbers that way. Booleans do not, although Python calls them ints."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():  # also false for inf and NaN
            return None
        value = int(value)
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def parse_int(raw: str, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int | None:
    """ASCII digits (with an optional minus) within [minimum, maximum], or None.

    Stricter than int(): no spaces, underscores, plus signs or non-ASCII digits, which a
    query string or a command line should not carry into a database id."""
    if not INTEGER_RE.fullmatch(raw):
        return None
    if len(raw.lstrip("-").lstrip("0")) > MAX_INT64_DIGITS:
        return None
    value = int(raw)
    return value if minimum <= value <= maximum else None
