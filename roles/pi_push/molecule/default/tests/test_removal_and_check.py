"""Check mode and pi_push_state=absent on the pi host (runs after test_pi_push.py).

Each test runs playbooks/pi.yml, the production playbook, against the scenario's inventory. The
order matters: converged --check, then absent (twice), then --check on the host without the
role, then a normal run that must bring everything back.
"""

from __future__ import annotations

import re
from typing import Any

from scenario import (
    BIN,
    CONFIG,
    DB,
    HOOK,
    KEY_FILE,
    LOGS,
    REPO,
    SERVICE,
    STATE_DIR,
    TIMER,
    UNIT,
    WIFI_SERVICE,
    run_playbook,
    sqlite_query,
    unit_props,
)

testinfra_hosts = ["ansible://pi"]

PLAYBOOK = REPO / "playbooks/pi.yml"
INSTALLED = [
    BIN,
    CONFIG,
    KEY_FILE,
    STATE_DIR,
    HOOK,
    f"/etc/systemd/system/{TIMER}",
    f"/etc/systemd/system/{SERVICE}",
    f"/etc/systemd/system/{WIFI_SERVICE}",
]


def recap(output: str) -> dict[str, int]:
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    match = re.search(r"^pi\s+:\s+(.*)$", plain, re.MULTILINE)
    assert match, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def test_check_mode_on_the_converged_host_changes_nothing(vault_key: str) -> None:
    rc, output = run_playbook(PLAYBOOK, "--check", "--diff")
    assert rc == 0, output[-3000:]
    counts = recap(output)
    assert (counts["changed"], counts["failed"]) == (0, 0), output[-3000:]
    assert vault_key not in output


def test_the_key_never_reaches_the_output_even_when_it_changes(host: Any, vault_key: str) -> None:
    """A changed key file is written with --diff and -v, and still not shown."""
    host.run(f"echo stale-key-stale-key > {KEY_FILE}")
    rc, output = run_playbook(PLAYBOOK, "--diff", "-v", "--tags", "pi_push_configure")
    assert rc == 0, output[-3000:]
    assert recap(output)["changed"] == 1, output[-3000:]
    assert vault_key not in output
    assert "stale-key" not in output
    assert host.file(KEY_FILE).content_string == vault_key + "\n"


def test_absent_removes_what_the_role_installed_and_keeps_the_app_data(host: Any) -> None:
    rows = sqlite_query(host, DB, "SELECT count(*) FROM realtime_data")
    rc, output = run_playbook(PLAYBOOK, "--extra-vars", "pi_push_state=absent")
    assert rc == 0, output[-3000:]
    assert recap(output)["changed"] > 0
    for path in INSTALLED:
        assert not host.file(path).exists, path
    for unit in (TIMER, SERVICE, WIFI_SERVICE):
        assert unit_props(host, unit, "LoadState")["LoadState"] == "not-found", unit
    assert sqlite_query(host, DB, "SELECT count(*) FROM realtime_data") == rows
    assert host.file(f"{LOGS}/eclipse-obd.log").exists

    rc, output = run_playbook(PLAYBOOK, "--extra-vars", "pi_push_state=absent")
    assert rc == 0, output[-3000:]
    assert recap(output)["changed"] == 0, "a second removal changes nothing"


def test_check_mode_on_a_host_without_the_role(host: Any, vault_key: str) -> None:
    rc, output = run_playbook(PLAYBOOK, "--check", "--diff")
    assert rc == 0, output[-3000:]
    assert vault_key not in output
    counts = recap(output)
    assert counts["failed"] == 0
    assert counts["changed"] > 0, "check mode reports what a real run would change"
    for path in INSTALLED:
        assert not host.file(path).exists, f"--check must not create {path}"


def test_a_normal_run_brings_everything_back(host: Any) -> None:
    rc, output = run_playbook(PLAYBOOK)
    assert rc == 0, output[-3000:]
    for path in INSTALLED:
        assert host.file(path).exists, path
    timer = host.service(TIMER)
    assert timer.is_enabled
    assert timer.is_running
    run = host.run(f"systemctl start {UNIT}.service")
    assert run.rc == 0, run.stderr
    props = unit_props(host, SERVICE, "Result", "ExecMainStatus")
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0")
