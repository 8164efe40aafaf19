"""``chi-companion backups list|prune|verify|restore``: the operator's side of the backups.

These run as a separate process next to the server (SQLite WAL lets both use the catalog at
once). Run them as the service's user, so files they touch keep the right owner.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.cli_support import AddGroup, CliError, config_from, device_arg, open_database, record_id
from ..core.config import BACKUP_TYPES, Config
from ..core.files import copy_atomic
from ..core.units import human_size
from . import retention
from .store import SCHEMA as BACKUP_SCHEMA
from .store import Backup, BackupStore, PruneResult

EXIT_OK = 0
EXIT_PROBLEM = 1


def _open_store(args: argparse.Namespace) -> BackupStore:
    config: Config = config_from(args)
    db = open_database(config)
    # The schema exists once the service has run; this is a no-op then, and makes the
    # command work against a catalog written by a version from before backups existed.
    db.migrate(BACKUP_SCHEMA)
    store = BackupStore.from_config(config, db)
    device = getattr(args, "device", None)
    # A device the config no longer names keeps its backups listed (and prunable): unknown
    # is a device neither configured nor in the catalog, a typo the API would answer 404.
    known = config.devices.keys() | {dev for dev, _type in store.groups()}
    if device is not None and device not in known:
        raise CliError(
            f"unknown device {device!r}: not in {config.source} and no backups in the catalog"
        )
    return store


def _row(b: Backup) -> str:
    return (
        f"{b.id:>6}  {b.device_id:<16} {b.type:<8} {b.received_at}  {human_size(b.size):>10}  "
        f"{b.sha256[:12]}  {b.name}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    store = _open_store(args)
    backups = store.list(args.device, args.type)
    if args.json:
        print(json.dumps({"backups": [b.as_json() for b in backups]}, indent=2))
        return EXIT_OK
    header = f"{'ID':>6}  {'DEVICE':<16} {'TYPE':<8} {'RECEIVED':<20}  {'SIZE':>10}  SHA256"
    print(f"{header}        NAME")
    for backup in backups:
        print(_row(backup))
    total = sum(b.size for b in backups)
    print(f"{len(backups)} backup(s), {human_size(total)}")
    return EXIT_OK


def _print_prune(result: PruneResult, dry_run: bool) -> tuple[int, int]:
    print(
        f"{result.device_id}/{result.type}: {retention.describe(result.policy)}"
        f" (backups.retention.{result.type})"
    )
    kept = removed = 0
    for backup, decision in result.decisions:
        if decision.keep:
            kept += 1
            verdict, why = "keep  ", f"({', '.join(decision.reasons)})"
        else:
            removed += 1
            verdict, why = "would remove" if dry_run else "remove", ""
        print(f"  {verdict:<12} {backup.id:>6}  {backup.received_at}  {backup.name}  {why}")
    return kept, removed


def cmd_prune(args: argparse.Namespace) -> int:
    store = _open_store(args)
    groups = [
        (dev, btype)
        for dev, btype in store.groups()
        if (args.device is None or dev == args.device) and (args.type is None or btype == args.type)
    ]
    kept = removed = 0
    for device_id, backup_type in groups:
        result = store.prune(device_id, backup_type, dry_run=args.dry_run)
        k, r = _print_prune(result, args.dry_run)
        kept += k
        removed += r
    note = " (dry run: nothing was deleted)" if args.dry_run else ""
    verb = "to remove" if args.dry_run else "removed"
    print(f"{kept} kept, {removed} {verb}{note}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    store = _open_store(args)
    report = store.verify()
    for backup in report.missing:
        print(f"MISSING    {backup.id:>6}  {store.path_of(backup)}")
    for backup, why in report.corrupt:
        print(f"CORRUPT    {backup.id:>6}  {store.path_of(backup)}: {why}")
    for path in report.untracked:
        print(f"UNTRACKED          {path}")
    for path in report.temp:
        # An upload in progress, or a crash's leftover the next start removes: not a problem.
        print(f"TEMPORARY          {path}")
    print(
        f"{report.checked} file(s) re-hashed ({human_size(report.bytes)}): "
        f"{len(report.missing)} missing, {len(report.corrupt)} corrupt, "
        f"{len(report.untracked)} untracked"
    )
    return EXIT_OK if report.ok else EXIT_PROBLEM


def cmd_restore(args: argparse.Namespace) -> int:
    """Copy a backup to DEST through a temp file, checking size and sha256 before the name
    appears; never overwrite unless --force."""
    store = _open_store(args)
    backup = store.get(args.id)
    if backup is None:
        print(f"no backup with id {args.id}", file=sys.stderr)
        return EXIT_PROBLEM
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / backup.name
    if (dest.exists() or dest.is_symlink()) and not args.force:
        print(f"{dest} exists; pass --force to replace it", file=sys.stderr)
        return EXIT_PROBLEM
    if not dest.parent.is_dir():
        print(f"directory {dest.parent} does not exist", file=sys.stderr)
        return EXIT_PROBLEM
    source = store.path_of(backup)
    try:
        size, digest = copy_atomic(source, dest, expect=(backup.size, backup.sha256))
    except FileNotFoundError:
        print(f"backup {backup.id}: file {source} is missing", file=sys.stderr)
        return EXIT_PROBLEM
    if (size, digest) != (backup.size, backup.sha256):
        print(
            f"backup {backup.id} is damaged: {size} bytes with sha256 {digest}, "
            f"the catalog recorded {backup.size} bytes with {backup.sha256}; nothing written",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    print(
        f"restored backup {backup.id} to {dest}: {human_size(size)},"
        f" sha256 {backup.sha256} verified"
    )
    if backup.name.endswith(".gz"):
        print(f"it is gzip-compressed: gunzip -k {dest}")
    return EXIT_OK


def register(add_group: AddGroup) -> None:
    """Add the ``backups`` command group to the ``chi-companion`` parser (see cli.py)."""
    action = add_group("backups", "list, prune, verify and restore stored backups")

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", type=device_arg, help="only this device")
        p.add_argument("--type", choices=BACKUP_TYPES, help="only this type")

    lister = action("list", cmd_list, "list backups, newest first")
    filters(lister)
    lister.add_argument("--json", action="store_true", help="print JSON like the API")
    pruner = action(
        "prune",
        cmd_prune,
        "apply the retention policy now and print, for every backup, kept or removed and why",
    )
    filters(pruner)
    pruner.add_argument("--dry-run", action="store_true", help="only print what would happen")
    action(
        "verify",
        cmd_verify,
        "re-hash every file against the catalog; exit 1 on missing, corrupt or untracked files",
    )
    restorer = action("restore", cmd_restore, "copy backup ID to DEST and check its sha256")
    restorer.add_argument("id", type=record_id, metavar="ID")
    restorer.add_argument("dest", metavar="DEST", help="file to create, or a directory")
    restorer.add_argument("--force", action="store_true", help="replace DEST if it exists")
