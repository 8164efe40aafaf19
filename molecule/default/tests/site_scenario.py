"""What the site scenario's test modules share: the inventory, the repository, the device, and
the guides' command blocks (parsed by tests/docblocks.py, the one parser every runner uses)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
REPO = Path(__file__).resolve().parents[3]
DEVICE = "chi-eclipse-01"

# Loaded by path: these tests run from molecule's directory, not as part of the repository's
# test package.
_spec = importlib.util.spec_from_file_location("chi_docblocks", REPO / "tests" / "docblocks.py")
assert _spec and _spec.loader
docblocks = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = docblocks  # dataclasses look their module up there
_spec.loader.exec_module(docblocks)
