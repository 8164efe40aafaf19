"""Per-key token buckets: a device may do a thing ``burst`` times at once and ``per_hour``
times an hour on average; beyond that it is told to come back later (429 + Retry-After)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .errors import RateLimited


class RateLimit:
    def __init__(
        self,
        what: str,
        per_hour: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.rate = per_hour / 3600.0  # tokens per second
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> None:
        """Use one token of ``key``'s bucket, or raise RateLimited saying when one is free."""
        with self._lock:
            tokens, now = self._refilled(key)
            self._buckets[key] = (tokens - 1.0, now)

    def check(self, key: str) -> None:
        """Raise RateLimited if ``key``'s bucket is empty, without using a token."""
        with self._lock:
            self._refilled(key)

    def _refilled(self, key: str) -> tuple[float, float]:
        """``key``'s tokens now, or RateLimited when fewer than one; hold the lock."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise RateLimited(
                f"{key} made too many {self.what} (at most {int(self.burst)} at once, then "
                f"{self.rate * 3600:g} per hour); retry in {wait} s",
                retry_after=wait,
            )
        return tokens, now
