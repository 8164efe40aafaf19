"""The NAS side is write-only for the server's replication key (issue 15, item 9).

Whoever holds the replication key (the server's wrapper, or a thief who copied it) reaches the
NAS only through the forced `rrsync -wo -no-overwrite -no-lock -no-del <target>` that
roles/nas_test writes into the account's authorized_keys. These tests use that key exactly as
the wrapper does (the wrapper's ssh_config, as the service user) but with the attacker's
options and hand-made server commands, against a file of their own that the same key wrote
first: it cannot be read back, deleted or replaced, and no other command runs. That the
wrapper's own copy still works is shown by tests/test_site.py.
"""

from __future__ import annotations

import re
import secrets
import shlex
from dataclasses import dataclass
from typing import Any

import pytest

SSH = "ssh -F /etc/chi-nas-replication/ssh_config"
AS_REPLICATION = "runuser -u chi-companion -- "
NAS_ROOT = "/srv/nas/chi-replica"  # the forced rrsync's directory
RRSYNC = "/usr/bin/rrsync -wo -no-overwrite -no-lock"
# What a stock rsync 3.x client sends for `rsync -a` (the server's short options).
SERVER_FLAGS = "-logDtpre.iLsfxCIvu"


@dataclass
class Run:
    exit: int
    out: str
    stderr: str


def as_replication(server: Any, command: str) -> Run:
    """Run a shell command as the service user (who holds the replication key).

    ssh's own 255 would read as a lost connection to testinfra, so the command reports its exit
    code as the last line of stdout instead.
    """
    # The newline first: a refused transfer may leave rsync protocol bytes without one.
    result = server.run(
        f'{AS_REPLICATION} sh -c {shlex.quote(command)} </dev/null; rc=$?; echo; echo "rc=$rc"'
    )
    lines = result.stdout.rstrip("\n").splitlines()
    assert lines and lines[-1].startswith("rc="), result.stdout + result.stderr
    return Run(int(lines[-1][3:]), "\n".join(lines[:-1]), result.stderr)


def nas_sha256(nas: Any, path: str) -> str | None:
    result = nas.run("sha256sum %s", path)
    return str(result.stdout.split()[0]) if result.rc == 0 else None


@pytest.fixture(scope="module")
def placed(server: Any, nas: Any) -> dict[str, str]:
    """A file the replication key wrote to the NAS (new files are what it may write)."""
    token = secrets.token_hex(4)
    workdir = f"/tmp/write-only-{token}"
    relative = f"write-only-test/{token}/kept.bin"
    server.check_output(
        AS_REPLICATION
        + "sh -c "
        + shlex.quote(
            f"mkdir -p {workdir}/src/write-only-test/{token}"
            f" && head -c 65536 /dev/urandom >{workdir}/src/{relative}"
        )
    )
    original = server.file(f"{workdir}/src/{relative}").sha256sum
    sent = as_replication(server, f"rsync -a -e {shlex.quote(SSH)} {workdir}/src/ chi-nas-replica:")
    assert sent.exit == 0, sent.out + sent.stderr
    assert nas_sha256(nas, f"{NAS_ROOT}/{relative}") == original
    return {"workdir": workdir, "relative": relative, "sha256": original, "token": token}


def test_every_key_on_the_nas_is_forced_through_rrsync(server: Any, nas: Any) -> None:
    public = server.file("/etc/chi-nas-replication/id_ed25519.pub").content_string.split()
    authorized = nas.file("/home/chi-replica/.ssh/authorized_keys")
    assert authorized.user == "chi-replica" and authorized.mode == 0o600
    lines = [
        line for line in authorized.content_string.splitlines() if line and not line.startswith("#")
    ]
    expected = f'restrict,command="{RRSYNC} -no-del {NAS_ROOT}" {public[0]} {public[1]}'
    assert any(line == expected or line.startswith(f"{expected} ") for line in lines), lines
    # No key gets in without the forced command (the mirror key may delete, nothing more).
    assert all(line.startswith(f'restrict,command="{RRSYNC} ') for line in lines), lines
    assert "-no-overwrite" in nas.check_output("/usr/bin/rrsync -help")


def test_reading_a_file_back_fails(server: Any, placed: dict[str, str]) -> None:
    back = f"{placed['workdir']}/back"
    # A plain pull, and the server command of a pull written by hand.
    pull = as_replication(
        server, f"rsync -a -e {shlex.quote(SSH)} chi-nas-replica:{placed['relative']} {back}/"
    )
    assert pull.exit != 0, pull.out
    assert "reading from write-only server is not allowed" in pull.stderr, pull.stderr
    assert not server.file(f"{back}/kept.bin").exists

    forged = as_replication(
        server,
        f"{SSH} chi-nas-replica rsync --server --sender {SERVER_FLAGS} . {placed['relative']}"
        f" | head -c 65536 | wc -c",
    )
    assert forged.out.strip() == "0", forged.out
    assert "reading from write-only server is not allowed" in forged.stderr, forged.stderr


def test_deleting_fails(server: Any, nas: Any, placed: dict[str, str]) -> None:
    empty = f"{placed['workdir']}/empty"
    server.check_output(f"{AS_REPLICATION} mkdir -p {empty}")
    directory = placed["relative"].rsplit("/", 1)[0]
    for options in ("--delete", "--delete-after", "--delete-excluded", "--delete-missing-args"):
        command = f"rsync -r {options} -e {shlex.quote(SSH)} {empty}/ chi-nas-replica:{directory}/"
        run = as_replication(server, command)
        assert run.exit != 0, (options, run.out)
        assert f"option {options} has been disabled on this server" in run.stderr, run.stderr
    assert nas_sha256(nas, f"{NAS_ROOT}/{placed['relative']}") == placed["sha256"]


def test_no_shell_command_runs(server: Any, nas: Any, placed: dict[str, str]) -> None:
    marker = f"/tmp/write-only-pwned-{placed['token']}"
    for command in (
        f"touch {marker}; id",
        f"sh -c 'touch {marker}'",
        # rsync first, a command after it: rrsync runs rsync without a shell, so the rest is
        # only more (refused or harmless) file names, never a command.
        f"rsync --server {SERVER_FLAGS} . x\\; touch {marker}",
    ):
        run = as_replication(server, f"timeout 60 {SSH} chi-nas-replica {shlex.quote(command)}")
        assert run.exit != 0, (command, run.out)
        assert "uid=" not in run.out
        assert not nas.file(marker).exists, command
    # Nor a terminal (`restrict`: no pty), and no session without a command either.
    tty = as_replication(server, f"timeout 60 {SSH} -tt chi-nas-replica")
    assert tty.exit != 0, tty.out
    assert "PTY allocation request failed" in tty.stderr, tty.stderr
    assert "uid=" not in tty.out and "$ " not in tty.out


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ("", False),  # another size and a newer time: rsync's quick check would send it
        ("--ignore-times", False),
        ("--ignore-times --inplace", False),
        ("--append", False),
        ("--ignore-times --temp-dir=write-only-test", False),
        ("--ignore-times --backup --suffix=.old", True),
        ("--ignore-times --partial-dir=.p --delay-updates", True),
        ("--ignore-times --delete", True),
    ],
)
def test_overwriting_a_file_on_the_nas_does_not_change_it(
    server: Any, nas: Any, placed: dict[str, str], options: str, refused: bool
) -> None:
    source = f"{placed['workdir']}/tampered"
    relative = placed["relative"]
    server.check_output(
        AS_REPLICATION
        + "sh -c "
        + shlex.quote(
            f"mkdir -p {source}/{relative.rsplit('/', 1)[0]}"
            f" && printf 'tampered %s' {shlex.quote(options)} >{source}/{relative}"
            f" && touch -d '+1 hour' {source}/{relative}"
        )
    )
    run = as_replication(
        server, f"rsync -a -i {options} -e {shlex.quote(SSH)} {source}/ chi-nas-replica:"
    )
    if refused:
        assert run.exit != 0, run.out
        assert "has been disabled on this server" in run.stderr, run.stderr
    else:
        # The run is allowed and succeeds; the NAS just skips the file that exists.
        assert run.exit == 0, run.out + run.stderr
        assert not re.search(rf"^<f\S* {re.escape(relative)}$", run.out, re.MULTILINE), run.out
    assert nas_sha256(nas, f"{NAS_ROOT}/{relative}") == placed["sha256"], run.out + run.stderr
    assert not nas.file(f"{NAS_ROOT}/{relative}.old").exists


def test_a_forged_log_file_option_cannot_append_to_a_copy(
    server: Any, nas: Any, placed: dict[str, str]
) -> None:
    """rsync's server would append its log to any file named by --log-file; rrsync refuses it."""
    command = f"rsync --server --log-file={placed['relative']} {SERVER_FLAGS} . x/"
    run = as_replication(server, f"timeout 60 {SSH} chi-nas-replica {shlex.quote(command)}")
    assert run.exit != 0
    assert "option --log-file has been disabled on this server" in run.stderr, run.stderr
    assert nas_sha256(nas, f"{NAS_ROOT}/{placed['relative']}") == placed["sha256"]
