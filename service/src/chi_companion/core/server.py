"""Serving the app with gunicorn's gthread worker, embedded.

Why gunicorn/gthread: it hands request bodies to the app as a stream (large
backup uploads never sit in memory or a spool file), keeps answering /health
while a slow upload is in progress, and on SIGTERM stops accepting, lets
in-flight requests finish within ``graceful_timeout``, then exits 0.

One worker process: the SQLite writer, the analysis queue and the in-memory
rejection log all live in it. Concurrency comes from its threads.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import signal
import sys
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.util import close_graceful
from gunicorn.workers.gthread import _DEFER, ThreadWorker

from .bind import check_bindable
from .config import Config, ConfigError, load

log = logging.getLogger("chi_companion")
GIL_SWITCH_SECONDS = 0.001
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_COUNT = 5


def setup_logging(config: Config) -> None:
    level = getattr(logging, config.server.log_level.upper())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("chi_companion")
    root.setLevel(level)
    root.handlers.clear()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    root.addHandler(stderr)
    logs_dir = config.data_dir / "logs"
    if logs_dir.is_dir():
        # The journal keeps stderr; this file goes to the NAS with the rest of the data.
        rotating = logging.handlers.RotatingFileHandler(
            logs_dir / "companion.log", maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_COUNT
        )
        rotating.setFormatter(fmt)
        root.addHandler(rotating)


class ReadTimeoutThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread with two changes for clients that stall.

    Stock gthread reads headers and bodies with a blocking socket and no timeout, so a
    client that stops sending mid-request (a flaky WiFi link, or a slowloris) would hold
    a worker thread forever. Here every socket read has a timeout: the read fails, the
    connection is closed (or, inside the app, answered 408) and the thread is free again.

    Stock gthread also closes finished connections "gracefully" (half-close, then drain
    for up to 2 s) on its single event-loop thread; with a few stalled clients that loop,
    and so every other connection, waits 2 s per client. The close is done here, in the
    request's own pool thread, instead.
    """

    read_timeout: float = 30.0

    def handle(self, conn: Any) -> Any:
        if not conn.initialized:
            original_init = conn.init

            def init_with_timeout() -> None:
                original_init()
                conn.sock.settimeout(self.read_timeout)

            conn.init = init_with_timeout
        result = super().handle(conn)
        if not result and result is not _DEFER:
            close_graceful(conn.sock)
            conn.close = _already_closed
        return result


def _already_closed(graceful: bool = False) -> None:
    """Stands in for TConn.close once the pool thread has closed the socket."""


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it refuses before the app sees it (a request line over
    4094 bytes: 414, headers too large: 431, a malformed request: 400), as JSON like every
    other error of the API rather than gunicorn's HTML page."""
    body = json.dumps({"error": reason.lower(), "detail": mesg or None}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


class Service(Protocol):
    """What the server runs: built once in the master (storage) and again in the worker."""

    def prepare_storage(self) -> None: ...
    def start_background(self) -> None: ...
    def stop_background(self) -> None: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=Service)
AppFactory = Callable[[S], Any]


class CompanionServer(BaseApplication, Generic[S]):  # type: ignore[misc]
    def __init__(
        self, config: Config, build: Callable[[Config], S], make_app: AppFactory[S]
    ) -> None:
        self.companion_config = config
        self.build = build
        self.make_app = make_app
        self.ctx: S | None = None
        self._loaded = False
        super().__init__()

    def _reread(self) -> None:
        """On SIGHUP (``systemctl reload``) gunicorn asks for the settings again, then
        replaces the worker gracefully: the new worker is built from the config file as it is
        now, so new or rotated keys apply without stopping the service. A config that no
        longer loads is refused and the running one kept."""
        try:
            fresh = load(self.companion_config.source)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            return
        for warning in fresh.warnings:
            log.warning("config: %s", warning)
        self.companion_config = fresh
        log.info("configuration reloaded from %s", fresh.source)

    def load_config(self) -> None:
        if self._loaded:
            self._reread()
        self._loaded = True
        server = self.companion_config.server
        host = server.host
        bind = f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"
        settings: dict[str, Any] = {
            "bind": [bind],
            "workers": 1,
            "worker_class": "chi_companion.core.server.ReadTimeoutThreadWorker",
            "threads": server.threads,
            "timeout": 60,
            "graceful_timeout": server.graceful_timeout_seconds,
            # One request per connection (the Pi sends Connection: close anyway), so the
            # read timeout set when a connection starts covers every request.
            "keepalive": 0,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": server.log_level,
            "proc_name": "chi-companion",
            # The hardened unit has a read-only filesystem outside the data dir
            # and no home: gunicorn's runtime control socket has nowhere to live.
            "control_socket_disable": True,
            "when_ready": self._when_ready,
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        ReadTimeoutThreadWorker.read_timeout = self.companion_config.server.request_timeout_seconds
        # The thread holding the writer lock gives up the GIL in every SQLite call and must win
        # it back from request threads parsing JSON, each time waiting up to the switch
        # interval: at Python's 5 ms, a transaction of ten calls could be stretched by 50 ms
        # while every writer queued behind it waits too (issue 15 item 11).
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        # Runs in the worker, after fork: threads and SQLite connections are per process.
        self.ctx = self.build(self.companion_config)
        return self.make_app(self.ctx)

    def _when_ready(self, arbiter: Any) -> None:
        # Only now is the address bound: said earlier, a start that fails on a port in use
        # would have written "listening" into the log of the instance that holds the port.
        config = self.companion_config
        log.info(
            "chi-companion listening on %s:%s, data in %s",
            config.server.host,
            config.server.port,
            config.data_dir,
        )

    def _post_worker_init(self, worker: Any) -> None:
        if self.ctx is not None:
            self.ctx.start_background()

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self.ctx is not None:
            self.ctx.stop_background()
            self.ctx.close()


def serve(config: Config, build: Callable[[Config], S], make_app: AppFactory[S]) -> int:
    # First of all: a second instance on a taken port must touch neither the data nor the log.
    check_bindable(config.server.host, config.server.port)
    setup_logging(config)
    # gunicorn's Worker.handle_error writes its refusals through util.write_error; this
    # process is the companion's server only, so the replacement touches nothing else.
    gunicorn_util.write_error = write_json_error
    # A `systemctl reload` (SIGHUP) before gunicorn installs its handlers would end the process
    # (HUP's default action), and systemd counts that as a clean exit: no Restart=on-failure.
    # From here (after the imports, through the storage preparation, which can take a while)
    # until gunicorn takes the signal over, a reload is ignored: the file was just read anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    master_ctx = build(config)
    master_ctx.prepare_storage()
    master_ctx.close()
    # Logging is set up again: prepare_storage may just have created logs/.
    setup_logging(config)
    for warning in config.warnings:
        log.warning("config: %s", warning)
    CompanionServer(config, build, make_app).run()
    return 0
