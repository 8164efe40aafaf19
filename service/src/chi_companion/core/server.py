"""Serving the app with gunicorn's gthread worker, embedded.

Why gunicorn/gthread: it hands request bodies to the app as a stream (large
backup uploads never sit in memory or a spool file), keeps answering /health
while a slow upload is in progress, and on SIGTERM stops accepting, lets
in-flight requests finish within ``graceful_timeout``, then exits 0.

One worker process: the SQLite writer, the analysis queue and the in-memory
rejection log all live in it. Concurrency comes from its threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker

from .bind import check_bindable
from .config import Config, ConfigError, ServerSection, load
from .slow_clients import (
    HEAD_READ_BYTES,
    HEAD_TOO_LARGE_RESPONSE,
    HEADER_TIMEOUT_RESPONSE,
    BodyPace,
    HeadReader,
    PacedUnreader,
    SourceLimit,
    ThrottledLog,
    error_response,
    too_many_response,
)

log = logging.getLogger("chi_companion")
GIL_SWITCH_SECONDS = 0.001
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_COUNT = 5
# A finished or refused connection waits this long (and reads this much) at most for the
# client to close after reading its answer (gunicorn's close_graceful bounds); past this many
# at once, further ones are closed at once (an attacker's flood costs no memory).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 64 * 1024
MAX_LINGERING = 256


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
    """gthread changed so that slow clients cost nothing (rules in core/slow_clients.py).

    Stock gthread hands every new connection to a request thread, which waits up to 5 s for
    a first byte and then reads the headers with a blocking socket: ten clients dripping a
    byte every few seconds held ten threads and stalled /health. Here the event loop reads
    each request head without blocking into a buffer of its own, enforcing the header
    deadline, and hands the connection to a request thread only once the head is complete;
    the thread's reader then enforces the body's minimum rate. Connections beyond
    ``max_per_source`` from one address are answered 429 at accept.

    Stock gthread also closes finished connections "gracefully" (half-close, then a
    blocking drain of up to 2 s) on its single event-loop thread; with a few stalled clients
    that loop, and so every other connection, waited 2 s per client. Here the loop drains
    without blocking (``_linger``).
    """

    # Set from [server] by CompanionServer.load (in the worker, before it serves).
    read_timeout: float = 30.0
    header_timeout: float = 10.0
    min_body_rate: float = 500.0
    body_grace: float = 10.0
    max_per_source: int = 8

    @classmethod
    def configure(cls, server: ServerSection) -> None:
        cls.read_timeout = server.request_timeout_seconds
        cls.header_timeout = server.header_timeout_seconds
        cls.min_body_rate = server.min_body_bytes_per_second
        cls.body_grace = server.body_grace_seconds
        cls.max_per_source = server.max_connections_per_source

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sources = SourceLimit()
        self.reading: dict[Any, HeadReader] = {}  # connections whose head is incomplete
        # Half-closed sockets waiting for the client to close -> [close by, connection, drained]
        self.lingering: dict[socket.socket, list[Any]] = {}
        self.refusals = ThrottledLog("connections refused over server.max_connections_per_source")
        self.head_timeouts = ThrottledLog("connections closed by server.header_timeout_seconds")

    # --- the event loop: accept, read heads, refuse -------------------------------------

    def accept(self, listener: Any) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        source = addr[0] if isinstance(addr, tuple) else str(addr)
        if not self.sources.admit(source, self.max_per_source):
            self._refuse(sock, source)
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, sock, addr, listener.getsockname())  # non-blocking now
        conn.source = source
        conn.close = partial(self._close_conn, conn)
        now = time.monotonic()
        self.reading[conn] = HeadReader(now, self.header_timeout, self.read_timeout)
        self.poller.register(sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))

    def _on_head_readable(self, conn: Any, _fileobj: Any) -> None:
        head = self.reading[conn]
        try:
            data = conn.sock.recv(HEAD_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
        elif head.feed(data, time.monotonic()):
            self.poller.unregister(conn.sock)
            del self.reading[conn]
            conn.head = bytes(head.buf)
            conn.head_deadline = head.deadline
            conn.data_ready = True  # stock handle() must not wait for data again
            self.enqueue_req(conn)
        elif head.too_large():
            self._drop(conn, HEAD_TOO_LARGE_RESPONSE)

    def _drop(self, conn: Any, answer: bytes | None = None) -> None:
        """Close a connection still in the event loop's hands (its head incomplete)."""
        self.poller.unregister(conn.sock)
        del self.reading[conn]
        self.nr_conns -= 1
        if answer is None:
            self._close_conn(conn)
            return
        with contextlib.suppress(OSError):
            conn.sock.send(answer)  # a few hundred bytes into an empty send buffer
        self._close_conn(conn, graceful=True)

    def _refuse(self, sock: socket.socket, source: str) -> None:
        self.refusals.note(source, time.monotonic())
        try:
            sock.setblocking(False)
            sock.send(too_many_response(self.max_per_source))
        except OSError:
            sock.close()
            return
        self._linger(sock, None)

    def _close_conn(self, conn: Any, graceful: bool = False) -> None:
        """Stands in for TConn.close (the event loop calls it when a connection is done)."""
        if graceful:
            self._linger(conn.sock, conn)
        else:
            with contextlib.suppress(OSError):
                conn.sock.close()
            self._release(conn)

    def _linger(self, sock: socket.socket, conn: Any) -> None:
        """Close after the answer as RFC 9112 section 9.6 asks: half-close, then read what
        the client still sends until it closes too (closing with its bytes unread would reset
        the connection and could lose the answer on the way). Stock gthread does this with a
        blocking drain of up to 2 s, in the event loop or a request thread; here the loop
        does it without blocking, so a client that never closes holds no thread. The
        connection keeps its place in its address's count until it is closed."""
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            self._release(conn)
            return
        if len(self.lingering) >= MAX_LINGERING:
            sock.close()
            self._release(conn)
            return
        self.lingering[sock] = [time.monotonic() + LINGER_SECONDS, conn, 0]
        self.poller.register(sock, selectors.EVENT_READ, self._on_lingering_readable)

    def _on_lingering_readable(self, sock: socket.socket) -> None:
        entry = self.lingering[sock]
        try:
            data = sock.recv(HEAD_READ_BYTES)
            entry[2] += len(data)
            if data and entry[2] < LINGER_MAX_BYTES:
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close_lingering(sock)

    def _close_lingering(self, sock: socket.socket) -> None:
        self.poller.unregister(sock)
        _, conn, _ = self.lingering.pop(sock)
        sock.close()
        self._release(conn)

    def murder_pending(self) -> None:
        """Runs on every turn of the event loop (at least once a second): expire heads that
        missed their deadline, lingering closes that are done, and, once stopping,
        connections that have not sent a byte."""
        super().murder_pending()
        now = time.monotonic()
        for conn, head in list(self.reading.items()):
            if head.expired(now):
                self.head_timeouts.note(conn.source, now)
                self._drop(conn, HEADER_TIMEOUT_RESPONSE)
            elif not self.alive and not head.buf:
                self._drop(conn)
        for sock, (close_by, _, _) in list(self.lingering.items()):
            if now >= close_by or not self.alive:
                self._close_lingering(sock)
        self.refusals.tick(now)
        self.head_timeouts.tick(now)

    def _release(self, conn: Any) -> None:
        """Give back the connection's place in its address's count, once."""
        if conn is not None and conn.source is not None:
            self.sources.release(conn.source)
            conn.source = None

    # --- request threads ----------------------------------------------------------------

    def handle(self, conn: Any) -> Any:
        if not conn.initialized:
            original_init = conn.init

            def init_paced() -> None:
                original_init()
                conn.sock.settimeout(self.read_timeout)
                unreader = PacedUnreader(
                    conn.sock,
                    self.read_timeout,
                    getattr(conn, "head_deadline", time.monotonic() + self.header_timeout),
                    BodyPace(self.min_body_rate, self.body_grace),
                )
                unreader.unread(getattr(conn, "head", b""))
                conn.head = b""
                conn.parser.unreader = unreader

            conn.init = init_paced
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        unreader = conn.parser.unreader
        if isinstance(unreader, PacedUnreader):
            unreader.start_body()
        return super().handle_request(req, conn)


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it refuses before the app sees it (a request line over
    4094 bytes: 414, headers too large: 431, a malformed request: 400), as JSON like every
    other error of the API rather than gunicorn's HTML page."""
    gunicorn_util.write_nonblock(sock, error_response(status_int, reason, mesg))


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
        ReadTimeoutThreadWorker.configure(self.companion_config.server)
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
