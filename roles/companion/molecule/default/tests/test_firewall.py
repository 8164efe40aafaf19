"""The port filter outlives nftables' own reload and restart, and the role refuses to add it
beside another firewall manager (testinfra, run by `molecule verify` after test_companion.py).

/etc/nftables.conf starts with `flush ruleset`: a reload or restart of nftables.service drops
every table, ours included, unless the filter unit is re-applied behind it.
"""

from __future__ import annotations

from typing import Any

import pytest
from scenario import PORT, SERVICE, converge

testinfra_hosts = ["ansible://companion"]

FILTER_UNIT = f"{SERVICE}-firewall.service"
TABLE = "inet chi_companion"


def outsider_is_refused(outsider: Any) -> None:
    refused = outsider.run(
        f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://companion:{PORT}/api/v1/health"
    )
    assert refused.rc == 7, f"curl should get 'connection refused', got {refused}"


@pytest.mark.parametrize("action", ["reload", "restart"])
def test_filter_survives_nftables(host: Any, outsider: Any, action: str) -> None:
    # Debian ships nftables.service disabled; an operator who uses it has it running.
    host.run_expect([0], "systemctl start nftables.service")
    result = host.run(f"systemctl {action} nftables.service")
    assert result.rc == 0, result.stderr
    # The flush really happened (the host's own table is back), and ours is back too.
    assert host.run("nft list table inet filter").rc == 0
    # The filter unit's restart is a job of its own, queued behind nftables' (PartOf=); systemctl
    # returns when nftables' job is done, so give the filter's job a moment (seen on trixie).
    table = host.run(
        f"for i in $(seq 50); do nft list table {TABLE} && exit 0; sleep 0.2; done; exit 1"
    )
    assert table.rc == 0, f"table gone after `systemctl {action} nftables`: {table.stderr}"
    assert f"tcp dport {PORT}" in table.stdout
    assert host.service(FILTER_UNIT).is_running
    outsider_is_refused(outsider)


# ufw counts when /etc/ufw/ufw.conf says ENABLED=yes (its unit is active whenever it is
# installed); firewalld when its unit runs. Stand-ins of both, removed afterwards.
STAND_INS = {
    "ufw": (
        "mkdir -p /etc/ufw && printf 'ENABLED=yes\\n' >/etc/ufw/ufw.conf",
        "rm -rf /etc/ufw",
    ),
    "firewalld": (
        "printf '[Service]\\nExecStart=/bin/sleep infinity\\n'"
        " >/etc/systemd/system/firewalld.service"
        " && systemctl daemon-reload && systemctl start firewalld.service",
        "systemctl stop firewalld.service; rm -f /etc/systemd/system/firewalld.service;"
        " systemctl daemon-reload",
    ),
}


@pytest.mark.parametrize("manager", sorted(STAND_INS))
def test_role_refuses_to_filter_beside_another_firewall_manager(host: Any, manager: str) -> None:
    setup, teardown = STAND_INS[manager]
    host.run_expect([0], setup)
    try:
        pid_before = host.check_output(f"systemctl show -p MainPID --value {SERVICE}")
        code, output = converge("--tags", "companion_preflight", timeout=600)
        assert code != 0, output[-3000:]
        assert f"{manager} is active" in output, output[-3000:]
        assert "companion_firewall_enabled: false" in output
        assert host.check_output(f"systemctl show -p MainPID --value {SERVICE}") == pid_before
    finally:
        host.run(teardown)
    assert host.run(f"nft list table {TABLE}").rc == 0
