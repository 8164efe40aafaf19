"""chi-companion-push (issue 9) against a real companion process on 127.0.0.1.

The tool is run the way the Pi runs it: the single file executed by a Python interpreter in a
subprocess, talking HTTP to the real server. The only in-process use of the module is the
snapshot test, which needs to read the live database right before and right after the
snapshot to bound what the snapshot must contain.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import pty
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chi_companion import push_client

from tests.companion_process import Companion

PUSH = Path(__file__).resolve().parents[1] / "service" / "src" / "chi_companion" / "push_client.py"

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, payload BLOB NOT NULL,
                                   digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS totals (k TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES ('ledger', 0);
"""

# Another process that keeps committing while the snapshot runs, like the Pi app. Each commit
# adds one ledger row and bumps totals.n in the same transaction, so a torn (non-point-in-time)
# copy shows up as count(ledger) != totals.n or as a gap in the ids.
WRITER = r"""
import hashlib, os, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=NORMAL")
print("ready", flush=True)
while True:
    payload = os.urandom(1024)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO ledger(payload, digest) VALUES (?, ?)",
                 (payload, hashlib.sha256(payload).hexdigest()))
    conn.execute("UPDATE totals SET n = n + 1 WHERE k = 'ledger'")
    conn.execute("COMMIT")
    time.sleep(0.002)
"""


def add_rows(db: Path, rows: int, payload_size: int = 4096, *, random_payload: bool = True) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        with conn:
            for i in range(rows):
                payload = os.urandom(payload_size) if random_payload else bytes([i % 251]) * 64
                conn.execute(
                    "INSERT INTO ledger(payload, digest) VALUES (?, ?)",
                    (payload, hashlib.sha256(payload).hexdigest()),
                )
            conn.execute("UPDATE totals SET n = n + ? WHERE k = 'ledger'", (rows,))
    finally:
        conn.close()


def committed_rows(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT n FROM totals WHERE k = 'ledger'").fetchone()[0])
    finally:
        conn.close()


def verify_ledger(db: Path) -> int:
    """quick_check, no gaps, every payload intact, totals consistent; returns the row count."""
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        ids = []
        for row_id, payload, digest in conn.execute("SELECT id, payload, digest FROM ledger"):
            assert hashlib.sha256(payload).hexdigest() == digest, f"row {row_id} corrupt"
            ids.append(row_id)
        total = int(conn.execute("SELECT n FROM totals WHERE k = 'ledger'").fetchone()[0])
    finally:
        conn.close()
    assert ids == list(range(1, len(ids) + 1)), "ids have gaps: not a point-in-time copy"
    assert total == len(ids), f"totals says {total}, ledger has {len(ids)} rows"
    return total


@contextlib.contextmanager
def writer(db: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        start = committed_rows(db)
        deadline = time.monotonic() + 10
        while committed_rows(db) < start + 20:  # it is really committing
            assert time.monotonic() < deadline, "writer is not committing"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@dataclass
class Pi:
    """The car's side: a database, a logs directory, a key file and the tool's state dir."""

    root: Path
    comp: Companion

    def __post_init__(self) -> None:
        self.db = self.root / "obd.db"
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.state_dir = self.root / "state"
        self.key_file = self.root / "push.key"
        self.set_key(self.comp.key)

    def set_key(self, key: str) -> None:
        self.key_file.write_text(key + "\n")
        self.key_file.chmod(0o600)

    def args(self, *extra: str, db: bool = True, logs: bool = False) -> list[str]:
        args = [
            "--server",
            self.comp.url,
            "--key-file",
            str(self.key_file),
            "--device-id",
            self.comp.device,
            "--state-dir",
            str(self.state_dir),
            "--retries",
            "2",
            "--backoff",
            "0.2",
        ]
        if db:
            args += ["--db", str(self.db)]
        if logs:
            args += ["--logs", str(self.logs)]
        return [*args, *extra]

    def run(
        self, *extra: str, db: bool = True, logs: bool = False, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(*self.args(*extra, db=db, logs=logs), timeout=timeout)

    def popen(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(PUSH), *self.args(*extra)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def restore(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_tool("restore", *self.args(*extra))

    def state(self) -> dict[str, Any]:
        data = json.loads((self.state_dir / "state.json").read_text())
        return data["targets"][f"{self.comp.url}|{self.comp.device}"]

    def listing(self, backup_type: str) -> list[dict[str, Any]]:
        status, _, body = self.comp.request(
            "GET", f"/api/v1/backups?deviceId={self.comp.device}&type={backup_type}"
        )
        assert status == 200, body
        return list(body["backups"])


def run_tool(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PUSH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )


class LossyProxy:
    """A TCP proxy in front of the real companion that forwards the first PUT completely but
    throws away the server's answer and hangs up: the backup is stored, the client never
    learns it. Everything else passes through untouched."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            with self._lock:
                drop = head.startswith(b"PUT ") and self.dropped == 0
                self.dropped += int(drop)
            upstream.sendall(head)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            while data := upstream.recv(65536):  # the server closes after its answer
                if not drop:
                    client.sendall(data)
            if drop:
                client.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)


@pytest.fixture
def pi(tmp_path: Path, companion: Companion) -> Pi:
    root = tmp_path / "pi"
    root.mkdir()
    return Pi(root, companion)


def stored_files(comp: Companion, backup_type: str) -> list[Path]:
    folder = comp.data_dir / "backups" / comp.device / backup_type
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def wait_for_partial_upload(comp: Companion, min_bytes: int, proc: subprocess.Popen[str]) -> None:
    """Wait until the server has written min_bytes of an upload to disk (it streams into a
    temporary file in the destination directory), proving the upload is in flight."""
    deadline = time.monotonic() + 60
    root = comp.data_dir / "backups"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"push ended early: {proc.communicate()}"
        with contextlib.suppress(FileNotFoundError):
            for path in root.rglob("*"):
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file() and path.stat().st_size >= min_bytes:
                        return
        time.sleep(0.05)
    raise AssertionError("no upload in flight on the server")


# ---------------------------------------------------------------------------------------------
# Snapshot consistency


def test_snapshot_is_point_in_time_while_another_process_writes(tmp_path: Path) -> None:
    live = tmp_path / "obd.db"
    add_rows(live, 6000)  # ~25 MB, so the snapshot takes long enough to overlap many commits
    snap = tmp_path / "snap.db"
    with writer(live):
        before = committed_rows(live)
        push_client.snapshot_database(live, snap)
        after = committed_rows(live)
    # The writer committed while the snapshot ran, yet the copy is one committed state: every
    # row committed before it started, no torn transaction.
    assert after > before
    rows = verify_ledger(snap)
    assert before <= rows <= after


def test_push_while_app_writes_restores_every_committed_row(pi: Pi, tmp_path: Path) -> None:
    add_rows(pi.db, 4000)
    with writer(pi.db):
        before = committed_rows(pi.db)
        result = pi.run("--compress-level", "1")
        after = committed_rows(pi.db)
    assert result.returncode == 0, result.stderr
    assert after > before
    restored = tmp_path / "restored.db"
    result = pi.restore("--latest", "--to", str(restored))
    assert result.returncode == 0, result.stderr
    assert before <= verify_ledger(restored) <= after


# ---------------------------------------------------------------------------------------------
# Upload, verification, state


def test_push_stores_verified_copy_and_repeated_run_sends_nothing(pi: Pi) -> None:
    add_rows(pi.db, 200)
    first = pi.run()
    assert first.returncode == 0, first.stderr
    assert "sha256 verified" in first.stderr
    backups = pi.listing("database")
    assert len(backups) == 1
    assert backups[0]["name"].endswith(".gz")
    # The state file records exactly the digest the server reports for what it stored.
    (entry,) = pi.state()["database"].values()
    assert entry["sha256"] == backups[0]["sha256"]
    assert entry["backupId"] == backups[0]["id"]
    assert not (pi.state_dir / "work").exists(), "snapshot temp files left behind"

    again = pi.run()
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stderr
    assert len(pi.listing("database")) == 1

    add_rows(pi.db, 1)
    changed = pi.run()
    assert changed.returncode == 0, changed.stderr
    assert len(pi.listing("database")) == 2


def test_unchanged_logs_are_not_resent(pi: Pi) -> None:
    (pi.logs / "app.log").write_text("drive 1 started\n" * 200)
    (pi.logs / "obd").mkdir()
    (pi.logs / "obd" / "can.log").write_text("0x7E8 41 0C 1A F8\n" * 500)
    (pi.logs / "app.log.1.gz").write_bytes(gzip.compress(b"older log\n" * 100, mtime=0))
    (pi.logs / ".app.log.swp").write_text("editor junk, not a log")

    first = pi.run(db=False, logs=True)
    assert first.returncode == 0, first.stderr
    names = sorted(b["name"] for b in pi.listing("logs"))
    assert len(names) == 3, names
    assert not any("swp" in n for n in names)

    second = pi.run(db=False, logs=True)
    assert second.returncode == 0, second.stderr
    assert "0 stored" in second.stderr
    assert len(pi.listing("logs")) == 3

    # A touch without a content change is not a change.
    later = time.time() + 5
    os.utime(pi.logs / "app.log", (later, later))
    touched = pi.run(db=False, logs=True)
    assert touched.returncode == 0, touched.stderr
    assert len(pi.listing("logs")) == 3

    with (pi.logs / "app.log").open("a") as f:
        f.write("drive 2 started\n")
    appended = pi.run(db=False, logs=True)
    assert appended.returncode == 0, appended.stderr
    backups = pi.listing("logs")
    assert len(backups) == 4
    # Only app.log went again, and its stored bytes are the gzip of the whole new file.
    newest = max(backups, key=lambda b: b["id"])
    status, headers, body = pi.comp.request("GET", f"/api/v1/backups/{newest['id']}")
    assert status == 200
    assert gzip.decompress(body) == (pi.logs / "app.log").read_bytes()
    lower = {k.lower(): v for k, v in headers.items()}  # header case is the server's choice
    assert lower["x-content-sha256"] == hashlib.sha256(body).hexdigest()


def test_progress_bar_on_a_terminal(pi: Pi) -> None:
    add_rows(pi.db, 1000)  # ~4 MB of random payload, sent at 2 MB/s: ~2 s of progress
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        with contextlib.suppress(OSError):  # EIO once the child side is closed
            while data := os.read(master, 4096):
                chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    proc = subprocess.run(
        [sys.executable, str(PUSH), *pi.args("--limit-rate", "2000000", "--compress-level", "1")],
        stderr=slave,
        stdout=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    os.close(slave)
    reader.join(10)
    os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out
    assert "ETA" in out and "MiB/s" in out and "[#" in out
    assert out.count("\r") > 3, "the bar was not redrawn"


# ---------------------------------------------------------------------------------------------
# Failures


def test_wrong_key_is_refused_with_a_clear_message(pi: Pi) -> None:
    add_rows(pi.db, 10)
    pi.set_key("not-the-key-" + "x" * 30)
    result = pi.run()
    assert result.returncode == push_client.EXIT_AUTH
    assert "refused the key" in result.stderr and "HTTP 401" in result.stderr
    assert "Traceback" not in result.stderr
    assert pi.listing("database") == []


def test_key_of_another_device_is_refused(pi: Pi) -> None:
    add_rows(pi.db, 10)
    pi.set_key(pi.comp.other_key)
    result = pi.run()
    assert result.returncode == push_client.EXIT_AUTH
    assert pi.comp.other_device in result.stderr
    assert pi.listing("database") == []


def test_server_rejection_gives_the_servers_message(make_companion: Any, tmp_path: Path) -> None:
    comp = make_companion(backups={"max_upload_bytes": 64 * 1024})
    (tmp_path / "pi").mkdir()
    pi = Pi(tmp_path / "pi", comp)
    add_rows(pi.db, 100)  # ~400 KB of random payload: too big
    result = pi.run()
    assert result.returncode == push_client.EXIT_REJECTED, result.stderr
    assert "HTTP 413" in result.stderr
    assert "retry" not in result.stderr, "a 413 must not be retried"
    assert pi.listing("database") == []


def test_unreachable_server_exits_fast(pi: Pi) -> None:
    add_rows(pi.db, 10)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = pi.args()
    args[args.index("--server") + 1] = f"http://127.0.0.1:{port}"
    result = run_tool(*args)
    assert result.returncode == push_client.EXIT_UNREACHABLE
    assert "not reachable" in result.stderr

    # --wait keeps trying (the WiFi hook fires before DHCP/DNS settle), then gives up.
    started = time.monotonic()
    result = run_tool(*args, "--wait", "3")
    assert result.returncode == push_client.EXIT_UNREACHABLE
    assert "trying for" in result.stderr
    assert 2 <= time.monotonic() - started < 15

    # A server that accepts the connection and never answers: the short ping timeout ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        args[args.index("--server") + 1] = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = run_tool(*args, "--ping-timeout", "1")
        elapsed = time.monotonic() - started
    assert result.returncode == push_client.EXIT_UNREACHABLE
    assert "timed out" in result.stderr
    assert elapsed < 10
    assert not (pi.state_dir / "state.json").exists()


def test_server_killed_mid_upload_next_run_leaves_exactly_one_copy(pi: Pi) -> None:
    add_rows(pi.db, 4000)  # ~16 MB of random payload, sent at 4 MB/s
    proc = pi.popen("--limit-rate", "4000000", "--compress-level", "1")
    wait_for_partial_upload(pi.comp, 2 << 20, proc)
    pi.comp.kill9()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == push_client.EXIT_RETRIES, err
    assert "gave up" in err
    assert not (pi.state_dir / "state.json").exists() or not pi.state()["database"]

    pi.comp.start()
    result = pi.run()
    assert result.returncode == 0, result.stderr
    backups = pi.listing("database")
    assert len(backups) == 1
    files = stored_files(pi.comp, "database")
    assert [f.name for f in files] == [backups[0]["name"]]
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == backups[0]["sha256"]


def test_server_restarted_during_backoff_same_run_completes_once(pi: Pi) -> None:
    add_rows(pi.db, 4000)
    proc = pi.popen(
        "--limit-rate", "4000000", "--compress-level", "1", "--retries", "8", "--backoff", "1"
    )
    wait_for_partial_upload(pi.comp, 2 << 20, proc)
    pi.comp.kill9()
    pi.comp.start()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "retry 1/8" in err
    backups = pi.listing("database")
    assert len(backups) == 1
    assert len(stored_files(pi.comp, "database")) == 1
    (entry,) = pi.state()["database"].values()
    assert entry["sha256"] == backups[0]["sha256"]


def test_lost_answer_is_not_uploaded_twice(pi: Pi) -> None:
    add_rows(pi.db, 300)
    proxy = LossyProxy(pi.comp.port)
    try:
        args = pi.args()
        args[args.index("--server") + 1] = proxy.url
        result = run_tool(*args)
    finally:
        proxy.close()
    assert proxy.dropped == 1, "the proxy did not drop an answer; the test proves nothing"
    assert result.returncode == 0, result.stderr
    assert "answer was lost" in result.stderr
    backups = pi.listing("database")
    assert len(backups) == 1
    assert len(stored_files(pi.comp, "database")) == 1


def test_sigterm_mid_upload_cleans_up_and_records_nothing(pi: Pi) -> None:
    add_rows(pi.db, 2000)
    proc = pi.popen("--limit-rate", "2000000", "--compress-level", "1")
    wait_for_partial_upload(pi.comp, 1 << 20, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == push_client.EXIT_INTERRUPTED, err
    assert not (pi.state_dir / "work").exists()
    assert not (pi.state_dir / "state.json").exists() or not pi.state()["database"]
    # The lock died with the process: the next run goes ahead.
    result = pi.run()
    assert result.returncode == 0, result.stderr


def test_runs_never_overlap(pi: Pi) -> None:
    add_rows(pi.db, 10)
    pi.state_dir.mkdir()
    with (pi.state_dir / "lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        result = pi.run()
        assert result.returncode == push_client.EXIT_LOCKED
        assert "4242" in result.stderr
        assert pi.listing("database") == []
    assert pi.run().returncode == 0


# ---------------------------------------------------------------------------------------------
# Configuration


def test_config_file_lets_cron_call_it_without_arguments(pi: Pi, tmp_path: Path) -> None:
    add_rows(pi.db, 50)
    (pi.logs / "app.log").write_text("hello\n")
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    config = home / ".config" / "chi-companion-push.toml"
    config.write_text(
        f'server = "{pi.comp.url}"\n'
        f'key_file = "{pi.key_file}"\n'
        f'device_id = "{pi.comp.device}"\n'
        f'db = "{pi.db}"\n'
        f'logs = "{pi.logs}"\n'
        f'state_dir = "{pi.state_dir}"\n'
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    result = run_tool(env=env)
    assert result.returncode == 0, result.stderr
    assert len(pi.listing("database")) == 1
    assert len(pi.listing("logs")) == 1

    config.write_text(config.read_text() + "retires = 3\n")
    bad = run_tool(env=env)
    assert bad.returncode == push_client.EXIT_USAGE
    assert "retires: unknown key" in bad.stderr


def test_options_may_come_before_or_after_the_command(pi: Pi, tmp_path: Path) -> None:
    """`--config F list` is `list --config F` (issue 14): the subcommand may stand anywhere
    among the options, and an option's value named like a command is still its value."""
    add_rows(pi.db, 20)
    assert pi.run().returncode == 0
    config = tmp_path / "push.toml"
    config.write_text(
        f'server = "{pi.comp.url}"\n'
        f'key_file = "{pi.key_file}"\n'
        f'device_id = "{pi.comp.device}"\n'
        f'state_dir = "{pi.state_dir}"\n'
    )
    before = run_tool("--config", str(config), "list", "--type", "database")
    after = run_tool("list", "--config", str(config), "--type", "database")
    mixed = run_tool("--config", str(config), "--quiet", "list", "--type=database")
    for result in (before, after, mixed):
        assert result.returncode == 0, result.stderr
        assert result.stdout == after.stdout and ".db.gz" in result.stdout
    # A config file called "list": the value of --config, not the command (so: a push).
    named_list = tmp_path / "list"
    named_list.write_text(config.read_text())
    push = run_tool("--config", "list", "--db", str(pi.db), env=dict(os.environ), cwd=tmp_path)
    assert push.returncode == 0, push.stderr
    assert len(pi.listing("database")) == 1  # the same snapshot again: nothing new stored

    config.write_bytes(b'server = "\xff"\n')
    bad = run_tool("--config", str(config), "list")
    assert bad.returncode == push_client.EXIT_USAGE
    assert bad.stderr.count("\n") == 1 and "not UTF-8" in bad.stderr, bad.stderr


# ---------------------------------------------------------------------------------------------
# Restore


def test_restore_round_trip_and_refusals(pi: Pi, tmp_path: Path) -> None:
    add_rows(pi.db, 300)
    assert pi.run().returncode == 0
    first_rows = committed_rows(pi.db)
    add_rows(pi.db, 25)
    assert pi.run().returncode == 0
    backups = pi.listing("database")
    assert len(backups) == 2

    latest = tmp_path / "latest.db"
    result = pi.restore("--latest", "--to", str(latest))
    assert result.returncode == 0, result.stderr
    assert verify_ledger(latest) == first_rows + 25
    assert not Path(f"{latest}-wal").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".latest.db")]

    oldest = min(backups, key=lambda b: b["id"])
    older = tmp_path / "older.db"
    result = pi.restore("--id", str(oldest["id"]), "--to", str(older))
    assert result.returncode == 0, result.stderr
    assert verify_ledger(older) == first_rows

    # Never overwrite: an existing file, a stale -wal, or the live database itself.
    before = latest.read_bytes()
    again = pi.restore("--latest", "--to", str(latest))
    assert again.returncode == push_client.EXIT_REFUSED
    assert latest.read_bytes() == before
    stale = tmp_path / "fresh.db"
    Path(f"{stale}-wal").write_bytes(b"stale")
    assert pi.restore("--latest", "--to", str(stale)).returncode == push_client.EXIT_REFUSED
    assert not stale.exists()
    live_before = pi.db.read_bytes()
    refused = pi.restore("--latest", "--to", str(pi.db))
    assert refused.returncode == push_client.EXIT_REFUSED
    assert "live database" in refused.stderr
    assert pi.db.read_bytes() == live_before


# ---------------------------------------------------------------------------------------------
# Plain python3, no third-party packages


def test_runs_from_a_bare_venv_without_third_party_packages(pi: Pi, tmp_path: Path) -> None:
    venv = tmp_path / "bare-venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    bindir = tmp_path / "usr-local-bin"
    bindir.mkdir()
    tool = bindir / "chi-companion-push"  # copied exactly as the setup guide tells the Pi
    shutil.copyfile(PUSH, tool)
    tool.chmod(0o755)
    env = {"PATH": f"{venv / 'bin'}:{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}

    # The installed copy has no .py suffix, so load it with an explicit source loader.
    probe_code = (
        "import importlib.machinery, importlib.util, json, sys\n"
        "try:\n    import bottle\nexcept ImportError:\n    isolated = True\n"
        "else:\n    isolated = False\n"
        f"loader = importlib.machinery.SourceFileLoader('pushtool', {str(tool)!r})\n"
        "spec = importlib.util.spec_from_loader('pushtool', loader)\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['pushtool'] = mod  # dataclasses look their module up there\n"
        "loader.exec_module(mod)\n"
        "third = sorted(n for n in sys.modules if n.split('.')[0] not in\n"
        "               sys.stdlib_module_names and n not in ('__main__', 'pushtool'))\n"
        "print(json.dumps({'isolated': isolated, 'third': third, 'prefix': sys.prefix,\n"
        "                  'main': callable(mod.main)}))\n"
    )
    probe = subprocess.run(
        [str(python), "-c", probe_code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["isolated"], "the venv can see third-party packages; the test proves nothing"
    assert report["prefix"] == str(venv)
    assert report["third"] == []
    assert report["main"]

    # Through the shebang (#!/usr/bin/env python3 finds the venv's python first on PATH).
    helped = subprocess.run(
        ["chi-companion-push", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "exit codes:" in helped.stdout and "restore" in helped.stdout

    add_rows(pi.db, 100)
    pushed = subprocess.run(
        ["chi-companion-push", *pi.args()],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert len(pi.listing("database")) == 1


def test_push_tool_version_follows_the_package() -> None:
    import chi_companion
    from chi_companion import push_client

    assert chi_companion.__version__ == push_client.VERSION
