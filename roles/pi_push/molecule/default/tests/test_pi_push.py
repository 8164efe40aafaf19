"""Verify the pi_push role on the converged scenario (testinfra, run by `molecule verify`).

Hosts (tests/molecule_rig, bridge chim<slot>-pi, <CHI_RIG_SUBNET> = 172.30.118.0/24 by default):
`companion` (.10) runs the companion role, `pi` (.20) the pi_push role from playbooks/pi.yml with
the test inventory's eclipse_pis group_vars. This controller is .1 and reads the companion's API
directly. The tests here run in file order: the push tests need the units the first ones check.
test_removal_and_check.py runs after this module.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shlex
import time
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from scenario import (
    BIN,
    COMPANION_SERVICE,
    CONFIG,
    DB,
    DEVICE,
    EXIT_UNREACHABLE,
    HOME_CONNECTION,
    HOOK,
    KEY_FILE,
    LOGS,
    REPO,
    SERVICE,
    STATE_DIR,
    TIMER,
    USER,
    WIFI_SERVICE,
    journal_cursor,
    journal_of,
    list_backups,
    sqlite_query,
    unit_journal_since,
    unit_props,
)

testinfra_hosts = ["ansible://pi"]

SQLITE_MAGIC = b"SQLite format 3\x00"


def test_tool_is_the_repository_file(host: Any) -> None:
    tool = host.file(BIN)
    assert (tool.user, tool.group, tool.mode) == ("root", "root", 0o755)
    source = REPO / "service/src/chi_companion/push_client.py"
    assert tool.sha256sum == hashlib.sha256(source.read_bytes()).hexdigest()
    version = host.run(f"{BIN} --version")
    assert version.rc == 0, version.stderr
    assert version.stdout.startswith("chi-companion-push ")


def test_key_file_is_the_vault_key_for_the_app_user_only(host: Any, vault_key: str) -> None:
    key = host.file(KEY_FILE)
    assert (key.user, key.group, key.mode) == (USER, USER, 0o600)
    assert key.content_string == vault_key + "\n"


def test_config_points_at_the_companion_from_the_inventory(host: Any, base_url: str) -> None:
    conf = host.file(CONFIG)
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o644)
    parsed = tomllib.loads(conf.content_string)
    assert parsed["server"] == base_url
    assert parsed["device_id"] == DEVICE
    assert parsed["key_file"] == KEY_FILE
    assert parsed["db"] == DB
    assert parsed["logs"] == LOGS
    assert parsed["state_dir"] == STATE_DIR
    state = host.file(STATE_DIR)
    assert (state.user, state.group, state.mode) == (USER, USER, 0o700)


def test_units_are_valid_and_the_timer_is_waiting(host: Any) -> None:
    verify = host.run(
        "systemd-analyze verify /etc/systemd/system/chi-companion-push.timer "
        f"/etc/systemd/system/{SERVICE} /etc/systemd/system/{WIFI_SERVICE}"
    )
    assert verify.rc == 0, verify.stdout + verify.stderr
    timer = host.service(TIMER)
    assert timer.is_enabled
    assert timer.is_running
    assert unit_props(host, TIMER, "Unit")["Unit"] == SERVICE
    for unit in (SERVICE, WIFI_SERVICE):
        props = unit_props(host, unit, "Type", "User", "SuccessExitStatus", "Nice")
        assert props["Type"] == "oneshot"
        assert props["User"] == USER
        assert str(EXIT_UNREACHABLE) in props["SuccessExitStatus"].split()
        assert props["Nice"] == "10"
    assert "--wait 10" in host.file(f"/etc/systemd/system/{WIFI_SERVICE}").content_string


def test_units_are_sandboxed(host: Any) -> None:
    for unit in (SERVICE, WIFI_SERVICE):
        props = unit_props(
            host, unit, "ProtectSystem", "ProtectHome", "ReadWritePaths", "NoNewPrivileges"
        )
        assert props["ProtectSystem"] == "strict"
        assert props["ProtectHome"] == "read-only"
        assert props["NoNewPrivileges"] == "yes"
        assert sorted(props["ReadWritePaths"].split()) == sorted([STATE_DIR, DB.rsplit("/", 1)[0]])
        out = host.check_output(f"systemd-analyze security --no-pager {unit}")
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert match, out[-500:]
        # 10 = no sandbox at all, 0 = everything locked; the README records the measured value.
        assert float(match.group(1)) <= 2.5, out[-2000:]


def test_dispatcher_hook_is_root_owned_and_not_writable_by_others(host: Any) -> None:
    hook = host.file(HOOK)
    assert (hook.user, hook.group, hook.mode) == ("root", "root", 0o755)
    assert hook.content_string.startswith("#!/bin/sh\n")


@pytest.fixture
def app_writing(host: Any) -> Iterator[None]:
    """The stand-in app adds a row every 5 ms to the live database until the test ends."""
    host.run("systemctl stop fake-eclipse-app; systemctl reset-failed fake-eclipse-app")
    start = host.run(
        f"systemd-run --unit=fake-eclipse-app --uid={USER} --gid={USER} "
        f"/usr/local/bin/fake-eclipse-app {DB} --forever"
    )
    assert start.rc == 0, start.stderr
    time.sleep(1)
    assert host.service("fake-eclipse-app").is_running
    yield
    host.run("systemctl stop fake-eclipse-app.service")


def count_rows(host: Any, db: str = DB) -> int:
    return int(sqlite_query(host, db, "SELECT count(*) FROM realtime_data")[0][0])


def new_database_backup(base_url: str, key: str, before: set[int]) -> dict[str, Any]:
    new = [b for b in list_backups(base_url, key) if b["id"] not in before]
    assert len(new) == 1, f"expected one new database backup, got {new}"
    return new[0]


def recorded_push(host: Any, base_url: str) -> dict[str, Any]:
    state = json.loads(host.file(f"{STATE_DIR}/state.json").content_string)
    return dict(state["targets"][f"{base_url}|{DEVICE}"]["database"][DB])


def restore(host: Any, backup_id: int, dest: str) -> None:
    host.run(f"rm -f {dest}")
    result = host.run(f"runuser -u {USER} -- {BIN} restore --id {backup_id} --to {dest}")
    assert result.rc == 0, result.stderr


def test_timer_unit_pushes_the_live_database_while_the_app_writes(
    host: Any, base_url: str, vault_key: str, app_writing: None
) -> None:
    before = {b["id"] for b in list_backups(base_url, vault_key)}
    rows_before = count_rows(host)
    started = time.monotonic()
    # A oneshot unit: `systemctl start` returns when the run has ended.
    run = host.run(f"systemctl start {SERVICE}")
    elapsed = time.monotonic() - started
    assert run.rc == 0, run.stderr
    props = unit_props(host, SERVICE, "Result", "ExecMainStatus", "InvocationID")
    log = journal_of(host, props["InvocationID"])
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), log
    assert "stored database/obd.db.gz" in log
    assert host.service("fake-eclipse-app").is_running, "the app kept running during the push"
    assert count_rows(host) > rows_before, "the app kept writing during the push"
    print(f"push of a live database with {rows_before}+ rows: {elapsed:.1f} s")

    # What the companion stored is exactly what the Pi recorded as pushed.
    stored = new_database_backup(base_url, vault_key, before)
    pushed = recorded_push(host, base_url)
    assert (pushed["backupId"], pushed["sha256"]) == (stored["id"], stored["sha256"])
    resp = requests.get(
        f"{base_url}/api/v1/backups/{stored['id']}", headers={"X-API-Key": vault_key}, timeout=30
    )
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == stored["sha256"]
    assert resp.headers["X-Content-SHA256"] == stored["sha256"]
    assert gzip.decompress(resp.content)[:16] == SQLITE_MAGIC

    # Restored on the Pi, the snapshot holds exactly the live database's rows up to its last
    # one: a consistent cut of a database that was being written to, not a torn copy.
    dest = "/home/pi/restored-live.db"
    restore(host, stored["id"], dest)
    restored = sqlite_query(host, dest, "SELECT * FROM realtime_data ORDER BY id")
    assert len(restored) >= rows_before
    last_id = restored[-1][0]
    live = sqlite_query(host, DB, f"SELECT * FROM realtime_data WHERE id <= {last_id} ORDER BY id")
    assert restored == live
    assert sqlite_query(host, dest, "PRAGMA integrity_check") == [["ok"]]


def dump_sha256(host: Any, db: str) -> str:
    script = (
        "import hashlib, sqlite3, sys; "
        "c = sqlite3.connect(sys.argv[1]); "
        "print(hashlib.sha256('\\n'.join(c.iterdump()).encode()).hexdigest())"
    )
    return host.check_output(
        f"runuser -u {USER} -- python3 -c {shlex.quote(script)} {shlex.quote(db)}"
    )


def test_restored_backup_equals_the_database_once_the_app_stopped(
    host: Any, base_url: str, vault_key: str
) -> None:
    host.run("systemctl stop fake-eclipse-app.service")
    add = host.run(f"runuser -u {USER} -- /usr/local/bin/fake-eclipse-app {DB} --rows 50")
    assert add.rc == 0, add.stderr
    before = {b["id"] for b in list_backups(base_url, vault_key)}
    run = host.run(f"systemctl start {SERVICE}")
    assert run.rc == 0, run.stderr
    stored = new_database_backup(base_url, vault_key, before)
    dest = "/home/pi/restored-still.db"
    restore(host, stored["id"], dest)
    assert dump_sha256(host, dest) == dump_sha256(host, DB)

    # Nothing changed since: the next run sends nothing and stores nothing.
    before = {b["id"] for b in list_backups(base_url, vault_key)}
    run = host.run(f"systemctl start {SERVICE}")
    assert run.rc == 0, run.stderr
    log = journal_of(host, unit_props(host, SERVICE, "InvocationID")["InvocationID"])
    assert "unchanged" in log
    assert {b["id"] for b in list_backups(base_url, vault_key)} == before


def run_hook(host: Any, action: str, connection: str) -> Any:
    """The hook as NetworkManager runs it: root, $1 interface, $2 action, $CONNECTION_ID, and
    an environment with little else (no PATH)."""
    return host.run(
        f"env -i CONNECTION_ID={shlex.quote(connection)} NM_DISPATCHER_ACTION={action} "
        f"{HOOK} wlan0 {action}"
    )


def test_hook_ignores_other_connections_and_actions(host: Any) -> None:
    cursor = journal_cursor(host)
    for action, connection in [
        ("up", "Neighbour WiFi"),
        ("up", "Home Test"),  # a prefix of the home name is not the home name
        ("up", ""),
        ("down", HOME_CONNECTION),
        ("pre-up", HOME_CONNECTION),
        ("dhcp4-change", HOME_CONNECTION),
    ]:
        result = run_hook(host, action, connection)
        assert result.rc == 0, (action, connection, result.stderr)
    time.sleep(3)
    assert unit_journal_since(host, WIFI_SERVICE, cursor) == "", "no push may have started"
    assert host.run(f"systemctl is-active --quiet {WIFI_SERVICE}").rc != 0


def test_hook_pushes_when_the_home_wifi_comes_up(host: Any, base_url: str, vault_key: str) -> None:
    add = host.run(f"runuser -u {USER} -- /usr/local/bin/fake-eclipse-app {DB} --rows 50")
    assert add.rc == 0, add.stderr
    before_ids = {b["id"] for b in list_backups(base_url, vault_key)}
    cursor = journal_cursor(host)
    started = time.monotonic()
    result = run_hook(host, "up", HOME_CONNECTION)
    hook_seconds = time.monotonic() - started
    assert result.rc == 0, result.stderr
    assert hook_seconds < 5, "the hook must hand the push to systemd and return at once"

    deadline = time.monotonic() + 90
    while True:
        log = unit_journal_since(host, WIFI_SERVICE, cursor)
        if "Deactivated successfully" in log or "Failed with result" in log:
            break
        assert time.monotonic() < deadline, f"no WiFi push finished:\n{log}"
        time.sleep(0.5)
    assert "Deactivated successfully" in log, log
    assert "stored database/obd.db.gz" in log, log
    assert "0 failed" in log, log
    stored = new_database_backup(base_url, vault_key, before_ids)
    assert recorded_push(host, base_url)["sha256"] == stored["sha256"]
    print(f"WiFi hook returned in {hook_seconds:.2f} s")


def wait_healthy(base_url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{base_url}/api/v1/health", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the companion did not come back"
        time.sleep(1)


def test_away_from_home_the_unit_ends_unreachable_not_failed(
    host: Any, companion: Any, base_url: str
) -> None:
    assert companion.run(f"systemctl stop {COMPANION_SERVICE}").rc == 0
    try:
        started = time.monotonic()
        run = host.run(f"systemctl start {SERVICE}")
        elapsed = time.monotonic() - started
        assert run.rc == 0, run.stderr
        props = unit_props(host, SERVICE, "Result", "ExecMainStatus", "ActiveState", "InvocationID")
        log = journal_of(host, props["InvocationID"])
        assert props["ExecMainStatus"] == str(EXIT_UNREACHABLE), log
        assert (props["Result"], props["ActiveState"]) == ("success", "inactive"), log
        assert host.run(f"systemctl is-failed --quiet {SERVICE}").rc != 0
        assert "not reachable" in log
        assert elapsed < 30, f"an unreachable server must end the run quickly ({elapsed:.1f} s)"
        print(f"run with the companion stopped: exit {props['ExecMainStatus']} in {elapsed:.1f} s")
    finally:
        assert companion.run(f"systemctl start {COMPANION_SERVICE}").rc == 0
        wait_healthy(base_url)
