"""The companion role's companion.toml template covers every setting an operator tunes, with the
service's own defaults (the role's Molecule scenario proves the values reach the service).

The template is rendered by ansible-playbook on this machine (a local template task, no host
contacted) from the role's defaults/main.yml and vars/main.yml, then read by the service's own
loader: a setting added to core/config.py without a role variable fails here, not on a server
whose operator finds the role overwriting a hand edit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from chi_companion.core import config

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "roles" / "companion"
# Settings the role leaves out on purpose: keys in clear (it writes their SHA-256 only).
NOT_TEMPLATED = {"operator.api_key"}
# Defaults the role chooses differently from the service, and why (README, "Variables").
ROLE_DEFAULTS = {
    "server.host": "0.0.0.0",  # the Pi is on the LAN; the port filter restricts who reaches it
    "server.threads": 8,
}
DEVICES = [{"id": "chi-eclipse-01", "api_key": "role-config-test-key-0123456789"}]
TUNED = {
    "companion_header_timeout_seconds": 2.5,
    "companion_min_body_bytes_per_second": 0,
    "companion_max_connections_per_source": 64,
    "companion_quotas_backup_bytes_per_device": 2 * 1024**4,
    "companion_quotas_synced_bytes_per_device": 0,
    "companion_analysis_device_queue_share": 0.25,
    "companion_backups_keep_within_days": 1.5,
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """companion.toml rendered with the role's defaults and with TUNED."""
    out = tmp_path_factory.mktemp("role")
    template = str(ROLE / "templates" / "companion.toml.j2")
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [
                {"ansible.builtin.template": {"src": template, "dest": str(out / "defaults.toml")}},
                {
                    "ansible.builtin.template": {"src": template, "dest": str(out / "tuned.toml")},
                    "vars": TUNED,
                },
            ],
        }
    ]
    (out / "play.yml").write_text(json.dumps(play))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "--inventory",
            "localhost,",
            "--extra-vars",
            json.dumps(
                {"companion_devices": DEVICES, "ansible_python_interpreter": sys.executable}
            ),
            str(out / "play.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"defaults": out / "defaults.toml", "tuned": out / "tuned.toml"}


def test_every_setting_has_a_role_variable(rendered: dict[str, Path]) -> None:
    data = tomllib.loads(rendered["defaults"].read_text())
    missing = [
        f"{section}.{f.name}"
        for section, cls in config.SECTIONS.items()
        for f in fields(cls)
        if f"{section}.{f.name}" not in NOT_TEMPLATED and f.name not in data.get(section, {})
    ]
    assert missing == [], "settings the role cannot set (add companion_* variables)"


def test_role_defaults_are_the_services(rendered: dict[str, Path]) -> None:
    loaded = config.load(rendered["defaults"], env={})
    differ = {
        f"{section}.{f.name}": getattr(getattr(loaded, section), f.name)
        for section, cls in config.SECTIONS.items()
        for f in fields(cls)
        if getattr(getattr(loaded, section), f.name) != f.default
    }
    assert differ == ROLE_DEFAULTS


def test_tuned_values_reach_the_loaded_config(rendered: dict[str, Path]) -> None:
    text = rendered["tuned"].read_text()
    # Whole numbers stay integers, fractions are TOML floats.
    assert "header_timeout_seconds = 2.5\n" in text
    assert "max_connections_per_source = 64\n" in text
    loaded = config.load(rendered["tuned"], env={})
    assert loaded.server.header_timeout_seconds == 2.5
    assert loaded.server.min_body_bytes_per_second == 0
    assert loaded.server.max_connections_per_source == 64
    assert loaded.quotas.backup_bytes_per_device == 2 * 1024**4
    assert loaded.quotas.synced_bytes_per_device == 0
    assert loaded.analysis.device_queue_share == 0.25
    assert loaded.backups.keep_within_days == 1.5
