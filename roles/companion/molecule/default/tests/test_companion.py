"""Verify the companion role on a converged disposable host (testinfra, run by `molecule verify`).

Hosts (tests/molecule_rig, bridge chim-comp, 172.30.101.0/24): `companion` (.10) runs the role
with companion_allowed_networks = 172.30.101.0/25; `outsider` (.200) is outside that range. This
controller is 172.30.101.1, inside it, so the HTTP checks below come "from the LAN".
The reboot test is in test_reboot.py, which runs after this module: it must see everything
else already in place.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from scenario import (
    CONFIG,
    DATA_DIR,
    DEVICE,
    PORT,
    REPO,
    SERVICE,
    USER,
    VENV,
    converge,
    http,
)

testinfra_hosts = ["ansible://companion"]


def test_service_user_and_group(host: Any) -> None:
    user = host.user(USER)
    assert user.exists
    assert user.group == USER
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000, "a system account"
    assert host.group(USER).exists


@pytest.mark.parametrize("path", ["", "/backups", "/ai_results", "/logs"])
def test_data_directories(host: Any, path: str) -> None:
    d = host.file(DATA_DIR + path)
    assert d.is_directory
    assert (d.user, d.group) == (USER, USER)
    assert d.mode == 0o750


def test_database_created_by_the_service(host: Any) -> None:
    db = host.file(f"{DATA_DIR}/companion.db")
    assert db.is_file
    assert db.user == USER
    assert db.mode & 0o007 == 0, "UMask 0027: nothing for others"


def test_config_file_mode_and_content(host: Any, vault_key: str) -> None:
    conf_dir = host.file("/etc/chi-companion")
    assert (conf_dir.user, conf_dir.group, conf_dir.mode) == ("root", USER, 0o750)
    conf = host.file(CONFIG)
    assert (conf.user, conf.group, conf.mode) == ("root", USER, 0o640)
    parsed = tomllib.loads(conf.content_string)
    # Only the key's digest (test_keys.py checks it authenticates and that no key is in clear).
    assert set(parsed["devices"][DEVICE]) == {"api_key_sha256"}
    assert parsed["server"]["port"] == PORT
    assert parsed["server"]["data_dir"] == DATA_DIR
    check = host.run(f"{VENV}/bin/chi-companion check-config --config {CONFIG}")
    assert check.rc == 0, check.stderr
    assert check.stdout.startswith(f"config OK: {CONFIG}")


def test_installed_with_the_pinned_dependencies(host: Any) -> None:
    venv = host.file(VENV)
    assert venv.user == "root", "the service must not be able to modify its own code"
    version = host.run(f"{VENV}/bin/chi-companion --version")
    assert version.rc == 0
    assert version.stdout.startswith("chi-companion ")
    frozen = {
        canonicalize_name(line.split("==")[0]): line.split("==")[1]
        for line in host.check_output(f"{VENV}/bin/pip freeze --all").splitlines()
        if "==" in line
    }
    # A pin with an environment marker (typing_extensions only below Python 3.13) counts only
    # where its marker holds for the host's interpreter.
    host_python = host.check_output(
        f"{VENV}/bin/python -c 'import platform; print(platform.python_version())'"
    )
    environment = {
        "python_version": ".".join(host_python.split(".")[:2]),
        "python_full_version": host_python,
    }
    pins = [
        Requirement(line)
        for line in (REPO / "service" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    assert pins, "constraints.txt has pins"
    wanted = {
        canonicalize_name(pin.name): str(pin.specifier).removeprefix("==")
        for pin in pins
        if pin.marker is None or pin.marker.evaluate(environment)
    }
    assert {name: frozen.get(name) for name in wanted} == wanted
    # Nothing beyond the pins (and the venv's own tools) is installed.
    extra = set(frozen) - set(wanted) - {"pip", "setuptools", "wheel", "chi-companion"}
    assert not extra, f"installed but not pinned for Python {host_python}: {sorted(extra)}"


def test_venv_runs_the_hosts_own_python(host: Any) -> None:
    """The venv is the host's python3 (3.13 on Debian 13, 3.11 on Debian 12), not a copy of
    the controller's, so the wheels came from the host-specific wheelhouse."""
    system = host.check_output("python3 -c 'import sys; print(sys.version_info[:2])'")
    venv = host.check_output(f"{VENV}/bin/python -c 'import sys; print(sys.version_info[:2])'")
    assert venv == system
    expected = {"12": "(3, 11)", "13": "(3, 13)"}
    debian = host.file("/etc/debian_version").content_string.strip().split(".")[0]
    if debian in expected:
        assert venv == expected[debian], f"Debian {debian}"


def test_units_enabled_and_running(host: Any) -> None:
    for unit in (SERVICE, f"{SERVICE}-firewall"):
        svc = host.service(unit)
        assert svc.is_enabled, unit
        assert svc.is_running, unit


def test_backup_retention_runs_from_its_daily_timer(host: Any) -> None:
    # Uploads never delete anything; retention is this timer's job, as the service user, in a
    # sandbox without network.
    timer = host.service(f"{SERVICE}-prune.timer")
    assert timer.is_enabled and timer.is_running
    assert "03:30:00" in host.check_output(
        f"systemctl show -p TimersCalendar --value {SERVICE}-prune.timer"
    )
    host.run_expect([0], f"systemctl start {SERVICE}-prune.service")
    show = host.check_output(
        f"systemctl show -p Result -p User -p PrivateNetwork --value {SERVICE}-prune.service"
    ).split()
    assert show == ["success", USER, "yes"], show
    journal = host.check_output(f"journalctl -u {SERVICE}-prune.service -o cat --no-pager")
    assert "kept, 0 removed" in journal, journal[-2000:]


def test_unit_is_hardened(host: Any) -> None:
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            f"systemctl show {SERVICE} -p User -p NoNewPrivileges -p ProtectSystem "
            "-p PrivateTmp -p ProtectHome -p CapabilityBoundingSet -p UMask "
            "-p RestrictAddressFamilies -p ReadWritePaths -p SystemCallFilter -p Restart"
        ).splitlines()
    )
    assert props["User"] == USER
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["ProtectHome"] == "yes"
    assert props["CapabilityBoundingSet"] == ""
    assert props["UMask"] == "0027"
    assert props["ReadWritePaths"] == DATA_DIR
    assert set(props["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert props["SystemCallFilter"], "a syscall allow-list is set"
    assert props["Restart"] == "on-failure"
    # The process really runs as the service user, not just per the unit file.
    pid = host.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    assert host.check_output(f"ps -o user= -p {pid}") == USER


def test_security_exposure_is_low(host: Any) -> None:
    out = host.check_output(f"systemd-analyze security --no-pager {SERVICE}.service")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out[-500:]
    # 10 = no sandbox at all, 0 = everything locked; README records the measured value.
    assert float(match.group(1)) <= 2.0, out[-2000:]


def test_port_listening(host: Any) -> None:
    assert host.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_health_answers_on_the_host(host: Any, vault_key: str) -> None:
    url = f"http://127.0.0.1:{PORT}/api/v1/health"
    # Without a key: the overall status and the version, nothing a stranger could use.
    assert set(json.loads(host.check_output(f"curl -sSf {url}"))) == {"status", "version"}
    out = host.check_output(f"curl -sS -H 'X-API-Key: {vault_key}' -w '\\n%{{http_code}}' {url}")
    body, code = out.rsplit("\n", 1)
    assert code == "200"
    health = json.loads(body)
    # No Ollama runs in this scenario, so "degraded" is the honest answer; never "unhealthy".
    assert health["status"] in ("healthy", "degraded")
    assert health["components"]["database"]["status"] == "ok"


def _row(row_id: int, timestamp: str, rpm: float) -> dict[str, Any]:
    """A realtime_data row as the EclipseTuner Pi sends it (contract: eclipsetuner-wire.md)."""
    return {
        "id": row_id,
        "timestamp": timestamp,
        "parameter_name": "RPM",
        "value": rpm,
        "unit": "rpm",
        "profile_id": "daily",
        "data_source": "real",
        "drive_id": 1,
    }


def test_sync_post_with_vault_key_is_accepted(address: str, vault_key: str) -> None:
    base = f"http://{address}:{PORT}/api/v1"
    payload = {
        "deviceId": DEVICE,
        "batchId": f"{DEVICE}-2026-04-19T08:00:02Z",
        "tables": {
            "realtime_data": {
                "lastSyncedId": 0,
                "rows": [
                    _row(1, "2026-04-19T08:00:00Z", 900.0),
                    _row(2, "2026-04-19T08:00:01Z", 950.0),
                ],
            }
        },
    }
    status, body = http("POST", f"{base}/sync", vault_key, payload)
    assert status == 200, body
    assert body["status"] == "ok"
    assert body["tablesProcessed"]["realtime_data"]["errors"] == 0
    # Stored, not just acknowledged.
    status, report = http("GET", f"{base}/sync/status?deviceId={DEVICE}", vault_key)
    assert status == 200, report
    assert report["tables"]["realtime_data"]["rows"] == 2
    assert report["tables"]["realtime_data"]["maxId"] == 2
    assert report["lastBatchId"] == payload["batchId"]
    # And the key matters: a wrong one is refused.
    status, _ = http("POST", f"{base}/sync", "x" * 43, payload)
    assert status == 401


def test_request_from_outside_the_allowed_range_is_refused(outsider: Any) -> None:
    refused = outsider.run(
        f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://companion:{PORT}/api/v1/health"
    )
    assert refused.rc == 7, f"curl should get 'connection refused', got {refused}"
    # The path itself works (so the refusal above is the port filter, not a dead network),
    # and the filter touches only the companion's port: SSH on the same host still answers.
    ssh = outsider.run("timeout 5 bash -c 'exec 3<>/dev/tcp/companion/22; head -c 7 <&3'")
    assert ssh.rc == 0
    assert ssh.stdout == "SSH-2.0"


def test_bad_config_fails_the_play_and_leaves_the_service_running(
    host: Any, vault_key: str
) -> None:
    pid_before = host.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    config_before = host.file(CONFIG).sha256sum
    code, output = converge(
        "--extra-vars",
        '{"companion_ollama_keep_alive": "forever"}',
        # The config step alone: what is tested is its validate-before-replace.
        "--tags",
        "companion_configure",
        timeout=600,
    )
    assert code != 0, output[-3000:]
    assert "failed to validate" in output, output[-3000:]
    assert "ollama.keep_alive" in output, "the checker's own message reaches the user"
    assert vault_key not in output, "the failure must not print the config's keys"
    assert host.file(CONFIG).sha256sum == config_before
    assert host.check_output(f"systemctl show -p MainPID --value {SERVICE}") == pid_before
    assert host.service(SERVICE).is_running
