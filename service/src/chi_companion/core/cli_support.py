"""What every ``chi-companion`` command shares: where the config comes from, the shape of a
command group's action adder (features register their groups through it), the argument types
that refuse what the API refuses, and the database opener for commands run next to the service.

A command never ends in a traceback: it raises ``CliError`` (or a domain error such as
``ConfigError``, ``sqlite3.Error`` or ``OSError``) and ``cli.main()`` prints one line and
returns the exit status documented in docs/troubleshooting.md.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from .config import Config, load, resolve_path
from .db import Database
from .ids import DEVICE_ID_RULE, INT64_MAX, INT64_MIN, is_device_id, parse_int

DEFAULT_CONFIG = "/etc/chi-companion/companion.toml"
Handler = Callable[[argparse.Namespace], int]
# A command group's action adder: (action name, handler, help text) -> the action's parser.
AddAction = Callable[[str, Handler, str], argparse.ArgumentParser]
AddGroup = Callable[[str, str], AddAction]

# Exit statuses (docs/troubleshooting.md, "Exit codes of chi-companion"): scripts branch on
# them, so only add, never renumber.
EXIT_OK = 0
EXIT_ERROR = 1  # the command could not do its job: config, database, file, unknown id or device
EXIT_USAGE = 2  # a bad argument (argparse's own status)
EXIT_INTERNAL = 70  # a bug (EX_SOFTWARE): rerun with --debug for the traceback
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """One line for the operator on stderr, and the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find help) instead of the usage
    block and the error: scripts and cron mail get a single, greppable line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def config_path(args: argparse.Namespace) -> str:
    return resolve_path(args.config) or DEFAULT_CONFIG


def config_from(args: argparse.Namespace) -> Config:
    config = load(config_path(args))
    # Kept so main() can name the database when an sqlite3 error ends the command.
    args.loaded_config = config
    return config


@dataclass(frozen=True)
class IntArg:
    """An argparse type: an integer within [minimum, maximum], as the API's parameters.

    argparse's plain ``int`` takes any size: 99999999999999999999 would reach SQLite and end
    in an OverflowError, and ``--limit -1`` would mean "no limit" there."""

    minimum: int = INT64_MIN
    maximum: int = INT64_MAX

    def __call__(self, raw: str) -> int:
        value = parse_int(raw, self.minimum, self.maximum)
        if value is None:
            raise argparse.ArgumentTypeError(
                f"{raw[:40]!r} is not an integer from {self.minimum} to {self.maximum}"
            )
        return value


# Stored ids (backups, analyses) are positive 64-bit integers, as in the API's paths.
record_id = IntArg(1, INT64_MAX)


def device_arg(raw: str) -> str:
    """An argparse type: a device id of the form the config and the API accept."""
    if not is_device_id(raw):
        raise argparse.ArgumentTypeError(f"{raw[:70]!r} is not a device id ({DEVICE_ID_RULE})")
    return raw


def configured_device(config: Config, device: str) -> str:
    """The device, if the config defines it: like the API's 404 "unknown device", so a typo
    is an error rather than an empty listing."""
    if device not in config.devices:
        raise CliError(f"unknown device {device!r}: no [devices.{device}] in {config.source}")
    return device


def open_database(config: Config) -> Database:
    """The service's database, for a command run next to it.

    Never created here: a database created by whoever runs the command (often root) could
    not be written by the service afterwards. "No database yet" (the service has never
    started) and "not a readable database" (corrupt, a directory, no permission) are told
    apart, each in one line naming the file."""
    path = config.db_path
    if not path.exists():
        raise CliError(
            f"no database at {path} yet: start the service once (it creates it), "
            "or check server.data_dir"
        )
    if not path.is_file():
        raise CliError(f"{path} is not a database file")
    db = Database(path)
    try:
        db.conn().execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        db.close_all()
        raise CliError(f"cannot read the database {path}: {exc}") from None
    return db
