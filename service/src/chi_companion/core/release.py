"""The release record the Pi polls for its self-update check.

The file is re-read when it changes (by mtime), so publishing a release is
writing a file, with no restart. An absent, unreadable or invalid record is
"no release published": the Pi then waits 24 h, which is the safe outcome.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIELDS = ("version", "releasedAt", "gitHash", "theme", "description")
_CHECKS: dict[str, tuple[re.Pattern[str], str]] = {
    "version": (re.compile(r"^V?\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$"), "like V0.28.2"),
    "releasedAt": (
        re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"),
        "UTC ISO-8601 like 2026-06-05T22:24:03Z",
    ),
    "gitHash": (re.compile(r"^[0-9a-f]{7,40}$"), "7-40 lowercase hex digits"),
}


class ReleaseError(ValueError):
    pass


def validate_record(data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise ReleaseError("the release record must be a JSON object")
    problems = []
    missing = [f for f in FIELDS if f not in data]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    extra = [f for f in data if f not in FIELDS]
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}")
    for name in FIELDS:
        value = data.get(name)
        if name not in data:
            continue
        if not isinstance(value, str):
            problems.append(f"{name} must be a string")
        elif name in _CHECKS and not _CHECKS[name][0].fullmatch(value):
            problems.append(f"{name} must be {_CHECKS[name][1]}")
        elif name == "theme" and not 1 <= len(value) <= 50:
            problems.append("theme must be 1-50 characters")
        elif name == "description" and len(value) > 400:
            problems.append("description must be at most 400 characters")
    if problems:
        raise ReleaseError("; ".join(problems))
    return {f: data[f] for f in FIELDS}


def load_record(path: Path) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ReleaseError(f"not UTF-8 text (byte {exc.start})") from None
    except IsADirectoryError:
        raise ReleaseError("is a directory, not a release record") from None
    return validate_record(data)


@dataclass
class _Cached:
    mtime_ns: int
    record: dict[str, str] | None
    problem: str | None


class ReleaseSource:
    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self._cache: _Cached | None = None
        self._lock = threading.Lock()

    def current(self) -> tuple[dict[str, str] | None, str]:
        """(record, reason); the record is None when none is published."""
        if self.path is None:
            return None, "no release record is configured"
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return None, "no release is published"
        except OSError as exc:
            return None, f"release record unreadable: {exc.strerror}"
        with self._lock:
            if self._cache is None or self._cache.mtime_ns != mtime:
                try:
                    self._cache = _Cached(mtime, load_record(self.path), None)
                except (ReleaseError, OSError, UnicodeDecodeError) as exc:
                    self._cache = _Cached(mtime, None, f"release record invalid: {exc}")
            cached = self._cache
        if cached.record is None:
            return None, cached.problem or "no release is published"
        return cached.record, "ok"
