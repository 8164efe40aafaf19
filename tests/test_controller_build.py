"""The companion role's controller-side helper: which wheels it asks pip for a host.

Only the offline parts: the downloads themselves need PyPI and are exercised by the companion
Molecule scenario (a Python 3.11 controller building the wheelhouse for Debian 13's 3.13).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "roles/companion/files/controller_build.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("controller_build", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cb = _load()


def test_platform_tags_cover_every_manylinux_the_host_accepts() -> None:
    tags = cb.platform_tags("x86_64", "2.41")  # Debian 13
    assert tags[0] == "manylinux_2_41_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux_2_5_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert not any("2_42" in tag for tag in tags)


def test_platform_tags_of_an_older_glibc_stop_there() -> None:
    tags = cb.platform_tags("aarch64", "2.12")
    assert tags[0] == "manylinux_2_12_aarch64"
    assert "manylinux2014_aarch64" not in tags  # needs glibc 2.17


def test_download_refuses_malformed_host_facts(tmp_path: Path) -> None:
    pins = tmp_path / "constraints.txt"
    pins.write_text("bottle==0.13.4\n")
    for python, machine, glibc in (("3", "x86_64", "2.41"), ("3.13", "x86 64", "2.41")):
        with pytest.raises(SystemExit, match="unexpected"):
            cb.download_wheelhouse(pins, tmp_path, python, machine, glibc)
    with pytest.raises(SystemExit, match="glibc"):
        cb.download_wheelhouse(pins, tmp_path, "3.13", "x86_64", "musl")


def test_usage_is_printed_for_wrong_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cb.main([str(SCRIPT), "download", "a", "b"]) == 2
    assert "download CONSTRAINTS" in capsys.readouterr().err
