"""The rules that make slow and greedy clients cost the service nothing (issue 15 item 2).

The server's worker (core/server.py) applies them; this module holds the rules alone so they
can be read, and changed, without reading gunicorn:

- ``HeadReader``: a connection's request line and headers are collected here by the worker's
  event loop, without a request thread, until they are complete. They must arrive within
  ``server.header_timeout_seconds`` of connecting, and no gap between bytes may exceed
  ``server.request_timeout_seconds``. Only a complete head is handed to a request thread.
- ``PacedUnreader``: the request thread's reader. A body must arrive at
  ``server.min_body_bytes_per_second`` on average once ``server.body_grace_seconds`` of
  waiting are used up. Only time spent waiting for the client counts: a request the server
  itself is slow to read (the database busy, a slow disk) is never the client's fault.
- ``SourceLimit``: at most ``server.max_connections_per_source`` connections from one address.
  A refused connection gets 429, which the Pi retries like a 5xx; a 5xx would say the server
  is broken, and it is not.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from gunicorn.http.unreader import SocketUnreader

log = logging.getLogger(__name__)

# gunicorn's own limits allow heads of up to ~800 KiB; no client of this API sends more than a
# few hundred bytes. A head still growing past this is refused (431) without a thread.
MAX_HEAD_BYTES = 64 * 1024
HEAD_READ_BYTES = 16 * 1024
# When a head ends: CRLF CRLF, or bare LF LF (gunicorn's parser then judges it), so a request
# with bare line feeds is refused at once instead of waiting for the deadline.
HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
# The shortest wait for a body byte once the client's allowance is used up: data already
# waiting in the kernel (the server was the slow one) is still taken.
LAST_CHANCE_SECONDS = 0.01


def error_response(status: int, reason: str, detail: str | None, extra: str = "") -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 answer with the API's JSON error body."""
    body = json.dumps({"error": reason.lower(), "detail": detail or None}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


HEADER_TIMEOUT_RESPONSE = error_response(
    408, "Request Timeout", "the request line and headers did not arrive in time"
)
HEAD_TOO_LARGE_RESPONSE = error_response(
    431, "Request Header Fields Too Large", f"the headers exceed {MAX_HEAD_BYTES} bytes"
)


def too_many_response(limit: int) -> bytes:
    return error_response(
        429,
        "Too Many Requests",
        f"at most {limit} connections at once from one address",
        "Retry-After: 1\r\n",
    )


class HeadReader:
    """A connection's request head, collected as it arrives; deadlines in monotonic time."""

    __slots__ = ("buf", "deadline", "idle_timeout", "last_byte")

    def __init__(self, now: float, header_timeout: float, idle_timeout: float) -> None:
        self.buf = bytearray()
        self.deadline = now + header_timeout
        self.idle_timeout = idle_timeout
        self.last_byte = now

    def feed(self, data: bytes, now: float) -> bool:
        """Add bytes just received; True once the head is complete."""
        # Only the new bytes and the three before them can hold an end not seen yet.
        start = max(0, len(self.buf) - 3)
        self.buf += data
        self.last_byte = now
        return any(self.buf.find(end, start) >= 0 for end in HEAD_ENDS)

    def too_large(self) -> bool:
        return len(self.buf) > MAX_HEAD_BYTES

    def expired(self, now: float) -> bool:
        return now >= self.deadline or now - self.last_byte >= self.idle_timeout


class BodyPace:
    """The minimum body rate: ``rate`` bytes per second of waiting, after ``grace`` seconds."""

    __slots__ = ("grace", "rate")

    def __init__(self, rate: float, grace: float) -> None:
        self.rate = rate
        self.grace = grace

    def allowance(self, received: int, waited: float) -> float:
        """Seconds the client may still take for its next bytes (<= 0: it is too slow)."""
        if self.rate <= 0:
            return float("inf")
        return self.grace + received / self.rate - waited


class PacedUnreader(SocketUnreader):  # type: ignore[misc]
    """gunicorn's socket reader with deadlines: the head's while it is being parsed (its
    bytes normally come from the buffer the event loop filled), then the body's pace.

    Every receive sets its own timeout, then the socket gets the idle timeout back, so writes
    of the answer keep a timeout too."""

    def __init__(
        self,
        sock: Any,
        idle_timeout: float,
        head_deadline: float,
        pace: BodyPace,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(sock)
        self.idle_timeout = idle_timeout
        self.head_deadline = head_deadline
        self.pace = pace
        self.clock = clock
        self.in_body = False
        self.received = 0
        self.waited = 0.0

    def start_body(self) -> None:
        """The head is parsed; from now on the body's pace applies. Bytes that came with the
        head count as received."""
        self.in_body = True
        self.received = len(self.buf.getvalue())
        self.waited = 0.0

    def chunk(self, size_hint: int | None = None) -> bytes:
        started = self.clock()
        if self.in_body:
            allowed = self.pace.allowance(self.received, self.waited)
        else:
            allowed = self.head_deadline - started
        timeout = min(self.idle_timeout, max(allowed, LAST_CHANCE_SECONDS))
        self.sock.settimeout(timeout)
        try:
            data: bytes = super().chunk(size_hint)
        except TimeoutError:
            if allowed < self.idle_timeout:
                what = "body arrived slower than the minimum rate" if self.in_body else "head"
                raise TimeoutError(f"the {what} did not arrive in time") from None
            raise
        finally:
            self.waited += self.clock() - started
            self.sock.settimeout(self.idle_timeout)
        self.received += len(data)
        return data


class SourceLimit:
    """Open connections per client address. Used from the worker's event loop only."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    def admit(self, source: str, limit: int) -> bool:
        if limit and self.open[source] >= limit:
            return False
        self.open[source] += 1
        return True

    def release(self, source: str) -> None:
        self.open[source] -= 1
        if self.open[source] <= 0:
            del self.open[source]


class ThrottledLog:
    """Counts refusals per address and logs them at most once per ``every`` seconds, so an
    attacker opening thousands of connections cannot flood the log."""

    def __init__(self, what: str, every: float = 60.0) -> None:
        self.what = what
        self.every = every
        self.counts: Counter[str] = Counter()
        self.next_log = 0.0

    def note(self, source: str, now: float) -> None:
        self.counts[source] += 1
        if now >= self.next_log:
            self.flush(now)

    def tick(self, now: float) -> None:
        if self.counts and now >= self.next_log:
            self.flush(now)

    def flush(self, now: float) -> None:
        for source, count in self.counts.items():
            log.warning("%s: %d from %s", self.what, count, source)
        self.counts.clear()
        self.next_log = now + self.every
