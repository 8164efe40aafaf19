"""Backups on disk and in the catalog: crash-safe writes, naming, retention, reconcile, verify.

On disk: ``<data_dir>/backups/<deviceId>/<type>/<stem>-<YYYYmmddTHHMMSSZ>[-n].<ext>``. In
SQLite: one ``backups`` row per file (device, type, name, size, sha256, received time).

Writing a backup (``Upload``): the body is streamed into a temporary file *in the destination
directory* while it is hashed, so it is written exactly once and never held in memory; then the
file is fsynced, linked under its final name, and the directory fsynced, and only then is the
catalog row inserted. ``link()`` rather than ``rename()`` because link refuses an existing
name: two uploads in the same second can never replace one another, whatever the timing. A
crash at any point leaves either a temp file (removed at the next start) or a complete file,
because the final name only ever points at fully written, fsynced data.

Files are the truth: the start-up reconcile drops catalog rows whose file is gone and adopts
complete files that have no row (a crash between link and insert), taking the receive time
from the name, which is why the server's UTC timestamp is part of every stored name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.clock import iso_z, parse_iso_z, utc_now
from ..core.config import BACKUP_TYPES
from ..core.db import Database, transaction
from ..core.errors import DiskFull, Malformed, QuotaExceeded, TooLarge, Unavailable
from ..core.files import fsync_dir, is_disk_full, sha256_file
from ..core.ids import DEVICE_ID_RULE, is_device_id
from . import retention

if TYPE_CHECKING:
    from ..core.config import Config

log = logging.getLogger(__name__)

SCHEMA = [
    # AUTOINCREMENT: an id is never handed out again after its backup is deleted, so a Pi
    # that remembers "backup 42" can never be shown a different file under that id.
    """CREATE TABLE IF NOT EXISTS backups (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id   TEXT    NOT NULL,
        type        TEXT    NOT NULL,
        name        TEXT    NOT NULL,
        size        INTEGER NOT NULL,
        sha256      TEXT    NOT NULL,
        received_at TEXT    NOT NULL,
        UNIQUE (device_id, type, name)
    )""",
    """CREATE INDEX IF NOT EXISTS backups_by_device
        ON backups (device_id, type, received_at)""",
    # Covers a device's quota usage (sum of sizes) without reading the table: the catalog
    # is the running total, kept right by every insert, delete, prune and reconcile.
    "CREATE INDEX IF NOT EXISTS backups_size_by_device ON backups (device_id, size)",
]
QUOTA_SETTING = "quotas.backup_bytes_per_device"
QUOTA_REMEDY = (
    "nothing was stored; the operator frees room (chi-companion backups prune, or DELETE "
    "/api/v1/backups/{id} with the operator key) or raises quotas.backup_bytes_per_device "
    "(0: no quota)"
)

CHUNK = 1 << 20  # 1 MiB: large recv()/write() calls, still nothing for RSS
TEMP_PREFIX = ".upload-"
TEMP_SUFFIX = ".tmp"
# A file name, as on most filesystems (NAME_MAX). Also what fits a PUT's request line: 255
# characters percent-encoded are at most 255 * 12 bytes, well inside gunicorn's 4094-byte
# limit, so every name the API accepts can actually be sent in the URL (a longer line gets
# gunicorn's own 414 before the app sees it).
MAX_CLIENT_NAME = 255
MAX_STEM = 80
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
EXT_RE = re.compile(r"[A-Za-z0-9]{1,10}")
# Compression suffixes keep the suffix before them: obd.db.gz is stored as obd-<ts>.db.gz.
COMPRESSED_EXTS = frozenset({"gz", "xz", "bz2", "zst", "lz4", "lzma", "br"})
UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")
STORED_NAME_RE = re.compile(
    r"(?P<stem>[A-Za-z0-9._-]+?)-(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<n>\d+))?"
    r"(?P<ext>(?:\.[A-Za-z0-9]{1,10}){0,2})"
)


@dataclass(frozen=True)
class Backup:
    id: int
    device_id: str
    type: str
    name: str
    size: int
    sha256: str
    received_at: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Backup:
        return cls(*row)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "deviceId": self.device_id,
            "type": self.type,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "receivedAt": self.received_at,
        }

    @property
    def received(self) -> datetime:
        return parse_iso_z(self.received_at)


COLUMNS = "id, device_id, type, name, size, sha256, received_at"


# ---------------------------------------------------------------------------- names


def check_device_id(device_id: str) -> None:
    if not is_device_id(device_id):
        raise Malformed("bad device id", f"a device id is {DEVICE_ID_RULE}")


def check_type(backup_type: str) -> None:
    if backup_type not in BACKUP_TYPES:
        raise Malformed("unknown type", f"type must be one of {', '.join(BACKUP_TYPES)}")


def check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    # Exactly 64 hex digits: an empty or padded value is a client bug (it meant to send a
    # digest), and accepting it would silently skip the check the client asked for.
    if not SHA256_RE.fullmatch(value):
        raise Malformed("bad sha256", "sha256 must be 64 hexadecimal digits")
    return value.lower()


def split_client_name(raw: str) -> tuple[str, str]:
    """The client's file name as a safe ``(stem, ext)``; UploadError for a name with path parts.

    A name that tries to leave its directory (``../x``, ``/etc/x``, ``a/b`` from ``%2F``, a
    NUL) is refused rather than quietly trimmed: such a name is a bug or an attack, and the
    client deserves to hear about either. Everything else is made safe character by character.
    """
    if not raw:
        raise Malformed("bad name", "the file name is empty")
    if len(raw) > MAX_CLIENT_NAME:
        raise Malformed("bad name", f"the file name is over {MAX_CLIENT_NAME} characters")
    if "/" in raw or "\\" in raw:
        raise Malformed("bad name", "the file name must not contain path separators")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise Malformed("bad name", "the file name must not contain control characters")
    if raw in (".", ".."):
        raise Malformed("bad name", "the file name must not be . or ..")
    # Leading dots would make a hidden file, and hidden names are how temp files look.
    base = raw.lstrip(".")
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem or not EXT_RE.fullmatch(ext):
        stem, ext = base, ""
    elif ext.lower() in COMPRESSED_EXTS:
        inner_stem, inner_dot, inner_ext = stem.rpartition(".")
        if inner_dot and inner_stem and EXT_RE.fullmatch(inner_ext):
            stem, ext = inner_stem, f"{inner_ext}.{ext}"
    stem = UNSAFE_RE.sub("_", stem).strip("._-")[:MAX_STEM].rstrip("._-") or "backup"
    return stem, ext.lower()


def stored_name(stem: str, ext: str, received: datetime, n: int) -> str:
    suffix = f"-{n}" if n else ""
    dot_ext = f".{ext}" if ext else ""
    return f"{stem}-{received.astimezone(UTC).strftime(STAMP_FORMAT)}{suffix}{dot_ext}"


def received_from_name(name: str) -> datetime | None:
    """The receive time encoded in a stored name (used to adopt files the catalog lacks)."""
    match = STORED_NAME_RE.fullmatch(name)
    if not match:
        return None
    try:
        return datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


# ---------------------------------------------------------------------------- file helpers


# ---------------------------------------------------------------------------- upload


class Upload:
    """One backup being received: a temp file that becomes a backup only on ``commit``.

    Always end with ``commit`` or ``abort``; ``abort`` is safe to call more than once and
    after a failed commit, and removes everything the upload created.
    """

    def __init__(self, store: BackupStore, directory: Path, max_bytes: int) -> None:
        self.store = store
        self.directory = directory
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        self.temp_path = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        self._fd: int | None = os.open(
            self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640
        )
        self._final: Path | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            raise RuntimeError("upload already finished")
        size = len(data)
        if self.size + size > self.max_bytes:
            raise TooLarge(
                "payload too large", f"the file exceeds the limit of {self.max_bytes} bytes"
            )
        self._digest.update(data)
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull() from None
            raise
        self.size += size

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def commit(
        self, device_id: str, backup_type: str, stem: str, ext: str, expected_sha256: str | None
    ) -> Backup:
        if self._fd is None:
            raise RuntimeError("upload already finished")
        digest = self.sha256
        if expected_sha256 is not None and expected_sha256 != digest:
            raise Malformed(
                "digest mismatch",
                f"the body's sha256 is {digest}, the client said {expected_sha256}",
            )
        try:
            # Durable before it gets a name: a name must never point at unwritten data.
            os.fsync(self._fd)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull() from None
            raise
        os.close(self._fd)
        self._fd = None
        target_dir = self.store.ensure_dir(device_id, backup_type)
        received = utc_now().replace(microsecond=0)
        final, name = self.store.link_unique(self.temp_path, target_dir, stem, ext, received)
        self._final = final
        os.unlink(self.temp_path)
        fsync_dir(target_dir)
        if self.directory != target_dir:
            fsync_dir(self.directory)
        backup = self.store.insert(
            device_id, backup_type, name, size=self.size, sha256=digest, received=iso_z(received)
        )
        self._final = None  # it belongs to the catalog now; abort must not touch it
        return backup

    def abort(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)
        if self._final is not None:
            # Linked but the catalog insert failed: the name must not survive the failure.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._final)
            with contextlib.suppress(OSError):
                fsync_dir(self._final.parent)
            self._final = None


class Reservation:
    """Room claimed for one upload until it is stored or refused. What its upload has
    already written is on disk (and out of the free space), so it counts only the rest.
    Against its device's quota it counts whole (the catalog has none of it yet)."""

    def __init__(self, store: BackupStore, declared: int) -> None:
        self.store = store
        self.declared = declared
        self.device_id: str | None = None
        self.upload: Upload | None = None

    @property
    def outstanding(self) -> int:
        written = self.upload.size if self.upload is not None else 0
        return max(0, self.declared - written)

    def charge(self, device_id: str) -> None:
        """Count this upload against ``device_id``'s quota; QuotaExceeded when it would pass."""
        self.store._charge(self, device_id)

    def release(self) -> None:
        self.store._release(self)


# ---------------------------------------------------------------------------- store


@dataclass
class ReconcileReport:
    temp_removed: list[Path] = field(default_factory=list)
    rows_dropped: list[Backup] = field(default_factory=list)
    files_adopted: list[Backup] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    missing: list[Backup] = field(default_factory=list)
    corrupt: list[tuple[Backup, str]] = field(default_factory=list)
    untracked: list[Path] = field(default_factory=list)
    temp: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.untracked)


@dataclass
class PruneResult:
    device_id: str
    type: str
    policy: dict[str, int]
    decisions: list[tuple[Backup, retention.Decision[int]]]


class BackupStore:
    def __init__(
        self,
        data_dir: Path,
        db: Database,
        max_upload_bytes: int,
        min_free_bytes: int,
        policies: dict[str, dict[str, int]],
        keep_within: timedelta | None = None,
        quota_bytes: int = 0,
    ) -> None:
        self.root = data_dir / "backups"
        self.quota_bytes = quota_bytes  # per device; 0: none
        self.db = db
        self.max_upload_bytes = max_upload_bytes
        self.min_free_bytes = min_free_bytes
        self.policies = policies
        self.keep_within = keep_within
        # One prune at a time (per process): two prunes of one device would otherwise both
        # decide from the same listing and race to delete the same files.
        self._prune_lock = threading.Lock()
        self._space_lock = threading.Lock()
        self._reservations: set[Reservation] = set()

    @classmethod
    def from_config(cls, config: Config, db: Database) -> BackupStore:
        return cls(
            config.data_dir,
            db,
            config.backups.max_upload_bytes,
            config.backups.min_free_bytes,
            config.retention,
            timedelta(days=config.backups.keep_within_days),
            config.quotas.backup_bytes_per_device,
        )

    # -- paths and space

    def type_dir(self, device_id: str, backup_type: str) -> Path:
        check_device_id(device_id)
        check_type(backup_type)
        return self.root / device_id / backup_type

    def path_of(self, backup: Backup) -> Path:
        return self.type_dir(backup.device_id, backup.type) / backup.name

    def ensure_dir(self, device_id: str, backup_type: str) -> Path:
        """Create backups/<device>/<type>/, fsyncing each new level's parent so it survives."""
        target = self.type_dir(device_id, backup_type)
        if target.is_dir():
            return target
        self.root.mkdir(mode=0o750, parents=True, exist_ok=True)
        for path in (target.parent, target):
            try:
                path.mkdir(mode=0o750)
            except FileExistsError:
                continue
            fsync_dir(path.parent)
        return target

    def free_bytes(self) -> int:
        path = self.root if self.root.is_dir() else self.root.parent
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def reserve(self, incoming: int) -> Reservation:
        """Claim room for ``incoming`` bytes, counting what uploads in flight will still
        write; 507 when it would leave under the minimum. Under a lock: three uploads that
        check at once used to see the same free space and all pass (issue 15)."""
        with self._space_lock:
            free = self.free_bytes()
            pending = sum(r.outstanding for r in self._reservations)
            if free - pending - incoming < self.min_free_bytes:
                raise DiskFull(
                    f"storing {incoming} bytes would leave less than the configured minimum "
                    f"free space ({self.min_free_bytes} bytes); {free} bytes are free and "
                    f"uploads in progress will still write {pending}",
                )
            reservation = Reservation(self, incoming)
            self._reservations.add(reservation)
            return reservation

    def _charge(self, reservation: Reservation, device_id: str) -> None:
        """Under the same lock as the free space: two uploads of one device that check at
        once must not both fit in the room left for one."""
        with self._space_lock:
            if reservation.device_id == device_id:
                return
            if self.quota_bytes:
                used = self.usage(device_id)
                pending = sum(
                    r.declared
                    for r in self._reservations
                    if r.device_id == device_id and r is not reservation
                )
                if used + pending + reservation.declared > self.quota_bytes:
                    raise QuotaExceeded(
                        QUOTA_SETTING,
                        self.quota_bytes,
                        used + pending,
                        reservation.declared,
                        QUOTA_REMEDY,
                    )
            reservation.device_id = device_id

    def usage(self, device_id: str) -> int:
        """Bytes of the device's catalogued backups (an index-only sum)."""
        (total,) = (
            self.db.conn()
            .execute("SELECT coalesce(sum(size), 0) FROM backups WHERE device_id = ?", (device_id,))
            .fetchone()
        )
        return int(total)

    def usage_per_device(self) -> dict[str, int]:
        rows = self.db.conn().execute("SELECT device_id, sum(size) FROM backups GROUP BY device_id")
        return {str(d): int(n) for d, n in rows}

    def _release(self, reservation: Reservation) -> None:
        with self._space_lock:
            self._reservations.discard(reservation)

    def begin(self, directory: Path, max_bytes: int | None = None) -> Upload:
        try:
            limit = self.max_upload_bytes if max_bytes is None else max_bytes
            return Upload(self, directory, limit)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull() from None
            raise

    def link_unique(
        self, source: Path, directory: Path, stem: str, ext: str, received: datetime
    ) -> tuple[Path, str]:
        """Give ``source`` a new name in ``directory`` that no file or catalog row has."""
        conn = self.db.conn()
        for n in range(10_000):
            name = stored_name(stem, ext, received, n)
            taken = conn.execute(
                "SELECT 1 FROM backups WHERE device_id = ? AND type = ? AND name = ?",
                (directory.parent.name, directory.name, name),
            ).fetchone()
            if taken:
                continue
            final = directory / name
            try:
                os.link(source, final)
            except FileExistsError:
                continue
            return final, name
        raise Unavailable("could not find a free name; retry")

    # -- catalog

    def insert(
        self, device_id: str, backup_type: str, name: str, *, size: int, sha256: str, received: str
    ) -> Backup:
        conn = self.db.conn()
        with transaction(conn):
            cur = conn.execute(
                "INSERT INTO backups (device_id, type, name, size, sha256, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, backup_type, name, size, sha256, received),
            )
        return Backup(int(cur.lastrowid or 0), device_id, backup_type, name, size, sha256, received)

    def get(self, backup_id: int) -> Backup | None:
        row = (
            self.db.conn()
            .execute(f"SELECT {COLUMNS} FROM backups WHERE id = ?", (backup_id,))
            .fetchone()
        )
        return Backup.from_row(row) if row else None

    def list(self, device_id: str | None = None, backup_type: str | None = None) -> list[Backup]:
        """Newest first; within one second the later upload (higher id) first."""
        where, args = [], []
        if device_id is not None:
            where.append("device_id = ?")
            args.append(device_id)
        if backup_type is not None:
            where.append("type = ?")
            args.append(backup_type)
        sql = f"SELECT {COLUMNS} FROM backups"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_at DESC, id DESC"
        return [Backup.from_row(r) for r in self.db.conn().execute(sql, args)]

    def newest_per_device(self) -> dict[str, tuple[Backup, int]]:
        """device -> (its newest backup, how many backups it has)."""
        newest: dict[str, tuple[Backup, int]] = {}
        rows = self.db.conn().execute(
            f"SELECT {COLUMNS}, (SELECT COUNT(*) FROM backups WHERE device_id = b.device_id)"
            " FROM backups AS b WHERE id = ("
            " SELECT id FROM backups WHERE device_id = b.device_id"
            " ORDER BY received_at DESC, id DESC LIMIT 1)"
        )
        for row in rows:
            backup = Backup.from_row(row[:-1])
            newest[backup.device_id] = (backup, int(row[-1]))
        return newest

    def delete(self, backup: Backup) -> None:
        """Remove the file first, then the row: a crash in between leaves a row without a
        file, which the next start-up reconcile drops; never a file nobody knows about."""
        path = self.path_of(backup)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        else:
            fsync_dir(path.parent)
        conn = self.db.conn()
        with transaction(conn):
            conn.execute("DELETE FROM backups WHERE id = ?", (backup.id,))

    # -- retention

    def policy_for(self, backup_type: str) -> dict[str, int]:
        return dict(self.policies.get(backup_type, {}))

    def plan(self, device_id: str, backup_type: str) -> PruneResult:
        backups = self.list(device_id, backup_type)
        policy = self.policy_for(backup_type)
        by_id = {b.id: b for b in backups}
        decisions = retention.apply_policy(
            ((b.id, b.received) for b in backups), policy, self.keep_within
        )
        return PruneResult(device_id, backup_type, policy, [(by_id[d.key], d) for d in decisions])

    def prune(self, device_id: str, backup_type: str, dry_run: bool = False) -> PruneResult:
        with self._prune_lock:
            result = self.plan(device_id, backup_type)
            if not dry_run:
                for backup, decision in result.decisions:
                    if not decision.keep:
                        self.delete(backup)
                        log.info(
                            "retention removed backup %d %s/%s/%s",
                            backup.id,
                            backup.device_id,
                            backup.type,
                            backup.name,
                        )
            return result

    def groups(self) -> list[tuple[str, str]]:
        rows = self.db.conn().execute(
            "SELECT DISTINCT device_id, type FROM backups ORDER BY device_id, type"
        )
        return [(str(d), str(t)) for d, t in rows]

    # -- start-up reconcile and verify

    def scan(self) -> Iterator[tuple[Path, str | None, str | None]]:
        """Every regular file under backups/: (path, device, type); device/type are None for
        files outside a valid backups/<device>/<type>/ directory."""
        if not self.root.is_dir():
            return
        for top in sorted(self.root.iterdir()):
            if top.is_symlink() or not top.is_dir():
                if top.is_file() or top.is_symlink():
                    yield top, None, None
                continue
            device_ok = is_device_id(top.name)
            for sub in sorted(top.iterdir()):
                if sub.is_symlink() or not sub.is_dir():
                    yield sub, None, None
                    continue
                type_ok = device_ok and sub.name in BACKUP_TYPES
                for entry in sorted(sub.iterdir()):
                    if entry.is_symlink() or not entry.is_file():
                        yield entry, None, None
                    elif type_ok:
                        yield entry, top.name, sub.name
                    else:
                        yield entry, None, None

    def reconcile(self) -> ReconcileReport:
        """Start-up: remove temp files, then make the catalog match the files on disk."""
        report = ReconcileReport()
        self.root.mkdir(mode=0o750, parents=True, exist_ok=True)
        on_disk: dict[tuple[str, str, str], Path] = {}
        for path, device_id, backup_type in self.scan():
            if is_temp_name(path.name) and not path.is_symlink():
                path.unlink(missing_ok=True)
                report.temp_removed.append(path)
            elif device_id is None or backup_type is None:
                report.ignored.append(path)
            else:
                on_disk[(device_id, backup_type, path.name)] = path
        conn = self.db.conn()
        catalog = {(b.device_id, b.type, b.name): b for b in self.list()}
        for key, backup in catalog.items():
            if key not in on_disk:
                with transaction(conn):
                    conn.execute("DELETE FROM backups WHERE id = ?", (backup.id,))
                report.rows_dropped.append(backup)
        for key, path in sorted(on_disk.items()):
            if key in catalog:
                continue
            received = received_from_name(path.name)
            if received is None:
                report.ignored.append(path)
                continue
            size, digest = sha256_file(path)
            report.files_adopted.append(
                self.insert(*key, size=size, sha256=digest, received=iso_z(received))
            )
        for path in report.temp_removed:
            log.warning("removed temporary file left by an interrupted upload: %s", path)
        for backup in report.rows_dropped:
            log.warning(
                "catalog entry %d (%s/%s/%s) had no file; dropped",
                backup.id,
                backup.device_id,
                backup.type,
                backup.name,
            )
        for backup in report.files_adopted:
            log.warning(
                "file %s/%s/%s was not in the catalog; added as backup %d",
                backup.device_id,
                backup.type,
                backup.name,
                backup.id,
            )
        for path in report.ignored:
            log.warning("not a backup file, left alone (see `backups verify`): %s", path)
        return report

    def verify(self) -> VerifyReport:
        report = VerifyReport()
        on_disk: dict[tuple[str, str, str], Path] = {}
        for path, device_id, backup_type in self.scan():
            if is_temp_name(path.name):
                report.temp.append(path)
            elif device_id is None or backup_type is None:
                report.untracked.append(path)
            else:
                on_disk[(device_id, backup_type, path.name)] = path
        for backup in sorted(self.list(), key=lambda b: b.id):
            path = on_disk.pop((backup.device_id, backup.type, backup.name), None)
            if path is None:
                report.missing.append(backup)
                continue
            try:
                size, digest = sha256_file(path)
            except OSError as exc:
                report.corrupt.append((backup, f"unreadable: {exc.strerror or exc}"))
                continue
            report.checked += 1
            report.bytes += size
            if size != backup.size:
                report.corrupt.append((backup, f"size {size}, catalog says {backup.size}"))
            elif digest != backup.sha256:
                report.corrupt.append((backup, f"sha256 {digest}, catalog says {backup.sha256}"))
        report.untracked.extend(sorted(on_disk.values()))
        return report
