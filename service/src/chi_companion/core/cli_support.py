"""What every ``chi-companion`` command shares: where the config comes from and the shape of
a command group's action adder (features register their groups through it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .config import Config, load, resolve_path

DEFAULT_CONFIG = "/etc/chi-companion/companion.toml"
Handler = Callable[[argparse.Namespace], int]
# A command group's action adder: (action name, handler, help text) -> the action's parser.
AddAction = Callable[[str, Handler, str], argparse.ArgumentParser]
AddGroup = Callable[[str, str], AddAction]


def config_path(args: argparse.Namespace) -> str:
    return resolve_path(args.config) or DEFAULT_CONFIG


def config_from(args: argparse.Namespace) -> Config:
    return load(config_path(args))
