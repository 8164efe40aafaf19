"""docs/configuration.md is generated from the config's declarations and must match them."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from chi_companion.core import config_doc
from chi_companion.core.config import SECTIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_reference_is_up_to_date() -> None:
    assert DOC.read_text() == config_doc.render(), (
        "docs/configuration.md differs from the settings in core/config.py; regenerate it: "
        "python -m chi_companion.core.config_doc > docs/configuration.md"
    )


def test_every_setting_is_documented_with_a_description() -> None:
    text = DOC.read_text()
    for name, section in SECTIONS.items():
        for f in fields(section):
            assert f.metadata["desc"].strip(), f"{name}.{f.name} has no description"
            assert f"`{name}.{f.name}`" in text
