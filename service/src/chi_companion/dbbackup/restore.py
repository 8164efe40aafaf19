"""Put a ``db backup`` copy back as ``companion.db``, refusing anything that is not one.

Everything is checked before anything changes: the file is unpacked next to the database
(same file system, so the final rename is atomic), must be gzip with a correct CRC, an SQLite
file that passes ``PRAGMA integrity_check``, a companion database (it has ``synced_rows``) and
migrate to this version's schema (every table and column this version uses exists after the
same ``CREATE ... IF NOT EXISTS`` the server runs at start). Only then is the current database
moved aside with its ``-wal``/``-shm`` (a WAL file can hold commits the main file lacks: it is
kept with its database, never deleted) and the checked copy renamed into place. Any failure
before the swap removes the unpacked copy and leaves the data directory as it was.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..core.errors import DomainError
from ..core.files import CHUNK, fsync_dir
from .snapshot import table_rows

SQLITE_MAGIC = b"SQLite format 3\x00"
GZIP_MAGIC = b"\x1f\x8b"
MARKER_TABLE = "synced_rows"  # every companion database since 0.1.0 has it
SIDE_FILES = ("-wal", "-shm", "-journal")


class NotRestorable(DomainError):
    """The file is not a database backup this version can put back; nothing was changed."""


@dataclass(frozen=True)
class Restored:
    rows: dict[str, int]
    aside: Path | None


def unpack(source: BinaryIO, name: str, dest: Path) -> None:
    """gunzip ``source`` into ``dest`` (created exclusively), or raise NotRestorable."""
    head = source.read(2)
    source.seek(0)
    if head != GZIP_MAGIC:
        hint = " (an uncompressed database: gzip it first)" if head == SQLITE_MAGIC[:2] else ""
        raise NotRestorable("not gzip", f"{name} is not a gzip file{hint}; nothing was changed")
    try:
        with gzip.GzipFile(fileobj=source, mode="rb") as packed, open(dest, "xb") as out:
            shutil.copyfileobj(packed, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
    except EOFError:
        raise NotRestorable(
            "truncated", f"{name} is truncated (the gzip stream ends early); nothing was changed"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise NotRestorable(
            "damaged", f"{name} is damaged (gzip: {exc}); nothing was changed"
        ) from None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    quoted = table.replace('"', '""')
    return {row[1] for row in conn.execute(f'PRAGMA table_xinfo("{quoted}")')}


def _expected(schemas: Iterable[str]) -> dict[str, set[str]]:
    """Tables and columns this version's schema defines (built in memory)."""
    ref = sqlite3.connect(":memory:")
    try:
        for statement in schemas:
            ref.execute(statement)
        tables = [r[0] for r in ref.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: _columns(ref, t) for t in tables if not t.startswith("sqlite_")}
    finally:
        ref.close()


def check(path: Path, name: str, schemas: list[str]) -> dict[str, int]:
    """Check and migrate the unpacked copy at ``path``; return its rows per table."""
    with open(path, "rb") as fh:
        if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise NotRestorable(
                "not a database", f"{name} does not hold an SQLite database; nothing was changed"
            )
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise NotRestorable(
                "integrity check failed",
                f"{name} fails PRAGMA integrity_check ({problems[0]}); nothing was changed",
            )
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if MARKER_TABLE not in tables:
            raise NotRestorable(
                "not a companion database",
                f"{name} is an SQLite database but not the companion's (no {MARKER_TABLE} "
                "table); nothing was changed",
            )
        # One self-contained file (the server switches it back to WAL when it opens it).
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in schemas:
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:  # some errors roll back by themselves
                conn.execute("ROLLBACK")
            raise NotRestorable(
                "schema not migratable",
                f"{name} has a schema this version cannot migrate ({exc}); nothing was changed",
            ) from None
        missing: list[str] = []
        for table, columns in _expected(schemas).items():
            missing += [f"{table}.{c}" for c in sorted(columns - _columns(conn, table))]
        if missing:
            raise NotRestorable(
                "schema not migratable",
                f"{name} has a schema this version cannot migrate (no column "
                f"{', '.join(missing[:5])}); nothing was changed",
            )
        return table_rows(conn)
    except sqlite3.DatabaseError as exc:
        raise NotRestorable(
            "damaged database",
            f"{name} is not a usable SQLite database ({exc}); nothing was changed",
        ) from None
    finally:
        conn.close()


def swap(checked: Path, db_path: Path, owner: tuple[int, int] | None) -> Path | None:
    """Move the current database (and its -wal/-shm) aside, then rename ``checked`` into its
    place. Returns where the old database went (None when there was none)."""
    for suffix in SIDE_FILES:
        # The checked copy was closed cleanly in DELETE mode: no side file is part of it.
        checked.with_name(checked.name + suffix).unlink(missing_ok=True)
    if owner is not None:
        os.chown(checked, *owner)
    os.chmod(checked, 0o640)
    aside: Path | None = None
    if db_path.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = db_path.with_name(f"{db_path.name}.pre-restore-{stamp}")
        # A link, not a rename: until the new file is in place the old one stays where the
        # server looks for it.
        os.link(db_path, aside)
    for suffix in SIDE_FILES:
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():
            if aside is not None:
                os.replace(side, aside.with_name(aside.name + suffix))
            else:
                side.unlink()
    os.replace(checked, db_path)
    fsync_dir(db_path.parent)
    return aside
