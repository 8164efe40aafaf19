#!/usr/bin/env python3
"""Backup upload throughput: PUT through the real server vs a plain hashing + fsync loop.

Uploads a file (512 MiB by default) through ``PUT /api/v1/backups/...`` of a real companion on
127.0.0.1 and, in the same run, writes the same bytes with SHA-256 + fsync in a plain Python
loop to the same filesystem: the best any receiver written in Python could do there. Prints
MB/s for both, their ratio, and the server worker's RSS (before, peak sampled during the
upload, growth). Goals (issue 3): ratio >= 0.6, RSS growth < 20 MB.

    .venv/bin/python bench/upload.py [--size-mib 512] [--runs 1] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Imported after the path is set up above: the bench runs as a script from any directory.
from tests.companion_process import Companion

MiB = 1024 * 1024
CHUNK = MiB


def make_source(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def baseline(source: Path, dest: Path) -> tuple[float, str]:
    """What the server does, minus HTTP: read, hash, write, fsync, rename. Seconds taken."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    temp = dest.with_name(dest.name + ".tmp")
    with source.open("rb", buffering=0) as src:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    os.rename(temp, dest)
    dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return time.perf_counter() - started, digest.hexdigest()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def worker_pid(comp: Companion) -> int:
    assert comp.proc is not None
    kids = Path(f"/proc/{comp.proc.pid}/task/{comp.proc.pid}/children").read_text().split()
    return int(kids[0])


def upload(comp: Companion, source: Path, size: int, digest: str) -> tuple[float, int, int]:
    """PUT the file; returns (seconds, RSS before, peak RSS sampled during the upload)."""
    pid = worker_pid(comp)
    before = rss(pid)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss(pid))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", comp.port, timeout=600, blocksize=CHUNK)
    started = time.perf_counter()
    try:
        with source.open("rb") as body:
            conn.request(
                "PUT",
                f"/api/v1/backups/{comp.device}/database/bench.db",
                body=body,
                headers={
                    "X-API-Key": comp.key,
                    "X-Content-SHA256": digest,
                    "Content-Length": str(size),
                    "Content-Type": "application/octet-stream",
                },
            )
            resp = conn.getresponse()
            answer = json.loads(resp.read())
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
        stop.set()
        sampler.join()
    if resp.status != 201 or answer.get("sha256") != digest:
        raise SystemExit(f"upload failed: {resp.status} {answer}")
    # Pruning between runs is not what is measured; the operator key removes the upload.
    comp.request("DELETE", f"/api/v1/backups/{answer['id']}", key=comp.operator_key)
    return elapsed, before, peak[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dir", help="where to put the data (default: the system temp dir)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-upload-") as tmp:
        base = Path(tmp)
        source = base / "source.bin"
        digest = make_source(source, size)
        (base / "server").mkdir()
        comp = Companion(
            base / "server",
            {
                "backups": {"min_free_bytes": 0, "max_upload_bytes": size + MiB},
                "server": {"log_level": "warning"},
            },
        )
        comp.start()
        try:
            comp.request("GET", "/api/v1/ping")  # warm the worker before measuring RSS
            print(f"file: {args.size_mib} MiB, data dir {comp.data_dir}")
            for run in range(1, args.runs + 1):
                base_s, base_digest = baseline(source, base / "baseline.bin")
                (base / "baseline.bin").unlink()
                assert base_digest == digest
                put_s, before, peak = upload(comp, source, size, digest)
                base_rate = size / base_s / 1e6
                put_rate = size / put_s / 1e6
                print(
                    f"run {run}: baseline {base_rate:7.1f} MB/s   PUT {put_rate:7.1f} MB/s   "
                    f"ratio {put_rate / base_rate:.2f}   worker RSS {before / MiB:.1f} MiB, "
                    f"peak {peak / MiB:.1f} MiB, growth {(peak - before) / 1e6:.1f} MB"
                )
        finally:
            comp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
