"""docs/architecture.md is how a newcomer finds a behaviour: its module table must name every
module of the package, and nothing that no longer exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "service" / "src" / "chi_companion"
DOC = REPO / "docs" / "architecture.md"


def _modules() -> set[str]:
    """Every module path relative to the package, package markers and __main__ aside."""
    return {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    }


def _documented() -> set[str]:
    """Module paths named in the first cell of the doc's module table rows."""
    named: set[str] = set()
    for line in DOC.read_text().splitlines():
        cells = line.split("|")
        if len(cells) > 2 and line.startswith("| `"):
            named.update(re.findall(r"`([\w/]+\.py)`", cells[1]))
    return named


def test_every_module_has_a_row() -> None:
    missing = sorted(_modules() - _documented())
    assert not missing, f"docs/architecture.md has no row for: {missing}"


def test_no_row_for_a_module_that_is_gone() -> None:
    stale = sorted(_documented() - _modules())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
