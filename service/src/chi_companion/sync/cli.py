"""``chi-companion sync-status``: what each device has synced, read from the database."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from ..core.cli_support import Handler, config_from, configured_device, device_arg, open_database
from .store import SyncStore

AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]


def cmd_sync_status(args: argparse.Namespace) -> int:
    config = config_from(args)
    # Read-only: the status of the last syncs, straight from the database (WAL lets the
    # running server write meanwhile). Rejections live in the server's memory, so none here.
    devices = [configured_device(config, args.device)] if args.device else sorted(config.devices)
    store = SyncStore(config.sync.history_max_age_days, config.sync.history_max_entries)
    db = open_database(config)
    report = [store.status(db.conn(), dev) for dev in devices]
    print(json.dumps(report, indent=2))
    return 0


def register(add: AddCommand) -> None:
    status = add("sync-status", cmd_sync_status, "print what each device has synced")
    status.add_argument("--device", type=device_arg, help="only this device")
