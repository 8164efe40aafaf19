"""Shared fixtures: a real companion process on 127.0.0.1 with a real data directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.companion_process import Companion


def _slow_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 1)) if marker else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest tests first, each followed by a short one. In parallel (make pytest: xdist with
    --maxschedchunk=2 hands out two tests at a time) every long test then starts at once on a
    worker of its own and the short ones fill the rest, instead of a long test starting late
    and holding up the end of the run. Serially the order changes nothing else."""
    slow = sorted((i for i in items if _slow_seconds(i)), key=_slow_seconds, reverse=True)
    rest = [i for i in items if not _slow_seconds(i)]
    ordered: list[pytest.Item] = []
    for item in slow:
        ordered.append(item)
        if rest:
            ordered.append(rest.pop(0))
    items[:] = ordered + rest


@pytest.fixture
def make_companion(tmp_path: Path) -> Iterator[Callable[..., Companion]]:
    started: list[Companion] = []

    def factory(start: bool = True, **overrides: dict[str, Any]) -> Companion:
        base = tmp_path / f"companion{len(started)}"
        base.mkdir()
        comp = Companion(base, overrides)
        started.append(comp)
        return comp.start() if start else comp

    yield factory
    for comp in started:
        comp.stop()


@pytest.fixture
def companion(make_companion: Callable[..., Companion]) -> Companion:
    return make_companion()


@pytest.fixture(scope="module")
def module_companion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Companion]:
    """One server for a module's validation matrix (a process per case only costs time).

    Every case run against it must leave it as it found it (no rows, no files), and says so;
    tests that change state or the process itself (restarts, kill -9) use ``companion``."""
    comp = Companion(tmp_path_factory.mktemp("module")).start()
    yield comp
    comp.stop()
