"""Is the server's address free? Checked before ``serve`` does anything else.

A second ``chi-companion serve`` started by mistake next to a running one must stop at once
with "port in use": not reconcile the running instance's data directory (it would remove the
temp files of uploads in progress) and not write into its log. gunicorn finds out only after
the app is prepared, then retries for 5 s and prints several lines.
"""

from __future__ import annotations

import errno
import socket

from .cli_support import CliError


def check_bindable(host: str, port: int) -> None:
    """Bind and release the address as gunicorn will bind it (SO_REUSEADDR, so a socket of a
    just-stopped instance in TIME_WAIT is no obstacle); raise CliError when that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"port in use: {where} is taken by another process "
                f"(is chi-companion already running? see: ss -ltnp 'sport = :{port}')"
            ) from None
        raise CliError(f"cannot listen on {where}: {exc.strerror or exc}") from None
