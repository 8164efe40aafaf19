"""Backup receiver (issue 3) against a real companion process, real files and real SQLite."""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.companion_process import Companion

MiB = 1024 * 1024
API = "/api/v1"
TYPES = ("database", "logs", "config")
Response = tuple[int, dict[str, str], Any]


# ---------------------------------------------------------------------------- helpers


def put(
    comp: Companion,
    name: str,
    data: bytes,
    *,
    btype: str = "database",
    device: str | None = None,
    sha: str | None = None,
    key: str | bool = True,
) -> Response:
    headers = {"Content-Type": "application/octet-stream"}
    if sha is not None:
        headers["X-Content-SHA256"] = sha
    path = f"{API}/backups/{device or comp.device}/{btype}/{name}"
    return comp.request("PUT", path, raw=data, headers=headers, key=key)


def multipart_parts(
    fields: list[tuple[str, str]],
    file_data: Iterable[bytes],
    filename: str = "obd.db",
    boundary: str = "chiBoundary7MA4YWxk",
    file_first: bool = False,
) -> list[bytes | Iterable[bytes]]:
    """The pieces of a multipart/form-data body; the file's bytes stay an iterable."""
    field_parts: list[bytes | Iterable[bytes]] = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode()
        for n, v in fields
    ]
    file_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode("utf-8", "surrogateescape")
    file_parts: list[bytes | Iterable[bytes]] = [file_head, file_data, b"\r\n"]
    parts = file_parts + field_parts if file_first else field_parts + file_parts
    return [*parts, f"--{boundary}--\r\n".encode()]


def flatten(parts: list[bytes | Iterable[bytes]]) -> Iterator[bytes]:
    for part in parts:
        if isinstance(part, bytes):
            yield part
        else:
            yield from part


def post_multipart(
    comp: Companion,
    data: bytes,
    *,
    device: str | None = None,
    btype: str = "database",
    filename: str = "obd.db",
    sha: str | None = None,
    key: str | bool = True,
    file_first: bool = False,
) -> Response:
    fields = [("deviceId", device or comp.device), ("type", btype)]
    if sha is not None:
        fields.append(("sha256", sha))
    body = b"".join(flatten(multipart_parts(fields, [data], filename, file_first=file_first)))
    headers = {"Content-Type": "multipart/form-data; boundary=chiBoundary7MA4YWxk"}
    return comp.request("POST", f"{API}/backup", raw=body, headers=headers, key=key)


def stream_request(
    comp: Companion,
    method: str,
    path: str,
    *,
    chunks: Iterable[bytes],
    length: int,
    headers: dict[str, str],
    key: str | None = None,
) -> tuple[int, Any]:
    """Send a body of `length` bytes from an iterable of chunks (never all in memory)."""
    conn = http.client.HTTPConnection("127.0.0.1", comp.port, timeout=300, blocksize=MiB)
    try:
        all_headers = {"X-API-Key": key or comp.key, "Content-Length": str(length), **headers}
        conn.request(method, path, body=chunks, headers=all_headers)
        resp = conn.getresponse()
        payload = resp.read()
        ctype = resp.getheader("Content-Type", "")
        if ctype.startswith("application/json"):
            return resp.status, json.loads(payload)
        return resp.status, payload
    finally:
        conn.close()


def file_chunks(path: Path, size: int = MiB) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(size):
            yield chunk


def download_sha(comp: Companion, backup_id: int, key: str | None = None) -> tuple[str, int, str]:
    """(sha256 of the streamed body, Content-Length, X-Content-SHA256) of a download."""
    conn = http.client.HTTPConnection("127.0.0.1", comp.port, timeout=300)
    try:
        conn.request("GET", f"{API}/backups/{backup_id}", headers={"X-API-Key": key or comp.key})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        digest = hashlib.sha256()
        while chunk := resp.read(MiB):
            digest.update(chunk)
        return (
            digest.hexdigest(),
            int(resp.getheader("Content-Length", "-1")),
            str(resp.getheader("X-Content-SHA256")),
        )
    finally:
        conn.close()


def worker_pid(comp: Companion) -> int:
    """The gunicorn worker: the one child of the master (comp.proc)."""
    assert comp.proc is not None
    children = Path(f"/proc/{comp.proc.pid}/task/{comp.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's resident set every 20 ms in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def tree(comp: Companion) -> list[str]:
    """Every file (not directory) under backups/, as relative paths, temp files included."""
    root = comp.data_dir / "backups"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def catalog(comp: Companion) -> list[dict[str, Any]]:
    status, _, body = comp.request("GET", f"{API}/backups", key=comp.operator_key)
    assert status == 200, body
    return list(body["backups"])


def catalog_paths(comp: Companion) -> list[str]:
    return sorted(f"{b['deviceId']}/{b['type']}/{b['name']}" for b in catalog(comp))


def cli(comp: Companion, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "chi_companion",
            "backups",
            *args,
            "--config",
            str(comp.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def make_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        remaining = size
        while remaining:
            chunk = os.urandom(min(MiB, remaining))
            digest.update(chunk)
            fh.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def hdr(headers: dict[str, str], name: str) -> str | None:
    """A response header by case-insensitive name (urllib keeps the server's spelling)."""
    return {k.lower(): v for k, v in headers.items()}.get(name.lower())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    size = 200 * MiB
    path = tmp_path_factory.mktemp("big") / "big.bin"
    return path, make_random_file(path, size), size


@pytest.mark.parametrize("path_kind", ["put", "multipart"])
def test_200mib_round_trip_with_bounded_rss(
    make_companion: Callable[..., Companion], big_file: tuple[Path, str, int], path_kind: str
) -> None:
    comp = make_companion(backups={"min_free_bytes": 0})
    path, digest, size = big_file
    assert comp.request("GET", f"{API}/ping")[0] == 200  # warm the worker before the baseline
    pid = worker_pid(comp)
    with RssSampler(pid) as rss:
        if path_kind == "put":
            status, body = stream_request(
                comp,
                "PUT",
                f"{API}/backups/{comp.device}/database/big.db",
                chunks=file_chunks(path),
                length=size,
                headers={"X-Content-SHA256": digest, "Content-Type": "application/octet-stream"},
            )
        else:
            parts = multipart_parts(
                [("deviceId", comp.device), ("type", "database"), ("sha256", digest)],
                file_chunks(path),
                "big.db",
            )
            length = sum(size if not isinstance(p, bytes) else len(p) for p in parts)
            status, body = stream_request(
                comp,
                "POST",
                f"{API}/backup",
                chunks=flatten(parts),
                length=length,
                headers={"Content-Type": "multipart/form-data; boundary=chiBoundary7MA4YWxk"},
            )
    assert status == 201, body
    assert body["size"] == size
    assert body["sha256"] == digest
    print(f"{path_kind}: worker RSS {rss.baseline / MiB:.1f} MiB, +{rss.growth / MiB:.2f} MiB peak")
    assert rss.samples > 10, "the upload was too quick to sample; the RSS check proves nothing"
    assert rss.growth < 30_000_000, f"worker RSS grew by {rss.growth / MiB:.1f} MiB"
    got_sha, length_header, header_sha = download_sha(comp, body["id"])
    assert (got_sha, length_header, header_sha) == (digest, size, digest)
    stored = comp.data_dir / "backups" / comp.device / "database" / body["name"]
    assert stored.stat().st_size == size
    assert tree(comp) == [f"{comp.device}/database/{body['name']}"]


# ---------------------------------------------------------------------------- API shape


def test_put_response_listing_download_and_head(companion: Companion) -> None:
    data = b"SQLite format 3\x00" + os.urandom(5000)
    status, headers, body = put(companion, "obd.db.gz", data, sha=sha(data))
    assert status == 201, body
    assert set(body) == {"id", "deviceId", "type", "name", "size", "sha256", "receivedAt"}
    assert body["deviceId"] == companion.device and body["type"] == "database"
    assert body["size"] == len(data) and body["sha256"] == sha(data)
    stamp = body["receivedAt"].replace("-", "").replace(":", "")
    assert body["name"] == f"obd-{stamp}.db.gz"  # server UTC time in the stored name
    assert hdr(headers, "Location") == f"{API}/backups/{body['id']}"

    status, _, listing = companion.request("GET", f"{API}/backups?deviceId={companion.device}")
    assert status == 200 and listing["backups"] == [body]

    status, headers, payload = companion.request("GET", f"{API}/backups/{body['id']}")
    assert status == 200 and payload == data
    assert hdr(headers, "X-Content-SHA256") == sha(data)
    assert hdr(headers, "Content-Length") == str(len(data))

    status, headers, payload = companion.request("HEAD", f"{API}/backups/{body['id']}")
    assert status == 200 and payload == b""
    assert hdr(headers, "Content-Length") == str(len(data))
    assert hdr(headers, "X-Content-SHA256") == sha(data)

    assert companion.request("GET", f"{API}/backups/999999")[0] == 404


def test_multipart_with_file_before_fields(companion: Companion) -> None:
    data = os.urandom(70_000)
    status, _, body = post_multipart(
        companion, data, btype="logs", filename="app.log", sha=sha(data), file_first=True
    )
    assert status == 201, body
    assert body["type"] == "logs" and body["name"].startswith("app-")
    assert body["name"].endswith(".log")
    assert tree(companion) == [f"{companion.device}/logs/{body['name']}"]
    assert companion.request("GET", f"{API}/backups/{body['id']}")[2] == data


def test_listing_is_newest_first_and_filters(companion: Companion) -> None:
    ids = []
    for i, btype in enumerate(["database", "logs", "database", "config"]):
        status, _, body = put(companion, f"f{i}.bin", b"x" * (i + 1), btype=btype)
        assert status == 201, body
        ids.append(body["id"])
    _, _, everything = companion.request("GET", f"{API}/backups")
    assert [b["id"] for b in everything["backups"]] == ids[::-1]
    _, _, dbs = companion.request("GET", f"{API}/backups?type=database")
    assert [b["id"] for b in dbs["backups"]] == [ids[2], ids[0]]
    assert companion.request("GET", f"{API}/backups?type=photos")[0] == 400


def test_health_reports_newest_backup_per_device(companion: Companion) -> None:
    _, _, health = companion.request("GET", f"{API}/health", key=companion.operator_key)
    component = health["components"]["backups"]
    assert component["devices"][companion.device] == {
        "newestAt": None,
        "newestType": None,
        "count": 0,
    }
    put(companion, "a.db", b"1")
    status, _, body = put(companion, "b.log", b"2", btype="logs")
    assert status == 201
    _, _, health = companion.request("GET", f"{API}/health", key=companion.operator_key)
    component = health["components"]["backups"]
    assert component["status"] == "ok"
    assert component["freeBytes"] > 0
    assert component["devices"][companion.device] == {
        "newestAt": body["receivedAt"],
        "newestType": "logs",
        "count": 2,
    }
    assert component["devices"][companion.other_device]["newestAt"] is None


# ---------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Companion]:
    """One server for the refusal table; every case must leave its backups/ tree empty."""
    base = tmp_path_factory.mktemp("strict")
    # Every refused attempt counts against the device's upload rate too; the table is about
    # the refusals, so the burst is set out of its way (test_hostile_service tests the 429).
    limits = {"max_upload_bytes": 4096, "min_free_bytes": 0, "upload_burst": 1000}
    comp = Companion(base, {"backups": limits}).start()
    yield comp
    comp.stop()


REFUSALS: dict[str, tuple[Callable[[Companion], Response], int]] = {
    "put digest mismatch": (lambda c: put(c, "a.db", b"payload", sha="0" * 64), 400),
    "put malformed digest": (lambda c: put(c, "a.db", b"payload", sha="xyz"), 400),
    "multipart digest mismatch": (lambda c: post_multipart(c, b"payload", sha="1" * 64), 400),
    "put over size (Content-Length)": (lambda c: put(c, "a.db", b"x" * 5000), 413),
    "multipart over size (while streaming)": (lambda c: post_multipart(c, b"x" * 5000), 413),
    "put unknown type": (lambda c: put(c, "a.db", b"payload", btype="photos"), 400),
    "multipart unknown type": (lambda c: post_multipart(c, b"payload", btype="photos"), 400),
    "put bad device id": (lambda c: put(c, "a.db", b"p", device="bad%20device!"), 400),
    "put device id ..": (lambda c: put(c, "a.db", b"p", device=".."), 400),
    "multipart bad device id": (lambda c: post_multipart(c, b"p", device="-x/../y"), 400),
    "put other device's id": (lambda c: put(c, "a.db", b"p", device=c.other_device), 403),
    "put unknown device (operator)": (
        lambda c: put(c, "a.db", b"p", device="chi-ghost", key=c.operator_key),
        404,
    ),
    "put without key": (lambda c: put(c, "a.db", b"p", key=False), 401),
    "put ../ traversal": (lambda c: put(c, "../../../tmp/evil", b"p"), 400),
    "put %2F traversal": (lambda c: put(c, "..%2F..%2Fevil", b"p"), 400),
    "put %2F in name": (lambda c: put(c, "a%2Fb.db", b"p"), 400),
    "put absolute path": (lambda c: put(c, "/etc/passwd", b"p"), 400),
    "put NUL in name": (lambda c: put(c, "a%00.db", b"p"), 400),
    "put name ..": (lambda c: put(c, "..", b"p"), 400),
    "multipart ../ traversal": (lambda c: post_multipart(c, b"p", filename="../../evil"), 400),
    "multipart absolute path": (lambda c: post_multipart(c, b"p", filename="/etc/passwd"), 400),
    "multipart NUL in name": (lambda c: post_multipart(c, b"p", filename="a\x00b"), 400),
    "multipart without file": (
        lambda c: c.request(
            "POST",
            f"{API}/backup",
            raw=(
                b'--B\r\nContent-Disposition: form-data; name="type"\r\n\r\ndatabase\r\n--B--\r\n'
            ),
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        ),
        400,
    ),
    "multipart truncated": (
        lambda c: c.request(
            "POST",
            f"{API}/backup",
            raw=b"".join(flatten(multipart_parts([("deviceId", c.device)], [b"abc"])))[:-10],
            headers={"Content-Type": "multipart/form-data; boundary=chiBoundary7MA4YWxk"},
        ),
        400,
    ),
    "multipart wrong content type": (
        lambda c: c.request(
            "POST", f"{API}/backup", raw=b"abc", headers={"Content-Type": "text/plain"}
        ),
        415,
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_uploads_leave_nothing(strict_server: Companion, case: str) -> None:
    attempt, expected = REFUSALS[case]
    status, _, body = attempt(strict_server)
    assert status == expected, body
    assert isinstance(body, dict) and body.get("error"), body
    assert tree(strict_server) == []
    assert catalog(strict_server) == []
    # Nothing escaped the data directory either.
    assert not (strict_server.data_dir.parent / "evil").exists()
    assert not Path("/tmp/evil").exists()


def test_unsafe_characters_are_sanitised(companion: Companion) -> None:
    status, _, body = put(companion, "my%20drive%20%C3%A9%3B.tar.gz", b"data", btype="logs")
    assert status == 201, body
    stamp = body["receivedAt"].replace("-", "").replace(":", "")
    assert body["name"] == f"my_drive-{stamp}.tar.gz"  # trailing "_" trimmed
    status, _, body = put(companion, ".hidden", b"data", btype="config")
    assert status == 201 and body["name"].startswith("hidden-")  # never a hidden file
    status, _, body = put(companion, "x" * 250 + ".db", b"data")  # names are at most 255
    assert status == 201 and len(body["name"]) < 110


def test_min_free_space_refuses_before_writing(make_companion: Callable[..., Companion]) -> None:
    comp = make_companion(backups={"min_free_bytes": 10**18})
    status, headers, body = put(comp, "a.db", b"payload")
    assert status == 507 and body["error"] == "insufficient storage", body
    assert hdr(headers, "Retry-After")
    assert tree(comp) == [] and catalog(comp) == []
    _, _, health = comp.request("GET", f"{API}/health", key=comp.operator_key)
    assert health["components"]["backups"]["status"] == "degraded"
    assert health["status"] == "degraded"


# ---------------------------------------------------------------------------- append-only


def test_device_key_cannot_delete_or_overwrite(companion: Companion) -> None:
    first = os.urandom(1000)
    status, _, one = put(companion, "obd.db", first)
    assert status == 201
    # Same client name again (within the same second, most likely): a new name, never a
    # replacement of the first file.
    status, _, two = put(companion, "obd.db", b"second")
    assert status == 201 and two["name"] != one["name"] and two["id"] != one["id"]
    # PUT onto the exact stored name of the first backup: stored as yet another new name.
    status, _, three = put(companion, one["name"], b"third")
    assert status == 201 and three["name"] not in (one["name"], two["name"])

    status, _, body = companion.request("DELETE", f"{API}/backups/{one['id']}")
    assert status == 403, body
    status, _, body = companion.request(
        "DELETE", f"{API}/backups/{one['id']}", key=companion.other_key
    )
    assert status == 403, body
    assert companion.request("GET", f"{API}/backups/{one['id']}")[2] == first
    assert len(catalog(companion)) == 3

    # Other devices can neither read nor list it: 404, as if it did not exist.
    assert companion.request("GET", f"{API}/backups/{one['id']}", key=companion.other_key)[0] == 404
    assert (
        companion.request(
            "GET", f"{API}/backups?deviceId={companion.device}", key=companion.other_key
        )[0]
        == 404
    )

    # The operator can delete: file and row go together.
    status, _, _ = companion.request(
        "DELETE", f"{API}/backups/{one['id']}", key=companion.operator_key
    )
    assert status == 204
    assert companion.request("GET", f"{API}/backups/{one['id']}")[0] == 404
    assert one["name"] not in "".join(tree(companion))
    assert tree(companion) == sorted(catalog_paths(companion))


def test_same_second_uploads_never_collide(companion: Companion) -> None:
    payloads = [os.urandom(2000) for _ in range(6)]
    results: list[Response] = [(0, {}, None)] * len(payloads)

    def send(i: int) -> None:
        results[i] = put(companion, "burst.db", payloads[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(payloads))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r[0] == 201 for r in results), results
    names = [r[2]["name"] for r in results]
    assert len(set(names)) == len(names)
    for (_, _, body), data in zip(results, payloads, strict=True):
        assert companion.request("GET", f"{API}/backups/{body['id']}")[2] == data
    stamps = {r[2]["receivedAt"] for r in results}
    if len(stamps) < len(names):  # the usual case: several in one second got -1, -2 ...
        assert any(n.startswith("burst-") and n.count("-") == 2 for n in names), names


# ---------------------------------------------------------------------------- crashes


def _open_put(comp: Companion, name: str, total: int) -> socket.socket:
    """Start a raw PUT of `total` bytes: headers sent, body not yet."""
    sock = socket.create_connection(("127.0.0.1", comp.port), timeout=60)
    head = (
        f"PUT {API}/backups/{comp.device}/database/{name} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nX-API-Key: {comp.key}\r\nContent-Length: {total}\r\n"
        "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head)
    return sock


def _send(sock: socket.socket, size: int) -> None:
    while size > 0:
        chunk = os.urandom(min(MiB, size))
        sock.sendall(chunk)
        size -= len(chunk)


def _read_response(sock: socket.socket) -> tuple[int, Any]:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read() or b"null")


def _temp_files(comp: Companion) -> list[Path]:
    return [p for p in (comp.data_dir / "backups").rglob(".upload-*") if p.is_file()]


def _wait_for(predicate: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill9_mid_upload_leaves_no_partial_file(make_companion: Callable[..., Companion]) -> None:
    comp = make_companion(backups={"min_free_bytes": 0})
    kept = os.urandom(3000)
    status, _, before = put(comp, "kept.db", kept)
    assert status == 201
    sock = _open_put(comp, "crash.db", 64 * MiB)
    try:
        _send(sock, 16 * MiB)
        _wait_for(
            lambda: any(p.stat().st_size >= 8 * MiB for p in _temp_files(comp)),
            "the upload to reach the disk",
        )
        temps = _temp_files(comp)
        comp.kill9()
    finally:
        sock.close()
    assert temps[0].exists()  # the crash really left a temp file behind ...
    comp.start()
    assert not temps[0].exists()  # ... and the start-up removed it
    assert tree(comp) == [f"{comp.device}/database/{before['name']}"]
    assert catalog_paths(comp) == tree(comp)
    assert comp.request("GET", f"{API}/backups/{before['id']}")[2] == kept
    result = cli(comp, "verify")
    assert result.returncode == 0, result.stdout + result.stderr


def test_client_that_vanishes_or_stalls_leaves_nothing(
    make_companion: Callable[..., Companion],
) -> None:
    comp = make_companion(backups={"min_free_bytes": 0}, server={"request_timeout_seconds": 2})
    gone = _open_put(comp, "gone.db", 32 * MiB)
    stalled = _open_put(comp, "stalled.db", 32 * MiB)
    try:
        _send(gone, 4 * MiB)
        _send(stalled, 4 * MiB)
        _wait_for(lambda: len(_temp_files(comp)) == 2, "both uploads to start writing")
        gone.close()  # the Pi drove away mid-upload
        # The stalled one sends nothing more: after request_timeout_seconds the server gives up.
        assert _read_response(stalled)[0] == 408
        _wait_for(lambda: _temp_files(comp) == [], "the temp files to be removed")
    finally:
        gone.close()
        stalled.close()
    assert tree(comp) == [] and catalog(comp) == []


def test_startup_reconcile_files_are_the_truth(make_companion: Callable[..., Companion]) -> None:
    """A crash between the file's link and its catalog row (file without row), and a row
    whose file vanished: after a restart the catalog matches the files exactly."""
    comp = make_companion(backups={"min_free_bytes": 0})
    data = os.urandom(4000)
    _, _, orphan = put(comp, "orphan.db", data)
    _, _, ghost = put(comp, "ghost.log", b"gone", btype="logs")
    comp.stop()
    db = sqlite3.connect(comp.data_dir / "companion.db")
    with db:
        db.execute("DELETE FROM backups WHERE id = ?", (orphan["id"],))
    db.close()
    (comp.data_dir / "backups" / comp.device / "logs" / ghost["name"]).unlink()
    comp.start()
    listing = catalog(comp)
    assert catalog_paths(comp) == tree(comp) == [f"{comp.device}/database/{orphan['name']}"]
    adopted = listing[0]
    assert adopted["sha256"] == sha(data) and adopted["size"] == len(data)
    assert adopted["receivedAt"] == orphan["receivedAt"]  # recovered from the stored name
    assert adopted["id"] != orphan["id"]  # ids are never reused


@pytest.fixture
def small_fs(make_companion: Callable[..., Companion]) -> Iterator[Companion]:
    """A companion whose whole data directory is a 20 MiB tmpfs (tests run as root)."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and must run as root (as CI does)")
    comp = make_companion(start=False, backups={"min_free_bytes": 0})
    comp.data_dir.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m,mode=0750", "tmpfs", str(comp.data_dir)],
        check=True,
    )
    try:
        comp.start()
        yield comp
    finally:
        comp.stop()
        subprocess.run(["umount", str(comp.data_dir)], check=False)


def test_full_filesystem_gives_507_and_leaves_nothing(small_fs: Companion) -> None:
    comp = small_fs
    free_before = os.statvfs(comp.data_dir).f_bavail
    data = os.urandom(30 * MiB)  # more than the whole filesystem
    status, _, body = comp.request(
        "PUT",
        f"{API}/backups/{comp.device}/database/huge.db",
        raw=data,
        headers={"X-Content-SHA256": sha(data)},
        timeout=120,
    )
    assert status == 507, body
    assert body["error"] == "insufficient storage"
    assert tree(comp) == []
    assert catalog(comp) == []
    # The space is given back: the temp file was removed, not just hidden.
    assert os.statvfs(comp.data_dir).f_bavail >= free_before - 64
    # And the service still works once there is room.
    status, _, body = put(comp, "small.db", b"fits")
    assert status == 201, body
    assert tree(comp) == [f"{comp.device}/database/{body['name']}"]


def _fill_disk(filler: Path, leave: int) -> None:
    """Write until the filesystem says ENOSPC, then give back `leave` bytes. Writing to a
    size read from statvfs raced with the companion's own writes (its catalog, its log)."""
    chunk = b"\0" * (64 * 1024)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        f.truncate(max(0, f.tell() - leave))


def test_disk_full_while_writing_gives_507(small_fs: Companion) -> None:
    """Two uploads that both pass the free-space check (their room is reserved), then
    something else fills the disk under them. ENOSPC while writing must be a 507 with
    nothing left."""
    comp = small_fs
    st = os.statvfs(comp.data_dir)
    each = int(st.f_bavail * st.f_frsize * 0.4)
    socks = [_open_put(comp, f"half{i}.db", each) for i in range(2)]
    filler = comp.data_dir / "filler"
    try:
        for sock in socks:
            _send(sock, MiB)
        # Two temp files: both requests are past the free-space check and writing.
        _wait_for(lambda: len(_temp_files(comp)) == 2, "both uploads to start writing")
        _send(socks[0], each - MiB)
        first_status, first = _read_response(socks[0])
        # Another writer on the same disk (not an upload) takes what is left.
        _fill_disk(filler, leave=MiB // 2)
        _send(socks[1], each - MiB)
        second_status, second = _read_response(socks[1])
    finally:
        for sock in socks:
            sock.close()
        filler.unlink(missing_ok=True)
    assert (first_status, second_status) == (201, 507), (first, second)
    assert first["size"] == each
    assert second["detail"] == "the server's disk is full; retry later"  # not the pre-check
    assert _temp_files(comp) == []
    assert tree(comp) == catalog_paths(comp) == [f"{comp.device}/database/{first['name']}"]


# ---------------------------------------------------------------------------- retention


def test_uploads_never_remove_a_backup(make_companion: Callable[..., Companion]) -> None:
    # Even under a policy that keeps only the last 2 and no keep_within: an upload stores,
    # it never prunes (issue 15: a stolen key flushed good backups with junk uploads).
    comp = make_companion(
        backups={"min_free_bytes": 0, "keep_within_days": 0},
        **{"backups.retention.logs": {"keep_last": 2}},
    )
    ids = []
    for i in range(4):
        status, _, body = put(comp, f"app{i}.log", f"log {i}".encode(), btype="logs")
        assert status == 201
        ids.append(body["id"])
    assert sorted(b["id"] for b in catalog(comp)) == ids
    assert tree(comp) == catalog_paths(comp)
    # The operator's prune applies the policy.
    result = cli(comp, "prune")
    assert result.returncode == 0, result.stderr
    assert [b["id"] for b in catalog(comp)] == [ids[3], ids[2]]
    assert tree(comp) == catalog_paths(comp)


@pytest.mark.slow(seconds=20)
def test_cli_list_prune_verify_restore(
    make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    comp = make_companion(backups={"min_free_bytes": 0})
    blobs = [os.urandom(1000 + i) for i in range(3)]
    bodies = []
    for i, blob in enumerate(blobs):
        status, _, body = put(comp, f"obd{i}.db", blob)
        assert status == 201
        bodies.append(body)

    listed = cli(comp, "list")
    assert listed.returncode == 0, listed.stderr
    assert all(b["name"] in listed.stdout for b in bodies)
    assert "3 backup(s)" in listed.stdout

    # Restore writes the file and checks its hash; refuses to overwrite.
    dest = tmp_path / "restored.db"
    result = cli(comp, "restore", str(bodies[0]["id"]), str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == blobs[0]
    again = cli(comp, "restore", str(bodies[0]["id"]), str(dest))
    assert again.returncode == 1 and "exists" in again.stderr

    # A stricter policy, by command: --dry-run prints and deletes nothing.
    with comp.config_path.open("a") as fh:
        fh.write("\n[backups.retention.database]\nkeep_last = 1\n")
    # All three arrived seconds ago: under the default keep_within (7 days) nothing goes.
    kept_all = cli(comp, "prune")
    assert kept_all.returncode == 0 and "0 removed" in kept_all.stdout, kept_all.stdout
    assert len(catalog(comp)) == 3
    text = comp.config_path.read_text()
    comp.config_path.write_text(text.replace("[backups]\n", "[backups]\nkeep_within_days = 0\n"))
    dry = cli(comp, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would remove") == 2 and "(last)" in dry.stdout
    assert len(catalog(comp)) == 3 and len(tree(comp)) == 3
    real = cli(comp, "prune")
    assert real.returncode == 0, real.stderr
    assert "2 removed" in real.stdout
    assert [b["id"] for b in catalog(comp)] == [bodies[2]["id"]]
    assert tree(comp) == catalog_paths(comp)

    assert cli(comp, "verify").returncode == 0
    # Damage the kept file, add an untracked one: verify reports both and fails.
    kept = comp.data_dir / "backups" / comp.device / "database" / bodies[2]["name"]
    with kept.open("r+b") as fh:
        fh.write(b"\xff")
    (kept.parent / "stray.bin").write_bytes(b"?")
    result = cli(comp, "verify")
    assert result.returncode == 1
    assert "CORRUPT" in result.stdout and "UNTRACKED" in result.stdout
    # Restore of a damaged backup fails and leaves nothing.
    bad_dest = tmp_path / "bad.db"
    result = cli(comp, "restore", str(bodies[2]["id"]), str(bad_dest))
    assert result.returncode == 1 and "damaged" in result.stderr
    assert not bad_dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_download_serves_file_via_sendfile_not_memory(
    make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    """Downloads stream (a 64 MiB file) without the worker's RSS following the file size."""
    comp = make_companion(backups={"min_free_bytes": 0})
    path = tmp_path / "mid.bin"
    digest = make_random_file(path, 64 * MiB)
    status, body = stream_request(
        comp,
        "PUT",
        f"{API}/backups/{comp.device}/database/mid.db",
        chunks=file_chunks(path),
        length=64 * MiB,
        headers={"X-Content-SHA256": digest},
    )
    assert status == 201, body
    with RssSampler(worker_pid(comp)) as rss:
        assert download_sha(comp, body["id"])[0] == digest
    assert rss.growth < 30_000_000


def test_missing_file_is_404_not_500(companion: Companion) -> None:
    _, _, body = put(companion, "a.db", b"abc")
    (companion.data_dir / "backups" / companion.device / "database" / body["name"]).unlink()
    status, _, err = companion.request("GET", f"{API}/backups/{body['id']}")
    assert status == 404 and err["error"] == "file missing"
