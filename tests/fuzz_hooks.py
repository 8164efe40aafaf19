"""schemathesis hooks for tests/test_fuzz_api.py (loaded through SCHEMATHESIS_HOOKS).

A backup upload may carry the SHA-256 of its file (the ``X-Content-SHA256`` header, or the
``sha256`` form field). The schema can say that it is 64 hex digits but not that it must be
the digest of the body, so schemathesis sends random digests in requests it considers valid,
and the server rightly refuses them (400 digest mismatch; test_backups.py checks that). That
is the one thing the spec cannot state, so it is supplied here: where schemathesis generated
a well-formed digest, the body's real digest is sent instead. A malformed one (a negative
case) is left as generated, and everything else in the request is untouched.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import schemathesis

SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
HEADER = "X-Content-SHA256"
UPLOADS = frozenset({"putBackup", "postBackup"})


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")  # how requests/urllib3 encode a text part
    return None


def _file_bytes(case: Any) -> bytes | None:
    """The file's bytes exactly as schemathesis will send them (None when not one clear file).

    Read from schemathesis's own serialisation of the case rather than from ``case.body``: it
    substitutes sample files for generated binary values when it serialises."""
    sent = case.as_transport_kwargs(base_url="http://unused")
    if case.operation.definition.raw.get("operationId") == "putBackup":
        return _as_bytes(sent.get("data"))
    parts = [part for name, part in sent.get("files") or [] if name == "file"]
    if len(parts) != 1 or not isinstance(parts[0], tuple) or len(parts[0]) < 2:
        return None
    return _as_bytes(parts[0][1])


def _well_formed(value: Any) -> bool:
    return isinstance(value, str) and SHA256_RE.fullmatch(value) is not None


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.definition.raw.get("operationId") not in UPLOADS:
        return
    headers = case.headers or {}
    names = [name for name in headers if name.lower() == HEADER.lower()]
    fix_header = [name for name in names if _well_formed(headers[name])]
    fix_field = isinstance(case.body, dict) and _well_formed(case.body.get("sha256"))
    if not fix_header and not fix_field:
        return
    data = _file_bytes(case)
    if data is None:
        return
    digest = hashlib.sha256(data).hexdigest()
    for name in fix_header:
        headers[name] = digest
    if fix_field:
        case.body["sha256"] = digest
