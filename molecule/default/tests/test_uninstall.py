"""Uninstall as docs/setup-guide.md "Uninstall" says: `<role>_state: absent` for the three roles
removes what they installed and keeps the data (testinfra, `molecule verify`; runs after
test_site.py and leaves the server uninstalled: converge again before another verify).
"""

from __future__ import annotations

import os
import re
import subprocess

import testinfra
from site_scenario import INVENTORY, REPO

ANSI = re.compile(r"\x1b\[[0-9;]*m")

REMOVED = [
    # ollama
    "/etc/systemd/system/ollama.service",
    "/etc/systemd/system/ollama.service.d",
    "/usr/local/bin/ollama",
    "/usr/local/lib/ollama",
    # companion
    "/etc/systemd/system/chi-companion.service",
    "/etc/systemd/system/chi-companion-firewall.service",
    "/etc/systemd/system/chi-companion-db-backup.service",
    "/etc/systemd/system/chi-companion-db-backup.timer",
    "/etc/chi-companion",
    "/opt/chi-companion",
    "/usr/local/bin/chi-companion",
    # nas_replication
    "/etc/cron.d/chi-nas-replication",
    "/usr/local/bin/chi-nas-replicate",
]
KEPT = [
    "/srv/chi-companion/companion.db",
    "/srv/chi-companion/backups",
    "/srv/chi-companion/db-backups",
    "/srv/ollama/models",
    "/etc/chi-nas-replication/id_ed25519",
    "/srv/chi-companion/replication/status.json",
]


def uninstall() -> str:
    result = subprocess.run(
        [
            "ansible-playbook",
            "--inventory",
            INVENTORY,
            str(REPO / "playbooks" / "site.yml"),
            # The server only: a NAS is never changed by an uninstall.
            "--limit",
            "server",
            "--extra-vars",
            '{"nas_replication_state": "absent", "companion_state": "absent",'
            ' "ollama_state": "absent"}',
        ],
        env=dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, output[-3000:]
    return output


def test_state_absent_removes_the_install_and_keeps_the_data() -> None:
    server = testinfra.get_host("ansible://server", ansible_inventory=INVENTORY)
    uninstall()
    for path in REMOVED:
        assert not server.file(path).exists, path
    for path in KEPT:
        assert server.file(path).exists, path
    for unit in ("ollama", "chi-companion", "chi-companion-firewall"):
        assert not server.service(unit).is_running, unit
    assert server.run("nft list table inet chi_companion").rc != 0

    # Removing again changes nothing.
    recap = re.search(
        r"server\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", uninstall()
    )
    assert recap and recap.groups() == ("0", "0")
