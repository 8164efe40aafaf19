"""Verify the site (playbooks/site.yml) on two disposable hosts (testinfra, `molecule verify`).

Hosts (tests/molecule_rig, bridge chim-site, 172.30.103.0/24; this controller is .1):
  server (.10)  Ollama (emulated release), the companion on port 8000, the replication wrapper
                /usr/local/bin/chi-nas-replicate (rsync over SSH to the NAS, cron hourly), plus
                the side effect's extra instances chi-nas-replicate-daemon (rsync daemon module)
                and chi-nas-replicate-mirror (mirror mode, max-delete 2).
  nas    (.20)  roles/nas_test: account chi-replica (key from the server), target
                /srv/nas/chi-replica, rsync daemon module chi-replica at
                /srv/nas/chi-replica-daemon.

Backups reach the companion over real HTTP from this controller with the test device key, and
every check of the NAS's copy hashes the file on the NAS host itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from site_scenario import DEVICE, INVENTORY, REPO

DATA_DIR = "/srv/chi-companion"
STATUS_FILE = f"{DATA_DIR}/replication/status.json"
LOG_FILE = f"{DATA_DIR}/logs/replication.log"
COMMAND = "/usr/local/bin/chi-nas-replicate"
DAEMON_COMMAND = "/usr/local/bin/chi-nas-replicate-daemon"
MIRROR_COMMAND = "/usr/local/bin/chi-nas-replicate-mirror"
NAS_TARGET = "/srv/nas/chi-replica/chi-srv-01"
NAS_DAEMON_TARGET = "/srv/nas/chi-replica-daemon/chi-srv-01"
NAS_MIRROR_TARGET = "/srv/nas/chi-replica/chi-srv-01-mirror"
EXIT_LOCKED = 75
NAS_KEY = "/etc/chi-nas-replication/id_ed25519"
AS_REPLICATION = "runuser -u chi-companion -- "
RSYNC_MAX_DELETE_EXCEEDED = 25
# The NAS's forced command for the replication keys (roles/nas_test, nas_test_rrsync).
NAS_RRSYNC = "/usr/bin/rrsync -wo -no-overwrite -no-lock"


# ------------------------------------------------------------------------------ fixtures


# ------------------------------------------------------------------------------ helpers


def http(
    method: str,
    url: str,
    key: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["X-API-Key"] = key
    response = requests.request(method, url, data=body, headers=all_headers, timeout=timeout)
    status, raw = response.status_code, response.content
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


def upload(base_url: str, key: str, backup_type: str, filename: str, data: bytes) -> dict[str, Any]:
    """PUT a backup as the Pi does; returns the companion's 201 body."""
    digest = hashlib.sha256(data).hexdigest()
    status, body = http(
        "PUT",
        f"{base_url}/api/v1/backups/{DEVICE}/{backup_type}/{filename}",
        key=key,
        body=data,
        headers={"X-Content-SHA256": digest, "Content-Type": "application/octet-stream"},
    )
    assert status == 201, body
    assert body["sha256"] == digest and body["size"] == len(data)
    return dict(body)


def unique_name(stem: str, ext: str = "db") -> str:
    return f"{stem}-{secrets.token_hex(4)}.{ext}"


def replicate(server: Any, command: str = COMMAND, *args: str) -> Any:
    """A manual run exactly as an operator types it (as root; the wrapper drops privileges)."""
    return server.run(" ".join([command, *(shlex.quote(a) for a in args)]))


def nas_sha256(nas: Any, path: str) -> str | None:
    result = nas.run("sha256sum %s", path)
    if result.rc != 0:
        return None
    return str(result.stdout.split()[0])


def read_status(server: Any, path: str = STATUS_FILE) -> dict[str, Any]:
    return dict(json.loads(server.file(path).content_string))


def wait_until(predicate: Any, timeout: float, interval: float = 0.3, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def nas_rsync_gone(nas: Any) -> bool:
    """No rsync of the replica account left on the NAS (a receiver finishing an aborted run)."""
    return nas.run("pgrep -u chi-replica -x rsync").rc == 1


# ------------------------------------------------------------------------------ the services


@pytest.mark.parametrize(
    ("hostname", "unit"),
    [
        ("server", "ollama"),
        ("server", "chi-companion"),
        ("server", "chi-companion-firewall"),
        ("server", "cron"),
        ("nas", "ssh"),
        ("nas", "rsync"),
    ],
)
def test_services_enabled_and_running(server: Any, nas: Any, hostname: str, unit: str) -> None:
    service = {"server": server, "nas": nas}[hostname].service(unit)
    assert service.is_enabled
    assert service.is_running


def test_ports_bound_as_configured(server: Any, nas: Any, server_vars: dict[str, Any]) -> None:
    # The companion listens on the LAN (its own nftables table filters the port); Ollama only
    # on loopback: the companion on the same host is its only client.
    assert server.socket(f"tcp://0.0.0.0:{server_vars['companion_port']}").is_listening
    assert server.socket("tcp://127.0.0.1:11434").is_listening
    assert not server.socket("tcp://0.0.0.0:11434").is_listening
    assert nas.socket("tcp://0.0.0.0:22").is_listening
    assert nas.socket("tcp://0.0.0.0:873").is_listening


def test_health_is_served_to_the_lan(base_url: str, operator_key: str) -> None:
    status, body = http("GET", f"{base_url}/api/v1/health")
    assert status == 200, body
    assert set(body) == {"status", "version"}, "a caller without a key sees only these"
    status, body = http("GET", f"{base_url}/api/v1/health", key=operator_key)
    assert status == 200, body
    assert body["components"]["ollama"]["status"] == "ok", body["components"]["ollama"]


def test_cron_runs_the_wrapper_hourly_as_the_service_user(server: Any) -> None:
    cron = server.file("/etc/cron.d/chi-nas-replication")
    assert cron.user == "root" and cron.mode == 0o644
    jobs = [line for line in cron.content_string.splitlines() if line and line[0] != "#"]
    assert jobs == ["17 * * * * chi-companion /usr/local/bin/chi-nas-replicate --quiet"]
    # The test instances of the side effect have no schedule.
    extra = server.file("/etc/cron.d/chi-nas-replication-daemon")
    assert not extra.exists or "chi-nas-replicate" not in extra.content_string


def test_key_pair_and_pinned_host_key(server: Any, nas: Any) -> None:
    key = server.file("/etc/chi-nas-replication/id_ed25519")
    assert key.user == "chi-companion" and key.mode == 0o600
    public = server.file("/etc/chi-nas-replication/id_ed25519.pub").content_string.split()
    authorized = nas.file("/home/chi-replica/.ssh/authorized_keys").content_string
    # Write-only: the key may only run the forced rrsync (test_nas_write_only.py tries it).
    line = f'restrict,command="{NAS_RRSYNC} -no-del /srv/nas/chi-replica" {public[0]} {public[1]}'
    assert re.search(rf"^{re.escape(line)}( |$)", authorized, re.MULTILINE), authorized

    nas_key = nas.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()
    known = server.file("/etc/chi-nas-replication/known_hosts").content_string
    assert f"chi-nas-replica {nas_key[0]} {nas_key[1]}" in known.splitlines()
    config = server.file("/etc/chi-nas-replication/ssh_config").content_string
    assert re.search(r"^\s*StrictHostKeyChecking yes$", config, re.MULTILINE)
    assert "accept-new" not in config


def test_a_nas_with_another_host_key_is_refused(server: Any) -> None:
    """Same settings, but known_hosts pins a different key: ssh must refuse, never learn."""
    server.check_output(
        "rm -f /tmp/fake_host_key /tmp/fake_host_key.pub"
        " && ssh-keygen -q -t ed25519 -N '' -f /tmp/fake_host_key"
        " && printf 'chi-nas-replica %s\\n' \"$(cut -d' ' -f1-2 /tmp/fake_host_key.pub)\""
        " >/tmp/fake_known_hosts && chmod 0644 /tmp/fake_known_hosts"
    )
    # ssh's 255 would read as a lost connection to testinfra: report it on stdout instead.
    result = server.run(
        "runuser -u chi-companion -- ssh -F /etc/chi-nas-replication/ssh_config"
        ' -o UserKnownHostsFile=/tmp/fake_known_hosts chi-nas-replica true; echo "rc=$?"'
    )
    assert result.stdout.strip() == "rc=255"
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert "Host key verification failed" in result.stderr


def test_the_companion_process_cannot_read_the_nas_key(server: Any) -> None:
    """The service runs as the same user as the wrapper, but its unit hides the key's directory.

    Checked in the running service's own mount namespace, as its user, against the unit's real
    properties; the same read outside the unit is the control that shows the key is there.
    """
    props = server.check_output(
        "systemctl show chi-companion -p InaccessiblePaths -p User -p MainPID"
    ).splitlines()
    values = dict(line.split("=", 1) for line in props)
    assert values["User"] == "chi-companion"
    assert "/etc/chi-nas-replication" in values["InaccessiblePaths"]
    pid = values["MainPID"]
    assert pid != "0"

    outside = server.run(f"{AS_REPLICATION} head -c 35 {NAS_KEY}")
    assert outside.rc == 0 and outside.stdout.startswith("-----BEGIN OPENSSH PRIVATE KEY")

    as_service = f"nsenter -t {pid} -m setpriv --reuid=chi-companion --regid=chi-companion"
    inside = server.run(f"{as_service} --clear-groups cat {NAS_KEY}")
    assert inside.rc != 0 and inside.stdout == ""
    assert "Permission denied" in inside.stderr, inside.stderr
    # Not even root in the service's view finds the key: the directory is an empty stand-in.
    assert server.run(f"nsenter -t {pid} -m test -e {NAS_KEY}").rc == 1
    # The wrapper (cron, same user, outside the unit) still copies: see the copy tests below.


# ------------------------------------------------------------------------------ the copy


def test_uploaded_backup_reaches_the_nas_with_the_same_sha256(
    server: Any, nas: Any, base_url: str, device_key: str
) -> None:
    data = secrets.token_bytes(256 * 1024)
    stored = upload(base_url, device_key, "database", unique_name("obd"), data)
    relative = f"backups/{DEVICE}/database/{stored['name']}"

    run = replicate(server)

    assert run.rc == 0, run.stderr
    # The manual run prints what it copied (rsync's itemized list: "<f" = file sent) and a
    # summary.
    assert re.search(rf"^<f\+{{9}} {re.escape(relative)}$", run.stdout, re.MULTILINE), run.stdout
    assert re.search(r"copied [1-9][0-9]* file\(s\)", run.stdout), run.stdout
    assert nas_sha256(nas, f"{NAS_TARGET}/{relative}") == stored["sha256"]
    assert server.file(f"{DATA_DIR}/{relative}").sha256sum == stored["sha256"]

    status = read_status(server)
    assert status["exit_code"] == 0
    assert status["files"] >= 1 and status["bytes"] >= len(data)
    assert status["last_success_at"] == status["finished_at"]
    assert status["started_at"] <= status["finished_at"]
    log = server.file(LOG_FILE)
    assert log.user == "chi-companion"
    assert relative in log.content_string


def test_health_shows_the_last_replication(server: Any, base_url: str, operator_key: str) -> None:
    # Exactly the cron job: the service user, cron's bare environment, --quiet.
    run = server.run(
        "cd / && runuser -u chi-companion -- env -i PATH=/usr/bin:/bin SHELL=/bin/sh"
        f" {COMMAND} --quiet"
    )
    assert run.rc == 0, run.stderr
    assert run.stdout == ""  # --quiet prints nothing on success
    status = read_status(server)

    code, body = http("GET", f"{base_url}/api/v1/health", key=operator_key)

    assert code == 200, body
    replication = body["components"]["replication"]
    assert replication["status"] == "ok", replication
    for key in ("started_at", "finished_at", "exit_code", "bytes", "files", "last_success_at"):
        assert replication[key] == status[key], key


def test_interrupted_transfer_leaves_no_partial_file_on_the_nas(
    server: Any, nas: Any, base_url: str, device_key: str
) -> None:
    before = replicate(server)  # everything else already copied: only the big file moves below
    assert before.rc == 0, before.stderr
    success_before = read_status(server)["last_success_at"]
    data = secrets.token_bytes(12 * 1024 * 1024)
    stored = upload(base_url, device_key, "logs", unique_name("drive-log", "tar"), data)
    name = stored["name"]
    nas_dir = f"{NAS_TARGET}/backups/{DEVICE}/logs"

    # 12 MiB at 1 MiB/s: about 12 s, the kill comes after the first bytes arrived.
    server.check_output(f"setsid {COMMAND} --bwlimit 1024 >/tmp/interrupted.out 2>&1 </dev/null &")

    def receiving() -> bool:
        found = nas.run("find %s -name %s -size +0", nas_dir, f".{name}.*")
        return found.rc == 0 and found.stdout.strip() != ""

    wait_until(receiving, timeout=30, what="the NAS to start receiving the big file")
    killed = server.run("pkill -KILL -u chi-companion -x rsync")
    assert killed.rc == 0, "no rsync to kill: the transfer was not running"
    wait_until(lambda: nas_rsync_gone(nas), timeout=30, what="the NAS receiver to finish")

    # Nothing under the file's name, and no temp file beside it: the NAS forces rrsync
    # -no-overwrite, which refuses --partial-dir, so the receiver deletes its temp file (a file
    # kept under its name would never be completed: nothing on the NAS is ever replaced).
    listing = nas.run("find %s -mindepth 1 -maxdepth 1 -printf '%%f\\n'", nas_dir).stdout.split()
    assert name not in listing
    assert [n for n in listing if name in n] == [], listing
    assert ".rsync-partial" not in listing

    wait_until(
        lambda: read_status(server)["finished_at"] is not None,
        timeout=15,
        what="the wrapper to record the failed run",
    )
    failed = read_status(server)
    assert failed["exit_code"] not in (0, None)
    assert failed["last_success_at"] == success_before  # a failed run keeps the last success
    assert "FAILED" in server.file("/tmp/interrupted.out").content_string

    # The next run sends the file again, whole, and nothing else is left behind.
    again = replicate(server)
    assert again.rc == 0, again.stderr
    assert nas_sha256(nas, f"{nas_dir}/{name}") == stored["sha256"]
    leftovers = nas.run("find %s -mindepth 1 -name '.*'", nas_dir)
    assert leftovers.stdout.strip() == "", leftovers.stdout
    assert nas.run("find %s -name .rsync-partial", NAS_TARGET).stdout.strip() == ""
    assert read_status(server)["last_success_at"] > success_before


def test_two_runs_started_together_one_runs_the_other_exits_on_the_lock(
    server: Any, nas: Any, base_url: str, device_key: str
) -> None:
    stored = upload(
        base_url, device_key, "database", unique_name("lock"), secrets.token_bytes(3 * 1024 * 1024)
    )
    # Both start in the same instant (two Popen calls on the server); each reports its exit
    # code, how long it took (polled, so one's wait does not count for the other) and its output.
    script = (
        "import json, subprocess, tempfile, time\n"
        f"cmd = [{COMMAND!r}, '--bwlimit', '512']\n"
        "outs = [tempfile.TemporaryFile(mode='w+') for _ in range(2)]\n"
        "start = time.monotonic()\n"
        "procs = [subprocess.Popen(cmd, stdout=o, stderr=subprocess.STDOUT) for o in outs]\n"
        "ended = [None, None]\n"
        "while None in ended:\n"
        "    for i, proc in enumerate(procs):\n"
        "        if ended[i] is None and proc.poll() is not None:\n"
        "            ended[i] = time.monotonic() - start\n"
        "    time.sleep(0.05)\n"
        "result = {}\n"
        "for i, proc in enumerate(procs):\n"
        "    outs[i].seek(0)\n"
        "    result[str(i)] = [proc.returncode, ended[i], outs[i].read()]\n"
        "print(json.dumps(result))\n"
    )
    result = server.run("python3 -c %s", script)
    assert result.rc == 0, result.stderr
    runs = json.loads(result.stdout)
    outcomes = {k: (int(v[0]), float(v[1]), str(v[2])) for k, v in runs.items()}
    assert sorted(rc for rc, _, _ in outcomes.values()) == [0, EXIT_LOCKED], outcomes
    loser = next(v for v in outcomes.values() if v[0] == EXIT_LOCKED)
    winner = next(v for v in outcomes.values() if v[0] == 0)
    assert loser[1] < 2.0, loser  # exits at once instead of waiting for the lock
    assert winner[1] > loser[1] + 2.0, winner  # while the winner was still copying
    assert "another replication run is in progress" in loser[2]
    assert stored["name"] in winner[2]
    relative = f"backups/{DEVICE}/database/{stored['name']}"
    assert nas_sha256(nas, f"{NAS_TARGET}/{relative}") == stored["sha256"]
    assert "skipped: another replication run is in progress" in server.file(LOG_FILE).content_string


def test_a_backup_already_on_the_nas_is_never_overwritten(server: Any, nas: Any) -> None:
    """A backup changed on the server after its copy (damage, tampering) keeps the NAS's copy.

    Uses a backup the tests above uploaded: the companion limits uploads per device.
    """
    assert replicate(server).rc == 0
    relative = server.check_output(
        f"cd {DATA_DIR} && find backups -type f -name '*.db' | sort | head -n 1"
    ).strip()
    assert relative, "no backup to tamper with"
    path = f"{DATA_DIR}/{relative}"
    original = server.file(path).sha256sum
    assert nas_sha256(nas, f"{NAS_TARGET}/{relative}") == original

    # Other bytes, another size and a newer time: rsync's quick check would send it again.
    server.check_output(f"cp -p {path} /tmp/keep.orig")
    try:
        server.check_output(f"printf 'tampered' >{path} && touch -d '+1 hour' {path}")
        run = replicate(server)
        assert run.rc == 0, run.stderr
        assert relative not in run.stdout  # not even listed as sent
        assert nas_sha256(nas, f"{NAS_TARGET}/{relative}") == original
    finally:
        server.check_output(f"cp -p /tmp/keep.orig {path}")


def test_backup_rotated_away_on_the_server_stays_on_the_nas(
    server: Any, nas: Any, base_url: str, device_key: str, operator_key: str
) -> None:
    stored = upload(base_url, device_key, "config", unique_name("settings", "json"), b'{"a": 1}\n')
    relative = f"backups/{DEVICE}/config/{stored['name']}"
    assert replicate(server).rc == 0
    assert nas_sha256(nas, f"{NAS_TARGET}/{relative}") == stored["sha256"]

    code, body = http("DELETE", f"{base_url}/api/v1/backups/{stored['id']}", key=operator_key)
    assert code == 204, body
    assert not server.file(f"{DATA_DIR}/{relative}").exists

    run = replicate(server)
    assert run.rc == 0, run.stderr
    assert "deleting" not in run.stdout
    assert nas_sha256(nas, f"{NAS_TARGET}/{relative}") == stored["sha256"]


def test_playbook_tag_runs_the_replication(
    server: Any, nas: Any, base_url: str, device_key: str
) -> None:
    """`ansible-playbook ... --tags nas_replication_run` runs it once and shows what it copied."""
    stored = upload(base_url, device_key, "config", unique_name("tagged", "json"), b"{}\n")
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"))
    result = subprocess.run(
        [
            "ansible-playbook",
            "--inventory",
            INVENTORY,
            str(REPO / "playbooks" / "nas_replication.yml"),
            "--tags",
            "nas_replication_run",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"backups/{DEVICE}/config/{stored['name']}" in result.stdout
    # Only the run: no other task of the role ran.
    assert "Generate the replication key pair" not in result.stdout
    relative = f"backups/{DEVICE}/config/{stored['name']}"
    assert nas_sha256(nas, f"{NAS_TARGET}/{relative}") == stored["sha256"]


# ------------------------------------------------------------------------------ other modes


def test_rsync_daemon_transport(server: Any, nas: Any, base_url: str, device_key: str) -> None:
    stored = upload(base_url, device_key, "database", unique_name("daemon"), b"daemon mode\n" * 99)
    relative = f"backups/{DEVICE}/database/{stored['name']}"
    password = server.file("/etc/chi-nas-replication-daemon/rsync.password")
    assert password.user == "chi-companion" and password.mode == 0o600

    run = replicate(server, DAEMON_COMMAND)

    assert run.rc == 0, run.stdout + run.stderr
    assert "rsync://chi-replica@nas:873/chi-replica/chi-srv-01/" in run.stdout
    assert nas_sha256(nas, f"{NAS_DAEMON_TARGET}/{relative}") == stored["sha256"]
    # Files written by the daemon belong to the NAS's rsync account.
    assert nas.file(f"{NAS_DAEMON_TARGET}/{relative}").user == "chi-replica"
    status = read_status(server, f"{DATA_DIR}/replication/status-daemon.json")
    assert status["exit_code"] == 0 and status["files"] >= 1


def test_vault_provided_key_is_installed_as_given(server: Any, nas: Any) -> None:
    """The mirror instance got its private key as a vault variable (made on this controller)."""
    given = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "vault_replication_key"
    installed = server.file("/etc/chi-nas-replication-mirror/id_ed25519")
    assert installed.user == "chi-companion" and installed.mode == 0o600
    assert installed.content_string.strip() == given.read_text().strip()
    public = given.with_suffix(".pub").read_text().split()[:2]
    derived = server.file("/etc/chi-nas-replication-mirror/id_ed25519.pub").content_string
    assert derived.split()[:2] == public
    authorized = nas.file("/home/chi-replica/.ssh/authorized_keys").content_string
    # The mirror instance's key may delete (no -no-del), still write-only and no overwrite.
    line = f'restrict,command="{NAS_RRSYNC} /srv/nas/chi-replica" {public[0]} {public[1]}'
    assert re.search(rf"^{re.escape(line)}( |$)", authorized, re.MULTILINE), authorized


def test_mirror_mode_deletes_with_a_cap(
    server: Any, nas: Any, base_url: str, device_key: str, operator_key: str
) -> None:
    """Mirror mode (the instance logs in with the vault-provided key)."""
    stored = [
        upload(base_url, device_key, "logs", unique_name(f"mirror{i}", "txt"), f"{i}\n".encode())
        for i in range(4)
    ]
    paths = [f"{NAS_MIRROR_TARGET}/backups/{DEVICE}/logs/{s['name']}" for s in stored]
    # A fresh mirror (deletions left pending by an earlier verify would count against the cap).
    nas.check_output("rm -rf %s", NAS_MIRROR_TARGET)
    first = replicate(server, MIRROR_COMMAND)
    assert first.rc == 0, first.stdout + first.stderr
    assert all(nas.file(p).exists for p in paths)
    assert replicate(server).rc == 0  # the default copy gets them too

    def delete(item: dict[str, Any]) -> None:
        code, body = http("DELETE", f"{base_url}/api/v1/backups/{item['id']}", key=operator_key)
        assert code == 204, body

    # One rotated away on the server: mirror mode removes it from the NAS after the transfer.
    delete(stored[0])
    second = replicate(server, MIRROR_COMMAND)
    assert second.rc == 0, second.stdout + second.stderr
    deleted = rf"^\*deleting +backups/{DEVICE}/logs/{re.escape(stored[0]['name'])}$"
    assert re.search(deleted, second.stdout, re.MULTILINE), second.stdout
    assert not nas.file(paths[0]).exists
    assert all(nas.file(p).exists for p in paths[1:])

    # Three at once exceed max-delete 2: rsync stops deleting and the run fails loudly.
    for item in stored[1:]:
        delete(item)
    third = replicate(server, MIRROR_COMMAND)
    assert third.rc == RSYNC_MAX_DELETE_EXCEEDED, third.stdout + third.stderr
    assert sum(nas.file(p).exists for p in paths[1:]) >= 1
    status = read_status(server, f"{DATA_DIR}/replication/status-mirror.json")
    assert status["exit_code"] == RSYNC_MAX_DELETE_EXCEEDED

    # The default instance never deletes: all four are still in its copy.
    assert replicate(server).rc == 0
    assert not server.file(f"{DATA_DIR}/backups/{DEVICE}/logs/{stored[0]['name']}").exists
    for item in stored:
        path = f"{NAS_TARGET}/backups/{DEVICE}/logs/{item['name']}"
        assert nas_sha256(nas, path) == item["sha256"]
