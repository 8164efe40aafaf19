"""``chi-companion sync-status`` and ``sync-prune``: what each device has synced, read from
the database, and removing old rows to bring a device back under its quota."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime

from ..core.cli_support import (
    Handler,
    config_from,
    configured_device,
    device_arg,
    open_database,
)
from ..core.units import human_size
from .store import SCHEMA, SyncStore

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


def cmd_sync_prune(args: argparse.Namespace) -> int:
    config = config_from(args)
    device = configured_device(config, args.device)
    db = open_database(config)
    # A database from before quotas gets its usage table (counted once) like at a start.
    db.migrate(SCHEMA)
    before = args.received_before.strftime("%Y-%m-%dT%H:%M:%SZ")
    found = SyncStore.prune_rows(db.conn(), device, before, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for table, (rows, size) in sorted(found.items()):
        print(f"{device}/{table}: {verb} {rows} row(s), {human_size(size)}")
    total = sum(size for _, size in found.values())
    print(
        f"{verb} {sum(n for n, _ in found.values())} row(s) received before {before}, "
        f"{human_size(total)}; {device} now stores "
        f"{human_size(SyncStore.usage(db.conn(), device))} of synced rows"
    )
    return 0


def utc_date(raw: str) -> datetime:
    """--received-before: a day, read as its midnight UTC."""
    try:
        return datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"wants a date like 2026-01-31 (UTC), got {raw!r}"
        ) from None


def register(add: AddCommand) -> None:
    status = add("sync-status", cmd_sync_status, "print what each device has synced")
    status.add_argument("--device", type=device_arg, help="only this device")
    prune = add(
        "sync-prune",
        cmd_sync_prune,
        "remove a device's synced rows received before a date (frees its synced-data quota)",
    )
    prune.add_argument("--device", required=True, type=device_arg, help="the device whose rows go")
    prune.add_argument(
        "--received-before",
        required=True,
        type=utc_date,
        metavar="YYYY-MM-DD",
        help="UTC date; rows from before its midnight go",
    )
    prune.add_argument("--dry-run", action="store_true", help="only print what would go")
