"""The version comes from one place, chi_companion.__version__: the Pi push tool's copy (it
cannot import the package), the OpenAPI spec, the changelog and every document that names the
version it describes must agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import chi_companion
import yaml
from chi_companion import push_client

REPO = Path(__file__).resolve().parent.parent
VERSION = chi_companion.__version__
DESCRIBES = re.compile(r"chi-companion \**(\d+\.\d+\.\d+)\**")


def test_push_tool_and_spec_carry_the_package_version() -> None:
    assert push_client.VERSION == VERSION
    spec = yaml.safe_load((REPO / "service/src/chi_companion/openapi.yaml").read_text())
    assert spec["info"]["version"] == VERSION


def test_changelog_has_a_section_for_the_version() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(VERSION)}\]", changelog, re.M)


def test_every_document_describes_the_current_version() -> None:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    docs += sorted(REPO.glob("roles/*/README.md"))
    named = {str(path.relative_to(REPO)): set(DESCRIBES.findall(path.read_text())) for path in docs}
    wrong = {doc: versions for doc, versions in named.items() if versions - {VERSION}}
    assert not wrong, f"documents naming another version than {VERSION}: {wrong}"
    assert sum(1 for versions in named.values() if versions) >= 5
