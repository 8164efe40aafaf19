"""Prometheus text exposition format 0.0.4, written by hand: a few dozen series do not need
a client library, and every value here is read fresh from the database at scrape time
except the sync latency histogram, which this process observes itself."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

Labels = dict[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class Family:
    """One metric: its HELP, TYPE and samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[str, Labels, float]] = []

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((self.name, labels, value))
        return self

    def add_histogram(
        self, bounds: Sequence[float], counts: Sequence[int], total: float, **labels: str
    ) -> Family:
        """``counts[i]``: observations <= ``bounds[i]`` (cumulative), the last is +Inf."""
        for bound, count in zip([*bounds, math.inf], counts, strict=True):
            le = "+Inf" if math.isinf(bound) else _value(bound)
            self.samples.append((f"{self.name}_bucket", {**labels, "le": le}, count))
        self.samples.append((f"{self.name}_sum", labels, total))
        self.samples.append((f"{self.name}_count", labels, counts[-1]))
        return self

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        lines.extend(f"{n}{_labels(lb)} {_value(v)}" for n, lb, v in self.samples)
        return "\n".join(lines)


def render(families: Iterable[Family]) -> str:
    return "\n".join(f.render() for f in families) + "\n"


class Histogram:
    """A thread-safe cumulative histogram observed in this process."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    self._counts[i] += 1
            self._counts[-1] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


def histogram_of(values: Iterable[float], bounds: Sequence[float]) -> tuple[list[int], float]:
    hist = Histogram(bounds)
    for v in values:
        hist.observe(v)
    return hist.snapshot()
