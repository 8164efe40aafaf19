"""Every ``chi-companion`` command with hostile arguments and hostile surroundings: a non-zero
exit, exactly one line on stderr, never a traceback (issue 14 item 7).

The commands come from the argparse tree itself, so a new command is either in ``COMMANDS``
(which says what it needs) or fails ``test_every_command_is_in_the_table``. Hostile values
for its arguments are derived from the argument types (every integer is an ``IntArg``, every
device an ``device_arg``), so a new option of those kinds is covered without a new line here.

Real files and real SQLite: the databases are made by the companion itself, then damaged.
Each command runs in a process of its own: a driver imports the CLI once and forks one child
per case (a fresh interpreter per case would cost ~1.5 s each on a loaded CI machine), with
the child's stdout and stderr on files, exactly as the console script runs ``main()``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from chi_companion.cli import build_parser
from chi_companion.companion import Companion
from chi_companion.core.cli_support import EXIT_ERROR, EXIT_USAGE, IntArg, device_arg
from chi_companion.core.config import load

from tests.companion_process import free_port, write_config

DEVICE = "chi-eclipse-01"
KEY = "0123456789abcdef0123456789"
HUGE = "99999999999999999999"


@dataclass(frozen=True)
class Command:
    """What a command needs for its arguments to be valid, and what it does with the
    database, so each hostile case differs from a valid call in one thing only."""

    positionals: tuple[str, ...] = ()  # valid values of the required positionals, in order
    options: tuple[str, ...] = ()  # required options with valid values
    database: str = "reads"  # "reads" | "creates" (serve makes it) | "none"
    binds: bool = False  # listens on server.port
    # Exit status of the valid call in a good world: 1 when its arguments name nothing that
    # exists (an id, a file), which test_the_valid_calls_work then expects.
    baseline: int = 0
    extra: tuple[tuple[tuple[str, ...], int, str], ...] = ()  # (argv, exit status, in stderr)


COMMANDS: dict[tuple[str, ...], Command] = {
    ("serve",): Command(database="creates", binds=True),
    ("check-config",): Command(
        database="none",
        extra=(
            (("--config", "{tmp}/release-not-utf8.toml"), EXIT_ERROR, "not UTF-8"),
            (("--config", "{tmp}/release-dir.toml"), EXIT_ERROR, "is a directory"),
        ),
    ),
    ("gen-key",): Command(database="none"),
    ("init-config",): Command(
        options=("--out", "{tmp}/new/companion.toml", "--data-dir", "{tmp}/newdata"),
        database="none",
        extra=(
            (("--out", "{tmp}", "--data-dir", "{tmp}/d"), EXIT_ERROR, "not a regular file"),
            (("--out", "{tmp}/afile/c.toml", "--data-dir", "{tmp}/d"), EXIT_ERROR, "afile"),
            (("--out", "{tmp}/q.toml", "--data-dir", "{tmp}/d", "--host", 'a"b'), 1, "host"),
        ),
    ),
    ("sync-status",): Command(),
    ("sync-prune",): Command(
        options=("--device", DEVICE, "--received-before", "2026-01-01"),
        extra=((("--device", DEVICE, "--received-before", "01/02/2026"), EXIT_USAGE, "date"),),
    ),
    ("backups", "list"): Command(),
    ("backups", "prune"): Command(),
    ("backups", "verify"): Command(),
    ("backups", "restore"): Command(
        positionals=("1", "{tmp}/restored"),
        baseline=EXIT_ERROR,
    ),
    ("db", "backup"): Command(),
    ("db", "restore"): Command(
        positionals=("{tmp}/no-such-backup.db.gz",), database="none", baseline=EXIT_ERROR
    ),
    ("analyses", "list"): Command(),
    ("analyses", "show"): Command(positionals=("1",), baseline=EXIT_ERROR),
    ("analyses", "retry"): Command(positionals=("1",), baseline=EXIT_ERROR),
}


def leaf_commands() -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command of the parser: (("backups", "list"), its parser), ..."""

    def walk(
        path: tuple[str, ...], parser: argparse.ArgumentParser
    ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
            return
        for name, child in subs[0].choices.items():
            yield from walk((*path, name), child)

    yield from walk((), build_parser())


def test_every_command_is_in_the_table() -> None:
    found = {path for path, _parser in leaf_commands()}
    missing = sorted(found - COMMANDS.keys())
    assert not missing, f"add {missing} to COMMANDS in tests/test_cli_hostile.py"
    assert not COMMANDS.keys() - found, "COMMANDS names a command the CLI no longer has"


def test_no_argument_takes_an_unchecked_integer() -> None:
    """Plain ``type=int`` takes 99999999999999999999 and -1: every integer is an IntArg."""
    for path, parser in leaf_commands():
        for action in parser._actions:
            assert action.type is not int, (path, action.dest, "use IntArg(minimum, maximum)")
            if action.dest in ("device", "id", "limit", "drive"):
                assert action.type is not None, (path, action.dest, "needs a checked type")


# --------------------------------------------------------------------------------------------
# The surroundings: real configs, real databases, each broken in one way.


def _sections(data_dir: Path, port: int) -> dict[str, dict[str, object]]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "data_dir": str(data_dir)},
        "ollama": {"url": "http://127.0.0.1:9"},
        "analysis": {"auto": False},
        # The digest, not the key: a key in clear makes every command warn on stderr.
        f"devices.{DEVICE}": {"api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()},
    }


@dataclass
class World:
    tmp: Path
    port: int = field(default_factory=free_port)
    configs: dict[str, Path] = field(default_factory=dict)
    # Database files that a failing command must not create.
    must_stay_absent: dict[str, Path] = field(default_factory=dict)

    def config(self, name: str, data_dir: Path, port: int | None = None, **extra: object) -> Path:
        path = self.tmp / f"{name}.toml"
        sections = _sections(data_dir, self.port if port is None else port)
        if extra:
            sections["release"] = dict(extra)
        write_config(path, sections)
        self.configs[name] = path
        return path


def _real_database(data_dir: Path, tmp: Path) -> Path:
    """A database made by the companion's own start-up code (schemas, WAL, checkpointed)."""
    cfg = tmp / f"make-{data_dir.name}.toml"
    write_config(cfg, _sections(data_dir, 9))
    companion = Companion.from_config(load(cfg, env={}))
    companion.prepare_storage()
    companion.close()
    return data_dir / "companion.db"


def make_world(tmp: Path) -> World:
    world = World(tmp)
    good = tmp / "good"
    _real_database(good, tmp)
    world.config("good", good)

    # Broken configs.
    (tmp / "config-dir.toml").mkdir()
    world.configs["config-dir"] = tmp / "config-dir.toml"
    world.configs["config-not-utf8"] = tmp / "config-not-utf8.toml"
    world.configs["config-not-utf8"].write_bytes(b'[server]\nhost = "\xff\xfe"\n')
    world.configs["config-missing"] = tmp / "config-missing.toml"

    # No database yet: the data directory exists (empty) or does not exist at all.
    (tmp / "empty").mkdir()
    world.config("no-database", tmp / "empty")
    world.must_stay_absent["no-database"] = tmp / "empty" / "companion.db"
    world.config("no-data-dir", tmp / "nothing-here")
    world.must_stay_absent["no-data-dir"] = tmp / "nothing-here"

    # Damaged databases.
    garbage = tmp / "garbage"
    garbage.mkdir()
    (garbage / "companion.db").write_bytes(os.urandom(8192))
    world.config("db-garbage", garbage)

    header = _real_database(tmp / "header", tmp)
    with open(header, "r+b") as fh:  # the schema page, after the 100-byte file header
        fh.seek(100)
        fh.write(b"\xab" * 3996)
    world.config("db-schema-damaged", tmp / "header")

    tables = _real_database(tmp / "tables", tmp)
    size = tables.stat().st_size
    with open(tables, "r+b") as fh:  # every page but the first (header and schema intact)
        fh.seek(4096)
        fh.write(b"\xcd" * (size - 4096))
    world.config("db-tables-damaged", tmp / "tables")

    (tmp / "dbdir" / "companion.db").mkdir(parents=True)
    world.config("db-is-directory", tmp / "dbdir")

    (tmp / "afile").write_text("not a directory\n")
    world.config("data-dir-is-file", tmp / "afile")

    # Release records check-config reads.
    (tmp / "release-not-utf8.json").write_bytes(b'{"version": "\xff"}')
    world.config("release-not-utf8", good, record_path=str(tmp / "release-not-utf8.json"))
    (tmp / "release.json").mkdir()
    world.config("release-dir", good, record_path=str(tmp / "release.json"))
    return world


DATABASE_STATES_READ = (
    "no-database",
    "no-data-dir",
    "db-garbage",
    "db-schema-damaged",
    "db-tables-damaged",
    "db-is-directory",
    "data-dir-is-file",
)
# serve creates a missing database (that is its job), so only the broken ones apply to it.
DATABASE_STATES_CREATE = (
    "db-garbage",
    "db-schema-damaged",
    "db-tables-damaged",
    "db-is-directory",
    "data-dir-is-file",
)
BROKEN_CONFIGS = ("config-dir", "config-not-utf8", "config-missing")


# --------------------------------------------------------------------------------------------
# The cases: one valid call per command, then each hostile change of it.


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    status: int  # the exit status expected
    says: str = ""  # a fragment the one stderr line must hold
    absent: str = ""  # a path that must still not exist afterwards


def _has_config(parser: argparse.ArgumentParser) -> bool:
    return any("--config" in a.option_strings for a in parser._actions)


def cases_for(path: tuple[str, ...], parser: argparse.ArgumentParser, world: World) -> list[Case]:
    spec = COMMANDS[path]
    fmt = {"tmp": str(world.tmp)}
    positionals = [v.format(**fmt) for v in spec.positionals]
    options = [v.format(**fmt) for v in spec.options]
    with_config = _has_config(parser)

    def argv(state: str = "good", pos: list[str] | None = None, *more: str) -> tuple[str, ...]:
        config = ("--config", str(world.configs[state])) if with_config else ()
        return (*path, *(positionals if pos is None else pos), *options, *more, *config)

    cases: list[Case] = []
    if with_config:
        for state in BROKEN_CONFIGS:
            cases.append(Case(state, argv(state), EXIT_ERROR, "(file)"))
    states = {"reads": DATABASE_STATES_READ, "creates": DATABASE_STATES_CREATE}.get(
        spec.database, ()
    )
    for state in states:
        absent = world.must_stay_absent.get(state)
        cases.append(Case(state, argv(state), EXIT_ERROR, absent=str(absent or "")))
    if spec.binds:
        cases.append(Case("port-in-use", argv("port-in-use"), EXIT_ERROR, "port in use"))

    positional_actions = [a for a in parser._actions if not a.option_strings]
    for action in parser._actions:
        if isinstance(action.type, IntArg):
            bad = [HUGE, str(action.type.maximum + 1), str(action.type.minimum - 1)]
            bad += ["abc", "", "1e3", "\u0663", " 1"]
            for value in bad:
                name = f"{action.dest}={value!r}"
                if action.option_strings:
                    cases.append(Case(name, argv("good", None, action.option_strings[0], value), 2))
                else:
                    pos = list(positionals)
                    pos[positional_actions.index(action)] = value
                    cases.append(Case(name, argv("good", pos), EXIT_USAGE))
            if not action.option_strings and action.type.minimum >= 1:
                # A valid id that names nothing, in a real database: an error, as a 404.
                cases.append(Case(f"{action.dest}-unknown", argv("good"), EXIT_ERROR, "no "))
        elif action.type is device_arg:
            for value in ("bad id!", "", "-", "x" * 65):
                opt = action.option_strings[0]
                cases.append(Case(f"device={value!r}", argv("good", None, opt, value), EXIT_USAGE))
            if spec.database != "none":
                cases.append(
                    Case(
                        "device-unknown",
                        argv("good", None, action.option_strings[0], "nope"),
                        EXIT_ERROR,
                        "unknown device",
                    )
                )
        elif action.choices is not None and action.option_strings and action.dest != "help":
            opt = action.option_strings[0]
            cases.append(Case(f"{action.dest}=bogus", argv("good", None, opt, "bogus"), EXIT_USAGE))
    cases.append(Case("unknown-option", argv("good", None, "--bogus"), EXIT_USAGE, "--bogus"))
    for more, status, says in spec.extra:
        extra_argv = tuple(v.format(**fmt) for v in more)
        cases.append(Case(f"extra:{' '.join(more)}", (*path, *extra_argv), status, says))
    return cases


# --------------------------------------------------------------------------------------------
# The driver: imports the CLI once, forks a child per case.

DRIVER = r"""
import json, os, signal, sys, time, traceback
from chi_companion.cli import main

cases, out_dir, timeout = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
results = []
for i, argv in enumerate(cases):
    out, err = f"{out_dir}/{i}.out", f"{out_dir}/{i}.err"
    pid = os.fork()
    if pid == 0:
        os.setsid()  # its own group: a serve that starts by mistake is killed whole
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT), 2)
        sys.argv = ["chi-companion", *argv]
        # What the console script (sys.exit(main())) and the interpreter do with the outcome.
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc()
            code = 1
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + timeout
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        else:
            time.sleep(0.01)
    results.append({"status": status, "stdout": open(out, errors="replace").read(),
                    "stderr": open(err, errors="replace").read()})
print(json.dumps(results))
"""


def run_cases(cases: list[Case], tmp: Path, timeout: float = 30.0) -> list[dict[str, object]]:
    out_dir = tmp / "out"
    out_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPANION_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            json.dumps([list(c.argv) for c in cases]),
            str(out_dir),
            str(timeout),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=timeout * len(cases) + 60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, object]] = json.loads(proc.stdout)
    return results


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = make_world(tmp_path)
    # A port another process holds (listening), for serve.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    built.config("port-in-use", tmp_path / "good", port=holder.getsockname()[1])
    yield built
    holder.close()


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_hostile_arguments_end_in_one_line(path: tuple[str, ...], world: World) -> None:
    parser = dict(leaf_commands())[path]
    cases = cases_for(path, parser, world)
    results = run_cases(cases, world.tmp)
    failures = []
    for case, result in zip(cases, results, strict=True):
        stderr = str(result["stderr"])
        lines = stderr.splitlines()
        problems = []
        if result["status"] != case.status:
            problems.append(f"exit {result['status']}, expected {case.status}")
        if len(lines) != 1 or not lines[0].strip():
            problems.append(f"{len(lines)} lines on stderr")
        if "Traceback" in stderr + str(result["stdout"]):
            problems.append("a traceback")
        if case.says and case.says not in stderr:
            problems.append(f"stderr does not say {case.says!r}")
        if case.absent and Path(case.absent).exists():
            problems.append(f"{case.absent} was created")
        if problems:
            failures.append(f"{' '.join(case.argv)}: {'; '.join(problems)}\n    {stderr!r}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def test_the_valid_calls_work(world: World) -> None:
    """The baseline every hostile case changes in one place is itself a valid call."""
    cases = []
    for path, parser in leaf_commands():
        spec = COMMANDS[path]
        if path == ("serve",):
            continue  # runs until stopped: test_serve_port_in_use starts a real one
        fmt = {"tmp": str(world.tmp)}
        argv = [*path, *(v.format(**fmt) for v in spec.positionals)]
        argv += [v.format(**fmt) for v in spec.options]
        if _has_config(parser):
            argv += ["--config", str(world.configs["good"])]
        cases.append(Case(" ".join(path), tuple(argv), spec.baseline))
    results = run_cases(cases, world.tmp)
    for case, result in zip(cases, results, strict=True):
        assert result["status"] == case.status, (case.argv, result)
        assert "Traceback" not in str(result["stderr"]), (case.argv, result)


# --------------------------------------------------------------------------------------------
# End to end through the installed console script.


@pytest.mark.slow(seconds=15)
def test_serve_port_in_use_leaves_the_running_instance_alone(
    make_companion: object, tmp_path: Path
) -> None:
    """A second serve on a taken port says "port in use" in one line, before it writes into
    the running instance's log or touches its data directory."""
    comp = make_companion()  # type: ignore[operator]
    log_file = comp.data_dir / "logs" / "companion.log"
    deadline = time.monotonic() + 10
    while "listening on" not in log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    before = log_file.read_text()
    assert before.count("listening on") == 1
    # An upload's temp file the second instance would have removed, had it reconciled.
    temp = comp.data_dir / "backups" / comp.device / "database" / ".upload-hostile.tmp"
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"in progress")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPANION_")}
    second = subprocess.run(
        [
            str(Path(sys.executable).parent / "chi-companion"),
            "serve",
            "--config",
            str(comp.config_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert second.returncode == EXIT_ERROR, second
    assert second.stderr.count("\n") == 1 and "port in use" in second.stderr, second.stderr
    assert f"127.0.0.1:{comp.port}" in second.stderr
    assert log_file.read_text() == before
    assert temp.read_bytes() == b"in progress"
    assert comp.proc is not None and comp.proc.poll() is None
    comp.stop(signal.SIGTERM)


@pytest.mark.slow(seconds=20)
def test_console_script_on_a_corrupt_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "companion.db").write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    config = tmp_path / "c.toml"
    write_config(config, _sections(data, free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPANION_")}
    for argv in (["sync-status"], ["backups", "verify"], ["serve"]):
        result = subprocess.run(
            [str(Path(sys.executable).parent / "chi-companion"), *argv, "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == EXIT_ERROR, (argv, result)
        assert result.stderr.count("\n") == 1, (argv, result.stderr)
        assert str(data / "companion.db") in result.stderr, (argv, result.stderr)


def test_an_unexpected_error_is_one_line_and_status_70_and_debug_shows_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last resort: a bug still ends in one line (status 70, not the 1 of a handled
    error, so the hostile cases above cannot pass through it); --debug adds the traceback."""
    from chi_companion import cli
    from chi_companion.sync import cli as sync_cli

    def broken(_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sync_cli, "config_from", broken)
    assert cli.main(["sync-status", "--config", "unused.toml"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "--debug" in err
    assert cli.main(["--debug", "sync-status", "--config", "unused.toml"]) == 70
    assert "Traceback" in capsys.readouterr().err
