"""The companion's Bottle app in this process, called through WSGI (no sockets), for the
benchmarks that time the server's own work (bench/drive_page.py, bench/drive_list.py)."""

from __future__ import annotations

import io
import sys
from typing import Any
from urllib.parse import urlencode

from chi_companion.companion import Companion
from chi_companion.core.config import parse
from chi_companion.web import create_app


def companion_app(data_dir: str, device: str, key: str) -> tuple[Companion, Any]:
    """A companion on ``data_dir`` with one device and no automatic analysis, and its WSGI
    app; the caller closes the companion."""
    config = parse(
        {
            "server": {"data_dir": data_dir},
            "devices": {device: {"api_key": key}},
            "analysis": {"auto": False},
        },
        "bench",
        env={},
    )
    ctx = Companion.from_config(config)
    ctx.prepare_storage()
    return ctx, create_app(ctx)


def call(
    app: Any, method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[str, dict, bytes]:
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)),
        **{
            ("CONTENT_TYPE" if k == "Content_Type" else f"HTTP_{k.upper()}"): v
            for k, v in headers.items()
        },
    }
    got: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, dict(hdrs)

    out = b"".join(app(environ, start_response))
    return got["status"], got["headers"], out


def session_cookie(app: Any, key: str) -> str:
    """Sign in to the status page with ``key``: the ``Cookie`` value its pages need."""
    status, headers, _ = call(
        app,
        "POST",
        "/login",
        urlencode({"key": key}).encode(),
        Content_Type="application/x-www-form-urlencoded",
    )
    assert status.startswith("303"), status
    return str(headers["Set-Cookie"].split(";", 1)[0])
