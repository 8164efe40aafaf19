"""Which background thread is failing, since when and why, for the ``background`` component
of /health.

A background thread (the analysis workers, the quiet-drive scheduler, the Ollama monitor)
catches every exception so one bad row or one bug cannot kill it silently; what it caught is
recorded here so the operator sees it instead of a service that quietly stopped working.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .clock import now_iso

# Between two failures of the same loop: long enough that a permanent fault costs no CPU,
# short enough that a transient one heals within the minute.
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


@dataclass
class Fault:
    error: str
    since: str
    last: str
    count: int


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}

    def failed(self, component: str, exc: BaseException) -> float:
        """Record a failure; return how long the caller should back off (seconds)."""
        error = f"{type(exc).__name__}: {exc}"[:300]
        now = now_iso()
        with self._lock:
            fault = self._faults.get(component)
            if fault is None:
                fault = self._faults[component] = Fault(error, now, now, 0)
            fault.error, fault.last = error, now
            fault.count += 1
            return min(BACKOFF_MAX_SECONDS, BACKOFF_START_SECONDS * 2 ** min(fault.count - 1, 10))

    def recovered(self, component: str) -> None:
        with self._lock:
            self._faults.pop(component, None)

    def report(self) -> dict[str, Any]:
        with self._lock:
            failing = {
                name: {"error": f.error, "since": f.since, "lastAt": f.last, "failures": f.count}
                for name, f in sorted(self._faults.items())
            }
        if not failing:
            return {"status": "ok"}
        return {
            "status": "degraded",
            "detail": "background work is failing: " + ", ".join(failing),
            "failing": failing,
        }
