"""An online, checked, gzipped copy of ``companion.db`` in ``db-backups/``, and its retention.

Why not ``cp``: the database runs in WAL mode, so the main file alone misses every commit not
yet checkpointed, and a copy taken during a checkpoint is torn. SQLite's backup API copies
every page in one step inside one read transaction: a consistent snapshot while the server
keeps writing (WAL readers never block the writer). The copy is switched to a rollback
journal (one self-contained file), checked with ``PRAGMA integrity_check``, then gzipped into
place atomically. Copies are named by their UTC time, so ``ls`` sorts them by age and the
retention reads their age from the name, not from an mtime that a copy to the NAS changes.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..backups import retention
from ..core.db import BUSY_TIMEOUT_MS
from ..core.errors import DomainError, NotFound
from ..core.files import CHUNK, atomic_file

DIR_NAME = "db-backups"
NAME_RE = re.compile(r"companion-(\d{8}T\d{6}Z)\.db\.gz")
STAMP = "%Y%m%dT%H%M%SZ"


class BackupFailed(DomainError):
    """The copy could not be made or did not pass its check; nothing was stored."""


@dataclass(frozen=True)
class Made:
    path: Path
    size: int
    db_size: int
    rows: dict[str, int]
    removed: tuple[Path, ...]


def backup_dir(data_dir: Path) -> Path:
    return data_dir / DIR_NAME


def name_for(when: datetime) -> str:
    return f"companion-{when.astimezone(UTC).strftime(STAMP)}.db.gz"


def time_of(name: str) -> datetime | None:
    match = NAME_RE.fullmatch(name)
    if not match:
        return None
    s = match.group(1)
    # Sliced, not strptime: strptime imports a module lazily, and the CLI may have dropped
    # root by then to a user who cannot read the installation's files.
    try:
        return datetime(
            int(s[0:4]),
            int(s[4:6]),
            int(s[6:8]),
            int(s[9:11]),
            int(s[11:13]),
            int(s[13:15]),
            tzinfo=UTC,
        )
    except ValueError:  # e.g. month 13: not a name this module wrote
        return None


def existing(directory: Path) -> list[tuple[Path, datetime]]:
    """The copies in ``directory`` (only names this module writes), newest first."""
    if not directory.is_dir():
        return []
    found = [(p, when) for p in directory.iterdir() if (when := time_of(p.name)) is not None]
    return sorted(found, key=lambda item: item[1], reverse=True)


def table_rows(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    # The names come from the file's own catalog: quoted, never interpolated raw.
    return {
        name: int(
            conn.execute(f'SELECT count(*) FROM "{name.replace(chr(34), 2 * chr(34))}"').fetchone()[
                0
            ]
        )
        for name in names
    }


def _free_name(directory: Path) -> Path:
    # One copy per second at most: a second run within the same second waits for the next, so
    # names stay unique and sorted without a suffix that would sort out of order.
    while True:
        path = directory / name_for(datetime.now(UTC))
        if not path.exists():
            return path
        time.sleep(0.2)


def _snapshot(db_path: Path, snap: Path) -> dict[str, int]:
    source = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        target = sqlite3.connect(snap, isolation_level=None)
        try:
            source.backup(target)  # pages=-1: all pages in one step, one read transaction
            target.execute("PRAGMA journal_mode=DELETE")
            problems = [row[0] for row in target.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupFailed(
                    "integrity check failed",
                    f"the copy of {db_path} fails PRAGMA integrity_check ({problems[0]}); "
                    "the database itself may be damaged: nothing was stored",
                )
            return table_rows(target)
        finally:
            target.close()
    finally:
        source.close()


def make_backup(db_path: Path, directory: Path, policy: dict[str, int]) -> Made:
    """Copy ``db_path`` into ``directory`` and apply ``policy`` to the copies there."""
    if not db_path.is_file():
        raise NotFound(
            f"no database at {db_path}: start the service once (it creates it)", "no database"
        )
    directory.mkdir(mode=0o750, exist_ok=True)
    dest = _free_name(directory)
    snap = directory / f".{dest.name[: -len('.gz')]}.{os.getpid()}.tmp"
    try:
        try:
            rows = _snapshot(db_path, snap)
        except sqlite3.Error as exc:
            raise BackupFailed(
                "database error", f"copying {db_path} failed: {exc}; nothing was stored"
            ) from None
        with (
            open(snap, "rb") as plain,
            atomic_file(dest) as out,
            # The name inside the gzip header is the database's, so `gunzip -N` restores it.
            gzip.GzipFile(filename=dest.name[: -len(".gz")], mode="wb", fileobj=out) as packed,
        ):
            shutil.copyfileobj(plain, packed, CHUNK)
        db_size = snap.stat().st_size
    finally:
        snap.unlink(missing_ok=True)
        for suffix in ("-journal", "-wal", "-shm"):
            snap.with_name(snap.name + suffix).unlink(missing_ok=True)
    removed = prune(directory, policy)
    return Made(dest, dest.stat().st_size, db_size, rows, removed)


def prune(directory: Path, policy: dict[str, int]) -> tuple[Path, ...]:
    """Delete the copies ``policy`` does not keep (restic's rules; an empty policy keeps all)."""
    decisions = retention.apply_policy(existing(directory), policy)
    removed = []
    for decision in decisions:
        if not decision.keep:
            decision.key.unlink(missing_ok=True)
            removed.append(decision.key)
    return tuple(removed)
