"""``chi-companion db backup`` and ``chi-companion db restore FILE``.

Both work as the owner of the data directory: run as root (the operator's ``sudo``), they
first open what root must open (the config, the file to restore) and then drop to that owner,
so every file they create (copies, a restored database, SQLite's -wal/-shm) belongs to the
service user, as the replication wrapper does. Every failure is one line on stderr and exit 1
with nothing changed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import BinaryIO

from ..companion import Companion
from ..core import service_lock
from ..core.cli_support import AddGroup, config_from
from ..core.config import Config
from ..core.errors import DomainError
from ..core.files import is_disk_full
from ..core.units import human_size
from . import restore, snapshot

EXIT_OK = 0
EXIT_PROBLEM = 1
SERVICE = "chi-companion"


def _fail(command: str, message: str) -> int:
    print(f"chi-companion db {command}: {message}", file=sys.stderr)
    return EXIT_PROBLEM


def _as_data_owner(data_dir: Path) -> tuple[int, int] | None:
    """Drop root to the data directory's owner; return (uid, gid) of that owner."""
    st = data_dir.stat()
    if os.geteuid() == 0 and st.st_uid != 0:
        os.setgroups([])
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)
    return st.st_uid, st.st_gid


def _rows(rows: dict[str, int]) -> str:
    return ", ".join(f"{table} {count}" for table, count in rows.items())


def _data_dir(config: Config) -> Path:
    data_dir = config.data_dir
    if not data_dir.is_dir():
        raise DomainError(
            "no data directory",
            f"{data_dir} does not exist (server.data_dir in {config.source})",
        )
    return data_dir


def cmd_backup(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
        data_dir = _data_dir(config)
        _as_data_owner(data_dir)
        made = snapshot.make_backup(
            config.db_path, snapshot.backup_dir(data_dir), config.db_backup.policy
        )
    except DomainError as exc:
        return _fail("backup", f"{exc.error}: {exc.detail}")
    except OSError as exc:
        why = "the disk is full" if is_disk_full(exc) else str(exc)
        return _fail("backup", f"{why}; nothing was stored")
    pruned = f"; retention removed {len(made.removed)} older copy(ies)" if made.removed else ""
    print(
        f"{made.path}: {human_size(made.size)} ({human_size(made.db_size)} unpacked), "
        f"integrity ok; rows: {_rows(made.rows)}{pruned}"
    )
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    source: BinaryIO | None = None
    checked: Path | None = None
    try:
        config = config_from(args)
        data_dir = _data_dir(config)
        # Opened before dropping root: the file may sit where only root can read it.
        try:
            source = open(args.file, "rb")  # noqa: SIM115 - closed in finally
        except OSError as exc:
            return _fail("restore", f"cannot read {args.file}: {exc.strerror}; nothing was changed")
        owner = _as_data_owner(data_dir)
        with service_lock.exclusive(data_dir, SERVICE):
            checked = data_dir / f".{config.db_path.name}.restore.{os.getpid()}.tmp"
            restore.unpack(source, args.file, checked)
            schemas = Companion.from_config(config).schemas
            rows = restore.check(checked, args.file, schemas)
            aside = restore.swap(checked, config.db_path, owner)
            checked = None
    except DomainError as exc:
        return _fail("restore", f"{exc.error}: {exc.detail}")
    except OSError as exc:
        why = "the disk is full" if is_disk_full(exc) else str(exc)
        return _fail("restore", f"{why}; nothing was changed")
    finally:
        if source is not None:
            source.close()
        if checked is not None:
            for suffix in ("", *restore.SIDE_FILES):
                checked.with_name(checked.name + suffix).unlink(missing_ok=True)
    kept = f"; the previous database is kept as {aside}" if aside else ""
    print(
        f"restored {args.file} into {config.db_path} (rows: {_rows(rows)}){kept}; "
        f"start the service: sudo systemctl start {SERVICE}"
    )
    return EXIT_OK


def register(add_group: AddGroup) -> None:
    """Add the ``db`` command group to the ``chi-companion`` parser (see cli.py)."""
    action = add_group("db", "back up and restore the companion's own database")
    action(
        "backup",
        cmd_backup,
        "copy companion.db online into db-backups/ (checked, gzipped), then apply [db_backup]"
        " retention",
    )
    restorer = action(
        "restore",
        cmd_restore,
        "replace companion.db by a db backup FILE (checked first; the service must be stopped;"
        " the current database is kept aside)",
    )
    restorer.add_argument("file", metavar="FILE", help="a companion-*.db.gz from db-backups/")
