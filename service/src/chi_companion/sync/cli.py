"""``chi-companion sync-status`` and ``sync-prune``: what each device has synced, read from
the database, and removing old rows to bring a device back under its quota."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from ..core.cli_support import Handler, config_from
from ..core.db import Database
from ..core.units import human_size
from .store import SCHEMA, SyncStore

AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]


def cmd_sync_status(args: argparse.Namespace) -> int:
    config = config_from(args)
    # Read-only: the status of the last syncs, straight from the database (WAL lets the
    # running server write meanwhile). Rejections live in the server's memory, so none here.
    store = SyncStore(config.sync.history_max_age_days, config.sync.history_max_entries)
    db = Database(config.db_path)
    devices = [args.device] if args.device else sorted(config.devices)
    report = [store.status(db.conn(), dev) for dev in devices]
    print(json.dumps(report, indent=2))
    return 0


def cmd_sync_prune(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.device not in config.devices:
        print(f"no device {args.device!r} in {config.source}", file=sys.stderr)
        return 1
    try:
        day = datetime.strptime(args.received_before, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        print("--received-before must be a date like 2026-01-31 (UTC)", file=sys.stderr)
        return 1
    if not config.db_path.exists():
        print(f"no database at {config.db_path}: nothing to prune", file=sys.stderr)
        return 1
    db = Database(config.db_path)
    # A database from before quotas gets its usage table (counted once) like at a start.
    db.migrate(SCHEMA)
    before = day.strftime("%Y-%m-%dT%H:%M:%SZ")
    found = SyncStore.prune_rows(db.conn(), args.device, before, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for table, (rows, size) in sorted(found.items()):
        print(f"{args.device}/{table}: {verb} {rows} row(s), {human_size(size)}")
    total = sum(size for _, size in found.values())
    print(
        f"{verb} {sum(n for n, _ in found.values())} row(s) received before {before}, "
        f"{human_size(total)}; {args.device} now stores "
        f"{human_size(SyncStore.usage(db.conn(), args.device))} of synced rows"
    )
    return 0


def register(add: AddCommand) -> None:
    status = add("sync-status", cmd_sync_status, "print what each device has synced")
    status.add_argument("--device", help="only this device")
    prune = add(
        "sync-prune",
        cmd_sync_prune,
        "remove a device's synced rows received before a date (frees its synced-data quota)",
    )
    prune.add_argument("--device", required=True, help="the device whose rows go")
    prune.add_argument(
        "--received-before",
        required=True,
        metavar="YYYY-MM-DD",
        help="UTC date; rows from before its midnight go",
    )
    prune.add_argument("--dry-run", action="store_true", help="only print what would go")
