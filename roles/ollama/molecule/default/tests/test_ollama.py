"""Verify the `ollama` role on the Molecule host (testinfra).

The host runs a release built by tests/ollama_emulator/build_release.py whose bin/ollama is
the project's Ollama API emulator (a test double). The first verify runs after converge with
the old release; the side effect upgrades and records the new version in the scenario's
ephemeral directory, and the second verify checks against that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

OVERRIDE = "/etc/systemd/system/ollama.service.d/override.conf"


@pytest.fixture(scope="module")
def ansible_vars(host: Any) -> dict[str, Any]:
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def expected_version(ansible_vars: dict[str, Any]) -> str:
    marker = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "expected-version"
    if marker.exists():
        return marker.read_text().strip()
    return str(ansible_vars["ollama_test_old_version"])


def api(host: Any, path: str) -> Any:
    """GET an Ollama API path from inside the host (no curl in the image: python3)."""
    code = (
        "import sys, urllib.request; "
        "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:11434' + sys.argv[1], "
        "timeout=10).read().decode())"
    )
    result = host.run("python3 -c %s %s", code, path)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_binary_reports_pinned_version(host: Any, expected_version: str) -> None:
    result = host.run("/usr/local/bin/ollama --version")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == f"ollama version is {expected_version}"


def test_only_this_versions_libraries(host: Any, expected_version: str) -> None:
    libs = host.file("/usr/local/lib/ollama")
    assert libs.is_directory
    assert sorted(libs.listdir()) == [
        f"emulated-lib-{expected_version}.marker",
        "libggml-base.so",
    ]


def test_running_server_version(host: Any, expected_version: str) -> None:
    assert api(host, "/api/version") == {"version": expected_version}


def test_user_and_groups(host: Any) -> None:
    user = host.user("ollama")
    assert user.exists
    assert user.home == "/usr/share/ollama"
    assert user.shell == "/bin/false"
    assert user.group == "ollama"
    assert {"render", "video"} <= set(user.groups)
    assert user.uid < 1000, "expected a system user"


def test_models_dir_owned_by_service_user(host: Any, ansible_vars: dict[str, Any]) -> None:
    models = host.file(ansible_vars["ollama_models_dir"])
    assert models.is_directory
    assert (models.user, models.group, models.mode) == ("ollama", "ollama", 0o750)
    # The pulled model lives there, written by the service user.
    manifest = host.file(
        f"{ansible_vars['ollama_models_dir']}/manifests/registry.ollama.ai/library/gemma2/2b"
    )
    assert manifest.is_file and manifest.user == "ollama"


def test_unit_and_override(host: Any, ansible_vars: dict[str, Any]) -> None:
    unit = host.file("/etc/systemd/system/ollama.service")
    assert unit.contains("^ExecStart=/usr/local/bin/ollama serve$")
    assert unit.contains("^Restart=always$")
    assert unit.contains("^User=ollama$")
    override = host.file(OVERRIDE)
    assert (override.user, override.mode) == ("root", 0o644)
    content = override.content_string
    assert content.startswith("#")  # ansible_managed header
    lines = [line for line in content.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "[Unit]",
        f"RequiresMountsFor={ansible_vars['ollama_models_dir']}",
        "[Service]",
        'Environment="OLLAMA_HOST=127.0.0.1:11434"',
        f'Environment="OLLAMA_MODELS={ansible_vars["ollama_models_dir"]}"',
        'Environment="OLLAMA_KEEP_ALIVE=5m"',
        'Environment="OLLAMA_NUM_PARALLEL=1"',
        'Environment="OLLAMA_MAX_LOADED_MODELS=1"',
        'Environment="OLLAMA_MAX_QUEUE=512"',
    ]
    # systemd really applies it.
    env = host.run("systemctl show ollama --property=Environment").stdout
    assert "OLLAMA_HOST=127.0.0.1:11434" in env
    mounts = host.run("systemctl show ollama --property=RequiresMountsFor").stdout
    assert ansible_vars["ollama_models_dir"] in mounts


def test_service_enabled_and_running(host: Any) -> None:
    service = host.service("ollama")
    assert service.is_enabled
    assert service.is_running


def test_listening_on_loopback_only(host: Any) -> None:
    sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(":11434")]
    assert sockets == ["tcp://127.0.0.1:11434"]
    assert not host.file("/etc/systemd/system/ollama-lan.socket").exists


def test_tags_list_the_model(host: Any) -> None:
    names = [m["name"] for m in api(host, "/api/tags")["models"]]
    assert "gemma2:2b" in names
    assert "llama3.2:1b" not in names  # state: absent


def test_no_archive_left_behind(host: Any) -> None:
    assert host.file("/var/cache/ollama-install").listdir() == []


# Before the sandbox (issue 15) the unit scored 9.2 "UNSAFE". 2.0 leaves a little room above
# today's 1.6 "OK"; what is left is what the GPU and the model pulls need (devices, network,
# writable+executable memory for CUDA's JIT), see templates/hardening.conf.j2.
# systemd-analyze's --threshold is in tenths.
SECURITY_THRESHOLD = 2.0


def test_sandbox_scored_by_systemd_analyze(host: Any) -> None:
    result = host.run(
        "systemd-analyze security --threshold=%s ollama.service", str(int(SECURITY_THRESHOLD * 10))
    )
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert result.rc == 0, overall or result.stderr
    score = float(overall[0].split(":")[1].split()[0])
    assert score <= SECURITY_THRESHOLD, overall[0]


def test_sandbox_properties_applied(host: Any, ansible_vars: dict[str, Any]) -> None:
    props = host.run(
        "systemctl show ollama -p ProtectSystem -p ProtectHome -p PrivateTmp -p NoNewPrivileges"
        " -p DevicePolicy -p ReadWritePaths -p MemoryDenyWriteExecute"
    ).stdout.splitlines()
    assert sorted(props) == [
        "DevicePolicy=closed",
        "MemoryDenyWriteExecute=no",  # CUDA's JIT needs writable+executable memory
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={ansible_vars['ollama_models_dir']} /usr/share/ollama",
    ]
    devices = host.run("systemctl show ollama -p DeviceAllow").stdout
    assert "char-nvidia-frontend rw" in devices and "char-nvidia-uvm rw" in devices


def test_running_process_is_sandboxed(host: Any) -> None:
    """The kernel's view of the running server: no capabilities, no new privileges, seccomp."""
    pid = host.run("systemctl show ollama -p MainPID --value").stdout.strip()
    assert pid not in ("", "0")
    status = dict(
        line.split(":", 1) for line in host.file(f"/proc/{pid}/status").content_string.splitlines()
    )
    assert status["CapBnd"].strip() == "0000000000000000"
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # filter mode


def test_server_cannot_write_outside_its_directories(host: Any) -> None:
    """In the server's own mount namespace: even root cannot change the system there."""
    pid = host.run("systemctl show ollama -p MainPID --value").stdout.strip()
    for path in ("/usr/local/bin/ollama", "/etc/hostname", "/var/lib"):
        written = host.run(f"nsenter -t {pid} -m touch {path}")
        assert written.rc != 0 and "Read-only file system" in written.stderr, path
    enter = f"nsenter -t {pid} -m setpriv --reuid=ollama --regid=ollama --clear-groups"
    models = host.run(f"{enter} sh -c 'touch /srv/ollama/models/.w && rm /srv/ollama/models/.w'")
    assert models.rc == 0, models.stderr
    tmp = host.run(f"{enter} sh -c 'ls /tmp'")
    assert tmp.rc == 0 and tmp.stdout.strip() == ""  # PrivateTmp: its own, empty /tmp
