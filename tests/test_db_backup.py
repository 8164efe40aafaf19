"""``chi-companion db backup`` and ``db restore``: against a real server process, real SQLite and
real files. The backup is taken while the server is writing; a restore brings back exactly the
rows and backups the API served when the copy was made; every file that is not such a copy
is refused with one line and nothing changed."""

from __future__ import annotations

import gzip
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.companion_process import Companion
from tests.sync_payloads import realtime_rows, sync_body
from tests.tmpfs import mounted_tmpfs

BATCH = 100
NAME_FORMAT = "companion-%Y%m%dT%H%M%SZ.db.gz"


def cli(comp: Companion, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chi_companion", "db", *args, "--config", str(comp.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copies(comp: Companion) -> list[Path]:
    return sorted((comp.data_dir / "db-backups").glob("companion-*.db.gz"))


def sync(comp: Companion, first_id: int, count: int = BATCH, drive_id: int = 1) -> None:
    status, _, body = comp.request(
        "POST",
        "/api/v1/sync",
        sync_body(
            "realtime_data", realtime_rows(first_id, count, drive_id), batch_id=f"b{first_id}"
        ),
    )
    assert status == 200, body


def upload(comp: Companion, name: str, data: bytes) -> dict[str, Any]:
    status, _, body = comp.request(
        "PUT",
        f"/api/v1/backups/{comp.device}/database/{name}",
        raw=data,
        headers={
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
            "Content-Type": "application/octet-stream",
        },
    )
    assert status == 201, body
    return dict(body)


def served(comp: Companion) -> dict[str, Any]:
    """What the API serves about the device's data: its tables and backups with contents."""
    status, _, sync_status = comp.request("GET", "/api/v1/sync/status")
    assert status == 200, sync_status
    status, _, listing = comp.request("GET", "/api/v1/backups", key=comp.operator_key)
    assert status == 200, listing
    files = {}
    for backup in listing["backups"]:
        status, _, content = comp.request("GET", f"/api/v1/backups/{backup['id']}")
        assert status == 200
        files[backup["id"]] = hashlib.sha256(content).hexdigest()
    return {
        "tables": sync_status["tables"],
        "lastBatchId": sync_status["lastBatchId"],
        "backups": listing["backups"],
        "files": files,
    }


def db_rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT * FROM synced_rows ORDER BY device_id, table_name, row_id"
        ).fetchall()
    finally:
        conn.close()


def unpacked(copy: Path, dest: Path) -> Path:
    dest.write_bytes(gzip.decompress(copy.read_bytes()))
    return dest


def snapshot_of_dir(data_dir: Path) -> dict[str, str]:
    """Every file under the data directory with its sha256 (logs excepted: the server writes)."""
    return {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and "logs" not in p.parts
    }


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


# ------------------------------------------------------------------------------------ backup


@pytest.mark.slow(seconds=25)
def test_backup_while_the_server_writes_under_load(companion: Companion, tmp_path: Path) -> None:
    """Four senders keep committing 100-row batches while three copies are made: each copy is
    a consistent snapshot (integrity ok, whole batches only, the catalog's counters agree
    with the rows) and the last one, after the load, holds every row the API reports."""
    stop = threading.Event()
    errors: list[BaseException] = []
    sent = [0] * 4

    def sender(index: int) -> None:
        next_id = 1 + index * 1_000_000
        try:
            # Paced (at most 4 x 10 batches a second), so the copies stay a few MB.
            while not stop.is_set():
                sync(companion, next_id, drive_id=index + 1)
                next_id += BATCH
                sent[index] += 1
                time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    made: list[str] = []
    during: list[int] = []  # batches committed while each copy was being made
    try:
        while sum(sent) < 8:
            time.sleep(0.05)
        for _ in range(3):
            before = sum(sent)
            result = cli(companion, "backup")
            assert result.returncode == 0, result.stderr
            made.append(result.stdout)
            during.append(sum(sent) - before)
            time.sleep(1.05)  # one copy per second: names are per second
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert all(n > 0 for n in during), during
    assert all(line.count("\n") == 1 and "integrity ok" in line for line in made), made

    counts = []
    for number, copy in enumerate(copies(companion)):
        db = unpacked(copy, tmp_path / f"copy{number}.db")
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
            rows = conn.execute("SELECT count(*) FROM synced_rows").fetchone()[0]
            stats = conn.execute("SELECT coalesce(sum(row_count), 0) FROM table_stats").fetchone()[
                0
            ]
            per_drive = conn.execute(
                "SELECT count(*) FROM synced_rows GROUP BY drive_id"
            ).fetchall()
        finally:
            conn.close()
        # A torn copy would hold part of a batch, or counters from another moment.
        assert rows == stats, (copy, rows, stats)
        assert all(n % BATCH == 0 for (n,) in per_drive), per_drive
        counts.append(rows)
    assert len(counts) == 3 and counts == sorted(counts) and counts[0] > 0, counts

    final = cli(companion, "backup")
    assert final.returncode == 0, final.stderr
    status = served(companion)
    served_rows = sum(t["rows"] for t in status["tables"].values())
    assert served_rows == sum(sent) * BATCH
    assert len(db_rows(unpacked(copies(companion)[-1], tmp_path / "final.db"))) == served_rows
    assert f"synced_rows {served_rows}" in final.stdout


def test_backup_output_and_file(companion: Companion) -> None:
    sync(companion, 1)
    result = cli(companion, "backup")
    assert result.returncode == 0, result.stderr
    [copy] = copies(companion)
    assert result.stdout.startswith(f"{copy}: ") and "synced_rows 100" in result.stdout
    assert copy.stat().st_mode & 0o777 == 0o640
    # The name is the copy's UTC time; gzip's header names the database inside.
    when = datetime.strptime(copy.name, NAME_FORMAT).replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)
    with open(copy, "rb") as fh:
        header = fh.read(64)
    assert header[:2] == b"\x1f\x8b" and copy.name[: -len(".gz")].encode() in header
    leftovers = [p.name for p in copy.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_backup_before_the_first_start_is_one_line(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(start=False)
    comp.data_dir.mkdir()
    line = one_line_error(cli(comp, "backup"))
    assert "no database" in line and "start the service once" in line
    assert not (comp.data_dir / "db-backups").exists()


def test_retention_thins_old_copies(make_companion: Callable[..., Companion]) -> None:
    """keep_last 2 + keep_daily 3: of 3 copies a day for 5 days plus the new one, the new one
    and the newest of yesterday (keep_last 2; also the daily copies of today and yesterday)
    and the newest of the day before (the third daily) stay; other files are not touched."""
    comp = make_companion(
        start=False,
        db_backup={"keep_last": 2, "keep_daily": 3, "keep_weekly": 0, "keep_monthly": 0},
    )
    comp.start()
    sync(comp, 1)
    directory = comp.data_dir / "db-backups"
    directory.mkdir(exist_ok=True)
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    old = [today - timedelta(days=d, hours=h) for d in range(1, 6) for h in (0, 1, 2)]
    for when in old:
        (directory / when.strftime(NAME_FORMAT)).write_bytes(b"old copy")
    (directory / "notes.txt").write_text("the operator's own file")
    result = cli(comp, "backup")
    assert result.returncode == 0, result.stderr
    assert "retention removed 13 older copy(ies)" in result.stdout
    [new] = [p.name for p in directory.glob("companion-*.db.gz") if p.stat().st_size > 8]
    kept = sorted(p.name for p in directory.glob("companion-*.db.gz"))
    expected = sorted([new] + [(today - timedelta(days=d)).strftime(NAME_FORMAT) for d in (1, 2)])
    assert kept == expected
    assert (directory / "notes.txt").exists()


# ----------------------------------------------------------------------------------- restore


@pytest.mark.slow(seconds=10)
def test_restore_serves_exactly_what_was_backed_up(companion: Companion) -> None:
    sync(companion, 1)
    sync(companion, 101, drive_id=2)
    upload(companion, "pi-2026-04-19.db", b"the pi's database" * 100)
    result = cli(companion, "backup")
    assert result.returncode == 0, result.stderr
    [copy] = copies(companion)
    before = served(companion)
    rows_before = db_rows(companion.data_dir / "companion.db")

    # Life goes on after the copy: more rows and another upload, then the disaster.
    sync(companion, 201, drive_id=3)
    upload(companion, "pi-2026-04-20.db", b"later" * 10)
    assert served(companion) != before

    refused = one_line_error(cli(companion, "restore", str(copy)))
    assert "service running" in refused and "systemctl stop chi-companion" in refused

    companion.stop()
    current = (companion.data_dir / "companion.db").read_bytes()
    result = cli(companion, "restore", str(copy))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "synced_rows 200" in result.stdout
    [aside] = companion.data_dir.glob("companion.db.pre-restore-*")
    assert aside.read_bytes() == current  # the replaced database is kept, never destroyed
    assert str(aside) in result.stdout
    assert not (companion.data_dir / "companion.db-wal").exists()

    companion.start()
    after = served(companion)
    # The later upload's file is on disk but not in the restored catalog: the server's
    # reconcile at start adds it back, so the restored rows are compared, then the backups.
    assert after["tables"] == before["tables"]
    assert after["lastBatchId"] == before["lastBatchId"]
    assert db_rows(companion.data_dir / "companion.db") == rows_before
    names_before = {b["name"]: before["files"][b["id"]] for b in before["backups"]}
    names_after = {b["name"]: after["files"][b["id"]] for b in after["backups"]}
    assert names_before.items() <= names_after.items()


def test_restore_keeps_a_crashed_database_with_its_wal(companion: Companion) -> None:
    """After a kill -9 the -wal holds commits the main file lacks: it goes aside with it."""
    sync(companion, 1)
    assert cli(companion, "backup").returncode == 0
    sync(companion, 101)
    companion.kill9()
    wal = companion.data_dir / "companion.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    [copy] = copies(companion)
    result = cli(companion, "restore", str(copy))
    assert result.returncode == 0, result.stderr
    [aside] = companion.data_dir.glob("companion.db.pre-restore-*[0-9Z]")
    assert not wal.exists()
    assert Path(f"{aside}-wal").exists()
    # The crashed database, opened where it was put aside, still has every committed row.
    assert len(db_rows(aside)) == 200
    assert len(db_rows(companion.data_dir / "companion.db")) == 100


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _other_sqlite(tmp: Path, statements: list[str]) -> bytes:
    path = (
        tmp
        / f"other-{len(statements)}-{hashlib.sha256(str(statements).encode()).hexdigest()[:6]}.db"
    )
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return path.read_bytes()


@pytest.mark.slow(seconds=30)
def test_bad_files_are_refused_with_nothing_changed(companion: Companion, tmp_path: Path) -> None:
    sync(companion, 1)
    assert cli(companion, "backup").returncode == 0
    [good] = copies(companion)
    good_bytes = good.read_bytes()
    db = gzip.decompress(good_bytes)
    companion.stop()

    damaged_db = bytearray(db)
    # Overwrite a page in the middle of the file: the header still says SQLite.
    damaged_db[4096 + 100 : 4096 + 4000] = os.urandom(3900)
    flipped = bytearray(good_bytes)
    flipped[len(flipped) // 2] ^= 0xFF
    cases: dict[str, tuple[bytes, str]] = {
        "not-gzip.db.gz": (b"just some text, not a backup\n", "not gzip"),
        "plain-sqlite.db.gz": (db, "not gzip"),
        "truncated.db.gz": (good_bytes[: len(good_bytes) // 2], "truncated"),
        "crc.db.gz": (bytes(flipped), "damaged"),
        "not-sqlite.db.gz": (_gzip(b"hello " * 5000), "not a database"),
        "corrupt-sqlite.db.gz": (_gzip(bytes(damaged_db)), ""),
        "other-app.db.gz": (
            _gzip(_other_sqlite(tmp_path, ["CREATE TABLE notes (id INTEGER, body TEXT)"])),
            "not a companion database",
        ),
        "old-shape.db.gz": (
            _gzip(
                _other_sqlite(
                    tmp_path, ["CREATE TABLE synced_rows (device_id TEXT, something_else TEXT)"]
                )
            ),
            "schema not migratable",
        ),
        "empty.db.gz": (b"", "not gzip"),
    }
    before = snapshot_of_dir(companion.data_dir)
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        line = one_line_error(cli(companion, "restore", str(path)))
        assert line.startswith("chi-companion db restore: "), line
        assert expected in line and "nothing was changed" in line, (name, line)
        assert snapshot_of_dir(companion.data_dir) == before, name
    line = one_line_error(cli(companion, "restore", str(tmp_path / "missing.db.gz")))
    assert "cannot read" in line
    line = one_line_error(cli(companion, "restore", str(tmp_path)))
    assert "cannot read" in line or "directory" in line.lower()
    assert snapshot_of_dir(companion.data_dir) == before
    # The good copy still restores after all of that.
    assert cli(companion, "restore", str(good)).returncode == 0


def test_restore_onto_a_fresh_data_directory(make_companion: Callable[..., Companion]) -> None:
    """A new server (the disaster case): data dir made by the role, no database yet."""
    first = make_companion()
    sync(first, 1)
    assert cli(first, "backup").returncode == 0
    [copy] = copies(first)
    before = served(first)
    first.stop()

    fresh = make_companion(start=False)
    fresh.data_dir.mkdir()
    result = cli(fresh, "restore", str(copy))
    assert result.returncode == 0, result.stderr
    assert "kept as" not in result.stdout  # there was nothing to keep
    fresh.start()
    after = served(fresh)
    assert after["tables"] == before["tables"]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to the data directory's owner needs root")
def test_as_root_files_belong_to_the_data_directory_owner(
    make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    comp = make_companion()
    sync(comp, 1)
    comp.stop()
    nobody = 65534
    for path in [comp.data_dir, *comp.data_dir.rglob("*")]:
        os.chown(path, nobody, nobody)
    # The service user must be able to reach its data directory, as on the server.
    for parent in comp.data_dir.parents:
        if parent == Path(tmp_path.anchor) or parent == Path("/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
    result = cli(comp, "backup")
    assert result.returncode == 0, result.stderr
    [copy] = copies(comp)
    assert (copy.stat().st_uid, copy.stat().st_gid) == (nobody, nobody)
    assert copy.parent.stat().st_uid == nobody
    # A file only root can read is still restored (opened before the drop).
    private = tmp_path / "private.db.gz"
    private.write_bytes(copy.read_bytes())
    os.chmod(private, 0o600)
    result = cli(comp, "restore", str(private))
    assert result.returncode == 0, result.stderr
    db = comp.data_dir / "companion.db"
    assert (db.stat().st_uid, db.stat().st_gid) == (nobody, nobody)
    assert all(p.stat().st_uid == nobody for p in comp.data_dir.iterdir())


def test_a_full_disk_stores_nothing(
    make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    """The data directory's disk fills up during the copy: one line, exit 1, and no copy or
    temp file is left in db-backups/; with room again the next run works."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as disk:
        comp = make_companion(start=False)
        comp.data_dir = disk / "data"
        config = comp.config_path.read_text().replace(
            str(comp.base_dir / "data"), str(comp.data_dir)
        )
        comp.config_path.write_text(config)
        comp.start()
        for first in range(1, 2001, BATCH):
            sync(comp, first)
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 65536):
                pass
        except OSError:
            pass  # ENOSPC: the disk is full now
        finally:
            os.close(fd)
        line = one_line_error(cli(comp, "backup"))
        assert "nothing was stored" in line and "full" in line, line
        assert list((comp.data_dir / "db-backups").iterdir()) == []
        filler.unlink()
        result = cli(comp, "backup")
        assert result.returncode == 0, result.stderr
        assert len(copies(comp)) == 1
        comp.stop()
