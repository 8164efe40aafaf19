#!/usr/bin/env python3
"""chi-companion-push: push the Pi's SQLite database and logs to the companion, and restore.

This file must stay a single, self-contained module that runs on a plain Python 3.11 with only
the standard library: it is copied verbatim to the Pi as /usr/local/bin/chi-companion-push, and
the Pi has no pip. Do not import chi_companion or any third-party package here.

What a push does, in order:
  1. take an exclusive lock so two runs (cron + NetworkManager hook) never overlap;
  2. GET /api/v1/ping with a short timeout, so a run away from home ends at once;
  3. snapshot the live database with SQLite's online backup API (the app keeps writing in WAL
     mode; copying the file could capture a torn state), PRAGMA quick_check the snapshot,
     gzip it, sha256 it and PUT it with X-Content-SHA256, streaming from disk;
  4. upload the log files that changed since the last successful push;
  5. record what was stored in a small JSON state file, written atomically.
The exit status is 0 only when every file was stored and the server's sha256 equals ours.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import ssl
import sys
import time
import tomllib
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

# Kept equal to chi_companion.__version__ (a test checks): this file cannot import the package
# because it is copied to the Pi on its own.
VERSION = "0.2.0"
PROG = "chi-companion-push"

# Exit codes. Scripts (cron, the dispatcher hook, the Ansible role) branch on these, so they
# are part of the interface: never renumber, only add.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_REJECTED = 5
EXIT_RETRIES = 6
EXIT_VERIFY = 7
EXIT_LOCKED = 8
EXIT_REFUSED = 9
EXIT_LOCAL = 10
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    every file was stored (or was unchanged) and the server's sha256 equals the local one
  1    internal error (a bug; rerun with --debug and report the traceback)
  2    usage or configuration error (bad option, bad config file, unreadable key file)
  3    server unreachable, or /api/v1/ping did not answer 2xx within the ping timeout
  4    authentication refused (401/403): wrong key, or the key belongs to another device
  5    the server rejected a file with a 4xx other than 401/403, or 507 (disk full)
  6    gave up after retries (5xx, 429, connection errors, timeouts)
  7    verification failed (the server's sha256 or size differs from the local file, a
       download's hash differs, or a restored database fails PRAGMA quick_check)
  8    another chi-companion-push run holds the lock
  9    restore refused: the destination exists or is the live database
  10   local problem: the database or logs directory is missing or unreadable, or the
       snapshot of the live database fails PRAGMA quick_check
  130  interrupted (SIGINT/SIGTERM); temporary files are removed, nothing is half-recorded
"""

CONFIG_SEARCH_HELP = """\
configuration file (TOML; command-line options win over it), first one found:
  --config PATH, $CHI_COMPANION_PUSH_CONFIG, $XDG_CONFIG_HOME/chi-companion-push.toml
  (default ~/.config/chi-companion-push.toml), /etc/chi-companion-push.toml
keys: server, key_file, device_id, db, logs, state_dir, timeout, ping_timeout, wait,
      retries, backoff, compress_level, limit_rate, ca_file
"""

BACKUP_TYPES = ("database", "logs", "config")
CHUNK = 1 << 20  # 1 MiB: big enough for loopback/LAN throughput, small for a Pi's RAM
MAX_JSON_BODY = 32 << 20  # a backup listing is JSON; anything larger is not a sane answer
MAX_ERROR_BODY = 64 << 10
BACKOFF_CAP = 60.0
GZIP_MAGIC = b"\x1f\x8b"
SQLITE_MAGIC = b"SQLite format 3\x00"
# Log files that are already compressed are sent as they are; gzip would only cost CPU.
COMPRESSED_SUFFIXES = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".zip")


# --------------------------------------------------------------------------------------------
# Errors: each maps to one exit code, so main() is the only place that turns them into a status.


class PushError(Exception):
    exit_code = EXIT_INTERNAL


class UsageError(PushError):
    exit_code = EXIT_USAGE


class UnreachableError(PushError):
    exit_code = EXIT_UNREACHABLE


class AuthError(PushError):
    exit_code = EXIT_AUTH


class RejectedError(PushError):
    exit_code = EXIT_REJECTED


class RetriesExhaustedError(PushError):
    exit_code = EXIT_RETRIES


class VerifyError(PushError):
    exit_code = EXIT_VERIFY


class LockedError(PushError):
    exit_code = EXIT_LOCKED


class RefusedError(PushError):
    exit_code = EXIT_REFUSED


class LocalError(PushError):
    exit_code = EXIT_LOCAL


class TransientError(Exception):
    """A failure worth retrying: connection refused/reset, timeout, truncated response."""


class Interrupted(BaseException):
    """Raised from the SIGTERM handler; BaseException so generic handlers do not swallow it."""


# --------------------------------------------------------------------------------------------
# Output: a progress bar on a terminal, one log line per file otherwise (cron mail, journald).


class Ui:
    def __init__(self, *, quiet: bool = False, tty: bool | None = None) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty() if tty is None else tty

    def info(self, message: str) -> None:
        if not self.quiet:
            self._emit(message)

    def warn(self, message: str) -> None:
        self._emit(f"warning: {message}")

    def error(self, message: str) -> None:
        self._emit(f"error: {message}")

    def _emit(self, message: str) -> None:
        if self.tty:
            sys.stderr.write(f"{PROG}: {message}\n")
        else:
            # Without a terminal the line usually ends up in a file or a cron mail that has no
            # timestamp of its own; journald adds one anyway, a second one costs nothing.
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            sys.stderr.write(f"{stamp} {PROG}: {message}\n")
        sys.stderr.flush()

    def progress(self, label: str, total: int) -> Progress:
        return Progress(label, total, enabled=self.tty and not self.quiet)


class Progress:
    """Bytes, rate and ETA on one terminal line, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int, *, enabled: bool) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.started = time.monotonic()
        self._last_draw = 0.0

    def add(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= 0.1 or self.done >= self.total:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        width = 24
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (
            f"\r{self.label[:28]:<28} [{bar}] {human_bytes(self.done)}/{human_bytes(self.total)}"
            f" {human_bytes(rate)}/s ETA {format_duration(eta)}"
        )
        sys.stderr.write(line + "\x1b[K")
        sys.stderr.flush()

    def finish(self) -> float:
        """Clear the bar (the caller prints the result line) and return the elapsed seconds."""
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        return time.monotonic() - self.started


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - loop always returns


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class Config:
    server: str = ""
    key_file: str = ""
    device_id: str = ""
    db: str = ""
    logs: str = ""
    state_dir: str = ""
    timeout: float = 30.0
    ping_timeout: float = 3.0
    wait: float = 0.0  # keep pinging this long before giving up (WiFi just came up)
    retries: int = 5
    backoff: float = 1.0
    compress_level: int = 6
    limit_rate: int = 0  # bytes per second, 0 = unlimited
    ca_file: str = ""
    source: str = "(none)"  # which config file was read, for messages
    key: str = field(default="", repr=False)


# name -> accepted Python types; anything not listed is an error, so a typo is never ignored.
CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    "server": (str,),
    "key_file": (str,),
    "device_id": (str,),
    "db": (str,),
    "logs": (str,),
    "state_dir": (str,),
    "timeout": (int, float),
    "ping_timeout": (int, float),
    "wait": (int, float),
    "retries": (int,),
    "backoff": (int, float),
    "compress_level": (int,),
    "limit_rate": (int,),
    "ca_file": (str,),
}
PATH_KEYS = ("key_file", "db", "logs", "state_dir", "ca_file")
# The id becomes a URL path segment and a directory name on the server.
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def default_config_paths() -> list[Path]:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path(xdg) / "chi-companion-push.toml", Path("/etc/chi-companion-push.toml")]


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/chi-companion-push")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "chi-companion-push"


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        # tomllib decodes the bytes itself and lets this through, not as a TOMLDecodeError.
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    problems = []
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            problems.append(f"{path}: {key}: unknown key")
        elif isinstance(value, bool) or not isinstance(value, CONFIG_KEYS[key]):
            wanted = " or ".join(t.__name__ for t in CONFIG_KEYS[key])
            problems.append(f"{path}: {key}: must be {wanted}")
    if problems:
        raise UsageError("\n".join(problems))
    return data


def load_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    path: Path | None = None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise UsageError(f"config file {path} {what}")
    elif os.environ.get("CHI_COMPANION_PUSH_CONFIG"):
        path = Path(os.environ["CHI_COMPANION_PUSH_CONFIG"])
        if not path.is_file():
            raise UsageError(f"config file {path} (from $CHI_COMPANION_PUSH_CONFIG) does not exist")
    else:
        path = next((p for p in default_config_paths() if p.is_file()), None)
    if path is not None:
        cfg.source = str(path)
        for key, value in read_config_file(path).items():
            setattr(cfg, key, value)
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    for key in PATH_KEYS:
        value = getattr(cfg, key)
        if value:
            setattr(cfg, key, str(Path(value).expanduser()))
    return cfg


def validate_config(cfg: Config, *, need_db: bool) -> None:
    missing = [k for k in ("server", "key_file", "device_id") if not getattr(cfg, k)]
    if need_db and not cfg.db and not cfg.logs:
        missing.append("db (or logs)")
    if missing:
        raise UsageError(
            f"missing setting(s): {', '.join(missing)} "
            f"(give them as options or in the config file; config read: {cfg.source})"
        )
    parts = urllib.parse.urlsplit(cfg.server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"server must be an http:// or https:// URL, got {cfg.server!r}")
    if not DEVICE_ID_RE.fullmatch(cfg.device_id):
        raise UsageError(f"device id {cfg.device_id!r} may hold only letters, digits, '-_.'")
    if cfg.timeout <= 0 or cfg.ping_timeout <= 0:
        raise UsageError("timeout and ping_timeout must be positive")
    if cfg.retries < 0 or cfg.backoff < 0 or cfg.limit_rate < 0 or cfg.wait < 0:
        raise UsageError("retries, backoff, limit_rate and wait must not be negative")
    if not 0 <= cfg.compress_level <= 9:
        raise UsageError("compress_level must be 0..9")
    cfg.key = read_key_file(Path(cfg.key_file))


def read_key_file(path: Path) -> str:
    try:
        st = path.stat()
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"key file {path} is not text") from exc
    if not key or any(c.isspace() for c in key):
        raise UsageError(f"key file {path} must hold exactly one key on one line")
    if st.st_mode & 0o077:
        # Like ssh: the key lets anyone add backups as this car; only its owner should read it.
        print(
            f"{PROG}: warning: key file {path} is accessible by group/others "
            f"(mode {st.st_mode & 0o777:o}); run: chmod 600 {path}",
            file=sys.stderr,
        )
    return key


# --------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def message(self) -> str:
        """The server's {"error", "detail"} as one line, or the start of a non-JSON body."""
        data = self.json()
        if isinstance(data, dict) and ("error" in data or "detail" in data):
            error = data.get("error", "")
            detail = data.get("detail")
            if detail in (None, ""):
                return f"HTTP {self.status}: {error}"
            if not isinstance(detail, str):
                detail = json.dumps(detail, sort_keys=True)
            return f"HTTP {self.status}: {error}: {detail}"
        text = self.body[:200].decode("utf-8", "replace").strip()
        return f"HTTP {self.status}: {text}" if text else f"HTTP {self.status}"


class RateLimiter:
    """Sleeps so the average send rate stays under a limit (--limit-rate): the car's WiFi
    uplink is shared with the sync client, which must not time out behind a large backup."""

    def __init__(self, bytes_per_second: int) -> None:
        self.rate = bytes_per_second
        self.started = time.monotonic()
        self.sent = 0

    def account(self, n: int) -> None:
        if self.rate <= 0:
            return
        self.sent += n
        ahead = self.sent / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


class Client:
    def __init__(self, cfg: Config, ui: Ui) -> None:
        parts = urllib.parse.urlsplit(cfg.server)
        self.server = cfg.server
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port
        # A reverse proxy may mount the companion under a prefix (https://nas/companion).
        self.base_path = parts.path.rstrip("/")
        self.key = cfg.key
        self.device_id = cfg.device_id
        self.timeout = cfg.timeout
        self.retries = cfg.retries
        self.backoff = cfg.backoff
        self.limit_rate = cfg.limit_rate
        self.ca_file = cfg.ca_file
        self.ui = ui

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            context = ssl.create_default_context(cafile=self.ca_file or None)
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: IO[bytes] | None = None,
        body_size: int = 0,
        progress: Progress | None = None,
        sink: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One request on a fresh connection (the companion's clients all use Connection:
        close). The body is streamed from `body`; a 200 answer is streamed into `sink`."""
        conn = self._connect(timeout or self.timeout)
        try:
            try:
                conn.putrequest(method, self.base_path + path, skip_accept_encoding=True)
                all_headers = {
                    "X-API-Key": self.key,
                    "User-Agent": f"{PROG}/{VERSION}",
                    "Accept": "application/json",
                    "Connection": "close",
                }
                if body is not None or method in ("PUT", "POST"):
                    all_headers["Content-Length"] = str(body_size)
                all_headers.update(headers or {})
                for name, value in all_headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                if body is not None:
                    self._send_body(conn, body, body_size, progress)
            except OSError as exc:
                # The server may answer before it has read the body (413 from Content-Length,
                # 401, 507) and close; its answer says far more than our EPIPE/ECONNRESET.
                early = self._early_response(conn)
                if early is None:
                    raise TransientError(f"{method} {path}: {describe_oserror(exc)}") from exc
                return early
            resp = conn.getresponse()
            resp_headers = {k.lower(): v for k, v in resp.getheaders()}
            if sink is not None and resp.status == 200:
                length = resp_headers.get("content-length", "")
                if progress is not None and length.isdigit():
                    progress.total = int(length)
                self._receive_body(resp, sink, progress)
                return Response(resp.status, resp_headers, b"")
            limit = MAX_JSON_BODY if 200 <= resp.status < 300 else MAX_ERROR_BODY
            return Response(resp.status, resp_headers, resp.read(limit))
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{method} {path}: {describe_oserror(exc)}") from exc
        finally:
            conn.close()

    def _send_body(
        self,
        conn: http.client.HTTPConnection,
        body: IO[bytes],
        size: int,
        progress: Progress | None,
    ) -> None:
        limiter = RateLimiter(self.limit_rate)
        remaining = size
        while remaining > 0:
            chunk = body.read(min(CHUNK, remaining))
            if not chunk:
                # Our own temp file shrank: nothing the server can fix, so not transient.
                raise LocalError(f"upload source ended {remaining} bytes early")
            conn.send(chunk)
            remaining -= len(chunk)
            limiter.account(len(chunk))
            if progress is not None:
                progress.add(len(chunk))

    @staticmethod
    def _receive_body(
        resp: http.client.HTTPResponse, sink: IO[bytes], progress: Progress | None
    ) -> None:
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                break
            sink.write(chunk)
            if progress is not None:
                progress.add(len(chunk))

    @staticmethod
    def _early_response(conn: http.client.HTTPConnection) -> Response | None:
        if conn.sock is None:
            return None  # never connected: there is no answer to read
        try:
            resp = conn.getresponse()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            return Response(resp.status, headers, resp.read(MAX_ERROR_BODY))
        except (OSError, http.client.HTTPException):
            return None

    def with_retries(self, what: str, attempt_fn: Callable[[int], Response]) -> Response:
        """Run attempt_fn(attempt) until it returns a non-retryable response.

        Retries the way the Pi's own sync client does (see the wire contract): 5xx, 429,
        connection errors and timeouts, with exponential backoff and jitter, honouring
        Retry-After. 507 is a 5xx but means the server's disk is full, which no retry in the
        next minute fixes, so it is returned to the caller like a 4xx.
        """
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            retry_after = 0.0
            try:
                resp = attempt_fn(attempt)
            except TransientError as exc:
                reason = str(exc)
            else:
                if not (resp.status == 429 or (resp.status >= 500 and resp.status != 507)):
                    return resp
                reason = resp.message()
                with contextlib.suppress(KeyError, ValueError):
                    retry_after = float(resp.headers["retry-after"])
            if attempt == attempts:
                raise RetriesExhaustedError(
                    f"{what}: gave up after {attempts} attempt(s): {reason}"
                )
            delay = min(BACKOFF_CAP, self.backoff * 2 ** (attempt - 1))
            delay = max(delay, min(retry_after, BACKOFF_CAP))
            # Jitter so the cron run and a dispatcher run do not retry in lockstep.
            delay *= random.uniform(1.0, 1.25)
            self.ui.warn(f"{what}: {reason}; retry {attempt}/{attempts - 1} in {delay:.1f}s")
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- API calls -------------------------------------------------------------------------

    def ping(self, timeout: float) -> dict[str, Any]:
        try:
            resp = self.request("GET", "/api/v1/ping", timeout=timeout)
        except TransientError as exc:
            raise UnreachableError(
                f"server {self.server} is not reachable ({exc}); nothing pushed"
            ) from exc
        if resp.status in (401, 403):
            raise AuthError(
                f"the server refused the key for device {self.device_id}: {resp.message()}"
            )
        if not 200 <= resp.status < 300:
            raise UnreachableError(f"/api/v1/ping answered {resp.message()}; nothing pushed")
        data = resp.json()
        data = data if isinstance(data, dict) else {}
        other = data.get("deviceId")
        if isinstance(other, str) and other and other != self.device_id:
            # Caught here rather than as a 403 on the first upload, with a clearer message.
            raise AuthError(
                f"the key in the key file belongs to device {other!r}, not {self.device_id!r}"
            )
        return data

    def list_backups(self, backup_type: str | None, *, retry: bool = True) -> list[dict[str, Any]]:
        query = {"deviceId": self.device_id}
        if backup_type:
            query["type"] = backup_type
        path = "/api/v1/backups?" + urllib.parse.urlencode(query)
        if retry:
            resp = self.with_retries("list backups", lambda _attempt: self.request("GET", path))
        else:
            resp = self.request("GET", path)
            if resp.status == 429 or resp.status >= 500:
                raise TransientError(f"list backups: {resp.message()}")
        check_status(resp, "list backups", (200,))
        data = resp.json()
        backups = data.get("backups") if isinstance(data, dict) else None
        if not isinstance(backups, list):
            raise RejectedError("list backups: the server's answer has no 'backups' list")
        return [b for b in backups if isinstance(b, dict)]


def check_status(resp: Response, what: str, ok: tuple[int, ...]) -> None:
    if resp.status in ok:
        return
    if resp.status in (401, 403):
        raise AuthError(f"{what}: the server refused the key: {resp.message()}")
    raise RejectedError(f"{what}: the server rejected it: {resp.message()}")


def wait_for_server(client: Client, cfg: Config, ui: Ui) -> None:
    """Ping once, or for up to cfg.wait seconds: right after the WiFi comes up, DHCP, DNS and
    the route may need a few seconds, and the dispatcher hook fires before they settle."""
    deadline = time.monotonic() + cfg.wait
    while True:
        try:
            client.ping(cfg.ping_timeout)
            return
        except UnreachableError:
            if time.monotonic() + 2 > deadline:
                raise
            ui.info(f"server not reachable yet; trying for {deadline - time.monotonic():.0f}s more")
            time.sleep(2)


def describe_oserror(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------------
# Local files: snapshot, compression, hashing, atomic writes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write-fsync-rename-fsync(dir): a power cut (the Pi loses power with the ignition) leaves
    either the old or the new file, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def quick_check(conn: sqlite3.Connection) -> str:
    rows = conn.execute("PRAGMA quick_check").fetchall()
    result = "; ".join(str(r[0]) for r in rows[:5])
    return "ok" if result == "ok" else result


def snapshot_database(live: Path, dest: Path) -> dict[str, Any]:
    """Copy the live database to `dest` with SQLite's online backup API and check the copy.

    The whole copy is one backup step (pages=-1), i.e. one read transaction on the source. In
    WAL mode that reader never blocks the app's writer, and the copy is exactly the last
    committed state when the step began, including frames still in the -wal. A step-wise copy
    would restart every time the app commits, and the app commits every few seconds while
    driving, so on a busy database it might never finish.
    """
    if not live.is_file():
        raise LocalError(f"database {live} does not exist")
    started = time.monotonic()
    # mode=ro: the pusher must never write to (or checkpoint) the app's database.
    uri = "file:" + urllib.parse.quote(str(live.absolute())) + "?mode=ro"
    try:
        src = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise LocalError(f"cannot open database {live}: {exc}") from exc
    try:
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst, pages=-1)
            copied = time.monotonic()
            result = quick_check(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise LocalError(f"snapshot of {live} failed: {exc}") from exc
    finally:
        src.close()
    if result != "ok":
        raise LocalError(f"snapshot of {live} fails PRAGMA quick_check: {result}")
    leftovers = [p for p in (Path(f"{dest}-wal"), Path(f"{dest}-journal")) if p.exists()]
    if any(p.stat().st_size for p in leftovers):
        # Everything must be in the main file before it is compressed, or the backup is short.
        raise LocalError(f"snapshot {dest} left a non-empty journal behind")
    return {
        "copy_seconds": copied - started,
        "check_seconds": time.monotonic() - copied,
        "size": dest.stat().st_size,
    }


def gzip_file(src: Path, dest: Path, level: int, limit: int | None = None) -> tuple[int, str]:
    """Compress src (at most `limit` bytes of it) to dest; return (bytes read, their sha256).

    mtime=0 and no file name in the header make the output depend on the content only, so an
    unchanged database compresses to the same bytes and hash on every run.
    """
    digest = hashlib.sha256()
    read = 0
    with src.open("rb") as fin, dest.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as gz:
            while limit is None or read < limit:
                want = CHUNK if limit is None else min(CHUNK, limit - read)
                chunk = fin.read(want)
                if not chunk:
                    break
                digest.update(chunk)
                gz.write(chunk)
                read += len(chunk)
        raw.flush()
    return read, digest.hexdigest()


def copy_prefix(src: Path, dest: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    read = 0
    with src.open("rb") as fin, dest.open("wb") as fout:
        while read < limit:
            chunk = fin.read(min(CHUNK, limit - read))
            if not chunk:
                break
            digest.update(chunk)
            fout.write(chunk)
            read += len(chunk)
    return read, digest.hexdigest()


# --------------------------------------------------------------------------------------------
# State: what was pushed where, so a repeated run sends nothing new.


class State:
    """{"version": 1, "targets": {"<server>|<deviceId>": {"database": {...}, "logs": {...}}}}

    Keyed by server and device so that pointing the tool at a new server sends everything.
    """

    def __init__(self, path: Path, target: str, ui: Ui) -> None:
        self.path = path
        self.target = target
        self.data: dict[str, Any] = {"version": 1, "targets": {}}
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and isinstance(loaded.get("targets"), dict):
                self.data = loaded
            else:
                ui.warn(f"state file {path} has an unexpected shape; starting afresh")
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # Losing the state only costs a re-upload, so carry on instead of failing the push.
            ui.warn(f"state file {path} unreadable ({exc}); starting afresh")
        entry = self.data["targets"].setdefault(target, {})
        self.entry: dict[str, Any] = entry if isinstance(entry, dict) else {}
        self.data["targets"][target] = self.entry
        for section in ("database", "logs"):
            if not isinstance(self.entry.get(section), dict):
                self.entry[section] = {}

    @property
    def database(self) -> dict[str, Any]:
        return self.entry["database"]

    @property
    def logs(self) -> dict[str, Any]:
        return self.entry["logs"]

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """flock() the lock file for the life of the run. The kernel drops the lock when the
    process dies, so a crashed run (power cut, kill -9) never leaves a stale lock behind."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise LockedError(f"another {PROG} run (pid {holder}) holds {path}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Push


@dataclass
class Upload:
    backup_type: str
    name: str  # the file name sent in the URL
    path: Path  # the (compressed) file to send
    size: int
    sha256: str


class Pusher:
    def __init__(self, cfg: Config, client: Client, state: State, work: Path, ui: Ui) -> None:
        self.cfg = cfg
        self.client = client
        self.state = state
        self.work = work
        self.ui = ui
        self.failures: list[PushError] = []
        self.stored = 0
        self.unchanged = 0
        self.bytes_sent = 0

    def record_failure(self, exc: PushError) -> None:
        self.ui.error(str(exc))
        self.failures.append(exc)

    def upload(self, up: Upload) -> dict[str, Any]:
        """PUT the file, retrying transient failures, and verify what the server stored."""
        path = (
            f"/api/v1/backups/{urllib.parse.quote(self.cfg.device_id, safe='')}/{up.backup_type}/"
            f"{urllib.parse.quote(up.name, safe='')}"
        )
        headers = {
            "X-Content-SHA256": up.sha256,
            "Content-Type": "application/gzip"
            if up.name.endswith(".gz")
            else "application/octet-stream",
        }
        what = f"upload {up.backup_type}/{up.name}"
        progress = self.ui.progress(f"{up.backup_type}/{up.name}", up.size)

        def attempt(n: int) -> Response:
            if n > 1:
                # The previous attempt may have been stored even though we never saw the 201
                # (connection lost after the body was sent). Uploading again would leave two
                # copies, so look for our digest first.
                existing = self.find_existing(up)
                if existing is not None:
                    return Response(201, {"x-found-existing": "1"}, json.dumps(existing).encode())
            progress.done = 0
            progress.started = time.monotonic()
            with up.path.open("rb") as body:
                return self.client.request(
                    "PUT", path, headers=headers, body=body, body_size=up.size, progress=progress
                )

        try:
            resp = self.client.with_retries(what, attempt)
        finally:
            elapsed = progress.finish()
        check_status(resp, what, (200, 201))
        stored = resp.json()
        if not isinstance(stored, dict):
            raise VerifyError(f"{what}: the server's answer is not a JSON object")
        if stored.get("sha256") != up.sha256:
            raise VerifyError(
                f"{what}: the server stored sha256 {stored.get('sha256')!r}, "
                f"but the local file has {up.sha256}"
            )
        if stored.get("size") not in (None, up.size):
            raise VerifyError(
                f"{what}: the server stored {stored.get('size')} bytes, not {up.size}"
            )
        self.stored += 1
        if resp.headers.get("x-found-existing"):
            self.ui.info(
                f"{up.backup_type}/{up.name} was stored by an attempt whose answer was lost: "
                f"{stored.get('name')} (id {stored.get('id')}), sha256 verified"
            )
            return stored
        self.bytes_sent += up.size
        rate = up.size / elapsed if elapsed > 0 else 0.0
        self.ui.info(
            f"stored {up.backup_type}/{up.name}: {human_bytes(up.size)} in {elapsed:.2f}s "
            f"({human_bytes(rate)}/s) as {stored.get('name')} (id {stored.get('id')}), "
            "sha256 verified"
        )
        return stored

    def find_existing(self, up: Upload) -> dict[str, Any] | None:
        # One plain request, no retries of its own: this runs inside the upload's retry loop,
        # and a TransientError here simply counts as that attempt failing.
        backups = self.client.list_backups(up.backup_type, retry=False)
        for backup in backups:
            if backup.get("sha256") == up.sha256 and backup.get("size") in (None, up.size):
                return backup
        return None

    def push_database(self) -> None:
        live = Path(self.cfg.db)
        stem = live.name[:-3] if live.name.endswith(".db") else live.name
        snap = self.work / f"{stem}.db"
        info = snapshot_database(live, snap)
        gz = self.work / f"{stem}.db.gz"
        started = time.monotonic()
        raw_size, raw_sha = gzip_file(snap, gz, self.cfg.compress_level)
        snap.unlink()
        sha = sha256_file(gz)
        size = gz.stat().st_size
        self.ui.info(
            f"snapshot of {live}: {human_bytes(raw_size)} in {info['copy_seconds']:.2f}s, "
            f"quick_check ok in {info['check_seconds']:.2f}s; gzip to {human_bytes(size)} "
            f"in {time.monotonic() - started:.2f}s"
        )
        key = str(live.absolute())
        previous = self.state.database.get(key)
        if isinstance(previous, dict) and previous.get("sha256") == sha:
            self.unchanged += 1
            self.ui.info(
                f"database {live.name} unchanged since the push at {previous.get('pushedAt')} "
                f"(backup id {previous.get('backupId')}); not sent again"
            )
            return
        stored = self.upload(Upload("database", f"{stem}.db.gz", gz, size, sha))
        self.state.database[key] = {
            "sha256": sha,
            "rawSha256": raw_sha,
            "size": size,
            "backupId": stored.get("id"),
            "storedName": stored.get("name"),
            "pushedAt": utc_now(),
        }
        self.state.save()
        gz.unlink()

    def log_files(self) -> list[tuple[str, Path]]:
        root = Path(self.cfg.logs)
        if not root.is_dir():
            raise LocalError(f"logs directory {root} does not exist")
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            # Hidden files and directories are editor/rotation leftovers, not logs.
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.startswith(".") or path.is_symlink() or not path.is_file():
                    continue
                found.append((path.relative_to(root).as_posix(), path))
        return found

    def push_logs(self) -> None:
        files = self.log_files()
        seen = set()
        pushed_hashes = {
            e.get("rawSha256") for e in self.state.logs.values() if isinstance(e, dict)
        }
        for rel, path in files:
            seen.add(rel)
            try:
                self.push_log(rel, path, pushed_hashes)
            except (RejectedError, VerifyError, LocalError) as exc:
                # One bad file must not stop the others; the exit code still reports it.
                self.record_failure(exc)
        # Forget files that rotated away, so the state file does not grow forever.
        gone = [rel for rel in self.state.logs if rel not in seen]
        if gone:
            for rel in gone:
                del self.state.logs[rel]
            self.state.save()

    def push_log(self, rel: str, path: Path, pushed_hashes: set[Any]) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return  # rotated away since the directory was listed; the next run sees its heir
        except OSError as exc:
            raise LocalError(f"log {path}: {exc.strerror}") from exc
        previous = self.state.logs.get(rel)
        previous = previous if isinstance(previous, dict) else {}
        if previous.get("size") == st.st_size and previous.get("mtimeNs") == st.st_mtime_ns:
            self.unchanged += 1
            return  # cheap path: no need to even read the file
        flat = rel.replace("/", "_")
        already_compressed = flat.endswith(COMPRESSED_SUFFIXES)
        name = flat if already_compressed else f"{flat}.gz"
        out = self.work / name
        try:
            # Read only the bytes that existed at stat() time: the app may be appending, and
            # the state must describe exactly what was sent.
            if already_compressed:
                _, raw_sha = copy_prefix(path, out, st.st_size)
            else:
                _, raw_sha = gzip_file(path, out, self.cfg.compress_level, limit=st.st_size)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LocalError(f"log {path}: {exc.strerror}") from exc
        record = {"size": st.st_size, "mtimeNs": st.st_mtime_ns, "rawSha256": raw_sha}
        if previous.get("rawSha256") == raw_sha or raw_sha in pushed_hashes:
            # Touched but not changed, or a rotated copy (app.log -> app.log.1) of content
            # already sent: remember the new size/mtime so the next run skips it cheaply.
            out.unlink()
            self.state.logs[rel] = {**previous, **record}
            self.state.save()
            self.unchanged += 1
            return
        sha = sha256_file(out)
        stored = self.upload(Upload("logs", name, out, out.stat().st_size, sha))
        out.unlink()
        self.state.logs[rel] = {
            **record,
            "sha256": sha,
            "backupId": stored.get("id"),
            "storedName": stored.get("name"),
            "pushedAt": utc_now(),
        }
        pushed_hashes.add(raw_sha)
        self.state.save()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def prepare_state_dir(cfg: Config) -> Path:
    state_dir = Path(cfg.state_dir) if cfg.state_dir else default_state_dir()
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UsageError(f"cannot create state directory {state_dir}: {exc.strerror}") from exc
    return state_dir


def cmd_push(cfg: Config, ui: Ui) -> int:
    validate_config(cfg, need_db=True)
    state_dir = prepare_state_dir(cfg)
    with exclusive_lock(state_dir / "lock"):
        client = Client(cfg, ui)
        wait_for_server(client, cfg, ui)
        state = State(state_dir / "state.json", f"{cfg.server.rstrip('/')}|{cfg.device_id}", ui)
        # Snapshots and compressed copies live under the state directory, not /tmp: /tmp may
        # be a small tmpfs, and the state dir is on the same disk as the database. Whatever a
        # crashed run left there is ours (we hold the lock), so clear it first.
        work = state_dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        pusher = Pusher(cfg, client, state, work, ui)
        started = time.monotonic()
        try:
            if cfg.db:
                try:
                    pusher.push_database()
                except (RejectedError, VerifyError, LocalError) as exc:
                    pusher.record_failure(exc)
            if cfg.logs:
                try:
                    pusher.push_logs()
                except LocalError as exc:
                    pusher.record_failure(exc)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ui.info(
            f"done in {time.monotonic() - started:.1f}s: {pusher.stored} stored "
            f"({human_bytes(pusher.bytes_sent)}), {pusher.unchanged} unchanged, "
            f"{len(pusher.failures)} failed"
        )
        return pusher.failures[0].exit_code if pusher.failures else EXIT_OK


# --------------------------------------------------------------------------------------------
# Restore and list


def same_path(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def newest(backups: list[dict[str, Any]]) -> dict[str, Any]:
    # The server lists newest first; sorting again costs nothing and does not depend on it.
    return max(backups, key=lambda b: (str(b.get("receivedAt", "")), _as_int(b.get("id"))))


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def check_restore_destination(dest: Path, live_db: str) -> None:
    if live_db and same_path(dest, Path(live_db)):
        raise RefusedError(f"{dest} is the live database ({live_db}); restore elsewhere")
    for path in (dest, Path(f"{dest}-wal"), Path(f"{dest}-shm"), Path(f"{dest}-journal")):
        if path.exists() or path.is_symlink():
            # A stale -wal next to a fresh database would be replayed into it by SQLite.
            raise RefusedError(f"{path} already exists; restore never overwrites a file")
    if not dest.parent.is_dir():
        raise UsageError(f"directory {dest.parent} does not exist")


def cmd_restore(cfg: Config, ui: Ui, args: argparse.Namespace) -> int:
    validate_config(cfg, need_db=False)
    dest = Path(args.to).expanduser().absolute()
    check_restore_destination(dest, cfg.db)
    client = Client(cfg, ui)
    wait_for_server(client, cfg, ui)
    backups = client.list_backups("database")
    if args.id is not None:
        chosen = next((b for b in backups if b.get("id") == args.id), None)
        if chosen is None:
            raise RejectedError(f"no database backup with id {args.id} for {cfg.device_id}")
    else:
        if not backups:
            raise RejectedError(f"the server holds no database backup for {cfg.device_id}")
        chosen = newest(backups)
    backup_id = chosen.get("id")
    listed_sha = chosen.get("sha256")
    if not isinstance(backup_id, int) or not isinstance(listed_sha, str):
        raise RejectedError(f"the listing entry {chosen!r} has no id or sha256")
    ui.info(
        f"restoring backup id {backup_id} ({chosen.get('name')}, received "
        f"{chosen.get('receivedAt')}, {human_bytes(_as_int(chosen.get('size')))}) to {dest}"
    )
    # Temp files in the destination directory: the final os.link() must not cross filesystems.
    download = dest.with_name(f".{dest.name}.download-{os.getpid()}")
    unpacked = dest.with_name(f".{dest.name}.restore-{os.getpid()}")
    try:
        fetch_backup(client, ui, backup_id, listed_sha, download)
        with download.open("rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        if compressed:
            gunzip_file(download, unpacked)
            download.unlink()
        else:
            os.replace(download, unpacked)
        verify_sqlite_file(unpacked)
        with unpacked.open("rb+") as f:
            os.fsync(f.fileno())
        try:
            # link() fails if dest appeared meanwhile: no window in which we could overwrite.
            os.link(unpacked, dest)
        except FileExistsError as exc:
            raise RefusedError(f"{dest} appeared during the restore; not overwritten") from exc
        fsync_dir(dest.parent)
    finally:
        for tmp in (download, unpacked):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    ui.info(f"restored {dest}: {human_bytes(dest.stat().st_size)}, sha256 verified, quick_check ok")
    return EXIT_OK


def fetch_backup(client: Client, ui: Ui, backup_id: int, listed_sha: str, out: Path) -> None:
    path = f"/api/v1/backups/{backup_id}"
    progress = ui.progress(f"backup {backup_id}", 0)
    holder: dict[str, Response] = {}

    def attempt(_n: int) -> Response:
        progress.done = 0
        with out.open("wb") as sink:
            resp = client.request("GET", path, sink=sink, progress=progress)
            sink.flush()
        holder["resp"] = resp
        return resp

    try:
        resp = client.with_retries(f"download backup {backup_id}", attempt)
    finally:
        progress.finish()
    check_status(resp, f"download backup {backup_id}", (200,))
    size = out.stat().st_size
    expected_len = resp.headers.get("content-length")
    if expected_len is not None and expected_len.isdigit() and int(expected_len) != size:
        raise VerifyError(f"backup {backup_id}: got {size} bytes, Content-Length {expected_len}")
    actual = sha256_file(out)
    header_sha = resp.headers.get("x-content-sha256", "").strip().lower()
    if not header_sha:
        raise VerifyError(f"backup {backup_id}: the server sent no X-Content-SHA256 header")
    if actual != header_sha:
        raise VerifyError(f"backup {backup_id}: sha256 {actual} differs from header {header_sha}")
    if actual != listed_sha.lower():
        raise VerifyError(f"backup {backup_id}: sha256 {actual} differs from listing {listed_sha}")


def gunzip_file(src: Path, dest: Path) -> None:
    try:
        with gzip.open(src, "rb") as fin, dest.open("wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
    except (OSError, EOFError) as exc:
        raise VerifyError(f"the downloaded backup does not decompress: {exc}") from exc


def verify_sqlite_file(path: Path) -> None:
    with path.open("rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            raise VerifyError("the backup is not an SQLite database")
    # immutable=1: read the file as it is, without creating -wal/-shm files next to it.
    uri = "file:" + urllib.parse.quote(str(path)) + "?immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            result = quick_check(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise VerifyError(f"the restored database cannot be read: {exc}") from exc
    if result != "ok":
        raise VerifyError(f"the restored database fails PRAGMA quick_check: {result}")


def cmd_list(cfg: Config, ui: Ui, args: argparse.Namespace) -> int:
    validate_config(cfg, need_db=False)
    client = Client(cfg, ui)
    wait_for_server(client, cfg, ui)
    backups = client.list_backups(None if args.type == "all" else args.type)
    print(f"{'id':>6}  {'type':<8}  {'received':<20}  {'size':>10}  name")
    for b in backups:
        print(
            f"{b.get('id')!s:>6}  {b.get('type')!s:<8}  {b.get('receivedAt')!s:<20}  "
            f"{human_bytes(_as_int(b.get('size'))):>10}  {b.get('name')}"
        )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Command line


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file (see below)")
    parser.add_argument("--server", metavar="URL", help="companion base URL, e.g. http://srv:8000")
    parser.add_argument("--key-file", dest="key_file", metavar="F", help="file holding the key")
    parser.add_argument("--device-id", dest="device_id", metavar="ID", help="this car's device id")
    parser.add_argument("--db", metavar="PATH", help="the app's live SQLite database")
    parser.add_argument("--state-dir", dest="state_dir", metavar="DIR", help="state and lock dir")
    parser.add_argument("--timeout", type=float, metavar="S", help="per-request timeout (30)")
    parser.add_argument(
        "--ping-timeout", dest="ping_timeout", type=float, metavar="S", help="ping timeout (3)"
    )
    parser.add_argument(
        "--wait", type=float, metavar="S", help="keep trying the ping for S seconds (0)"
    )
    parser.add_argument("--retries", type=int, metavar="N", help="retries per request (5)")
    parser.add_argument("--backoff", type=float, metavar="S", help="first retry delay (1)")
    parser.add_argument("--ca-file", dest="ca_file", metavar="F", help="CA bundle for https")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("--debug", action="store_true", help="print tracebacks")


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    fmt = argparse.RawDescriptionHelpFormatter
    push = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=fmt,
        description=(
            "Push a consistent snapshot of the car's SQLite database and the log files\n"
            "that changed to the chi-companion server.\n\n"
            "commands:\n"
            f"  {PROG} [push] [options]          snapshot + upload (the default)\n"
            f"  {PROG} restore --latest --to P   download, verify and unpack a database backup\n"
            f"  {PROG} list [--type T]           list this device's backups on the server\n"
            "options may come before or after the command."
        ),
        epilog=CONFIG_SEARCH_HELP + "\n" + EXIT_CODES_HELP,
    )
    add_common_options(push)
    push.add_argument("--logs", metavar="DIR", help="directory of log files to push")
    push.add_argument(
        "--compress-level", dest="compress_level", type=int, metavar="N", help="gzip level (6)"
    )
    push.add_argument(
        "--limit-rate",
        dest="limit_rate",
        type=int,
        metavar="BYTES",
        help="upload at most BYTES per second (0 = unlimited)",
    )
    push.add_argument("--version", action="version", version=f"{PROG} {VERSION}")

    restore = argparse.ArgumentParser(
        prog=f"{PROG} restore",
        formatter_class=fmt,
        description=(
            "Download a database backup of this device, check its sha256 (header and\n"
            "listing), gunzip it and run PRAGMA quick_check, then create --to.\n"
            "Never overwrites a file and refuses the live database path (--db / config db)."
        ),
        epilog=CONFIG_SEARCH_HELP + "\n" + EXIT_CODES_HELP,
    )
    add_common_options(restore)
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--latest", action="store_true", help="the newest database backup")
    which.add_argument("--id", type=int, metavar="N", help="the backup with this id")
    restore.add_argument("--to", required=True, metavar="PATH", help="new file to create")

    lister = argparse.ArgumentParser(
        prog=f"{PROG} list",
        formatter_class=fmt,
        description="List this device's backups on the server, newest first.",
        epilog=EXIT_CODES_HELP,
    )
    add_common_options(lister)
    lister.add_argument("--type", choices=(*BACKUP_TYPES, "all"), default="all")
    return {"push": push, "restore": restore, "list": lister}


def _on_sigterm(signum: int, _frame: object) -> NoReturn:
    raise Interrupted(signum)


def split_command(
    argv: list[str], parsers: dict[str, argparse.ArgumentParser]
) -> tuple[str, list[str]]:
    """The subcommand and the other arguments, wherever the subcommand stands among the
    options: ``--config F list`` is ``list --config F``. Values of options are skipped, so
    ``--config list`` still names a config file called "list". No subcommand means push."""
    takes_value = {
        opt: action.nargs != 0
        for parser in parsers.values()
        for action in parser._actions
        for opt in action.option_strings
    }
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--" or not token.startswith("-") or token == "-":
            if token in parsers:
                return token, argv[:i] + argv[i + 1 :]
            break  # the first positional is not a command: argparse says what is wrong
        name, has_value = token.split("=", 1)[0], "=" in token
        # argparse also takes an unambiguous prefix of a long option (--conf for --config).
        matches = [opt for opt in takes_value if opt.startswith(name)] if name[1:2] == "-" else []
        option = name if name in takes_value else (matches[0] if len(matches) == 1 else None)
        i += 2 if option is not None and takes_value[option] and not has_value else 1
    return "push", argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = build_parsers()
    command, argv = split_command(argv, parsers)
    parser = parsers[command]
    args = parser.parse_args(argv)
    ui = Ui(quiet=args.quiet)
    # SIGTERM (systemd stopping the unit, the dispatcher timing out) unwinds like Ctrl-C, so
    # the finally blocks remove temp files and the lock is released.
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cfg = load_config(args)
        if command == "push":
            return cmd_push(cfg, ui)
        if command == "restore":
            return cmd_restore(cfg, ui, args)
        return cmd_list(cfg, ui, args)
    except PushError as exc:
        for line in str(exc).splitlines():
            ui.error(line)
        if args.debug:
            traceback.print_exc()
        return exc.exit_code
    except (KeyboardInterrupt, Interrupted):
        ui.error("interrupted; nothing was recorded for the file in progress")
        return EXIT_INTERRUPTED
    except OSError as exc:
        # Local I/O trouble outside the places that expect it (disk full in the state dir, a
        # file that vanished): a local problem, not a bug.
        ui.error(f"local I/O error: {exc}")
        if args.debug:
            traceback.print_exc()
        return EXIT_LOCAL
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        ui.error(f"internal error: {exc!r} (rerun with --debug for the traceback)")
        if args.debug:
            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
