"""Shared fixtures: a real companion process on 127.0.0.1 with a real data directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.companion_process import Companion


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
