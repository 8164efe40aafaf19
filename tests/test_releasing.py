"""The previous release is named the same way everywhere: the commit the upgrade scenario
installs (roles/companion/molecule/upgrade/prepare.yml), the one docs/releasing.md and
CHANGELOG.md record, and what that commit really shipped (read from git: the repository is a
full clone, in CI too)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import chi_companion
import yaml

REPO = Path(__file__).resolve().parent.parent
PREPARE = REPO / "roles/companion/molecule/upgrade/prepare.yml"


def scenario_commit() -> str:
    plays = yaml.safe_load(PREPARE.read_text())
    commit = plays[0]["vars"]["__upgrade_from_commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit), commit
    return str(commit)


def test_the_docs_record_the_commit_the_scenario_installs() -> None:
    commit = scenario_commit()
    assert commit in (REPO / "docs/releasing.md").read_text()
    # The changelog names it by an abbreviation.
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"## \[0\.1\.0\][^\n]*\n\nFirst version: commit `{commit[:8]}`", changelog)


def test_that_commit_shipped_the_previous_version() -> None:
    commit = scenario_commit()
    init = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:service/src/chi_companion/__init__.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r'^__version__ = "0\.1\.0"$', init, re.M)
    assert chi_companion.__version__ != "0.1.0"


def test_the_doc_block_the_scenario_runs_is_there() -> None:
    doc = (REPO / "docs/releasing.md").read_text()
    block = re.search(r"<!-- doc-test: upgrade-from-0\.1\.0 -->\n```console\n(.*?)\n```", doc, re.S)
    assert block
    commands = [line for line in block.group(1).splitlines() if line.startswith("chi-srv-01# ")]
    assert any("mv /srv/chi-companion /mnt/raid5/chi-companion" in c for c in commands)
