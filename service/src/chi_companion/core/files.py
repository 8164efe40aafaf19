"""The one way the companion writes a file for good and hashes one.

``write_atomic`` makes readers (and the NAS replication) see either the old file or the whole
new one, and the new one survive a power cut: temp file, fsync, rename, fsync of the
directory. ``sha256_file`` reads in large chunks so a multi-gigabyte backup costs no memory.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make a rename or link in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: Path, payload: bytes, mode: int = 0o640) -> None:
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    with atomic_file(path, mode) as fh:
        fh.write(payload)


@contextmanager
def atomic_file(path: Path, mode: int = 0o640) -> Iterator[BinaryIO]:
    """``write_atomic`` for a payload written in pieces (e.g. through gzip): the caller writes
    to the yielded file; only a block that ends without an exception makes ``path`` appear
    (fsynced, then renamed over it). The temp name matches the ``.*.tmp`` the NAS
    replication skips."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def copy_atomic(source: Path, dest: Path, expect: tuple[int, str] | None = None) -> tuple[int, str]:
    """Copy ``source`` to ``dest`` the way ``write_atomic`` writes, hashing on the way, and
    return the (size, sha256) read. With ``expect`` (size, sha256), a copy that differs is
    thrown away and ``dest`` is left untouched: the caller compares and reports."""
    tmp = dest.with_name(f".{dest.name}.copy-{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as src, open(tmp, "xb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if expect is None or expect == (size, digest.hexdigest()):
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return size, digest.hexdigest()


def sha256_file(path: Path) -> tuple[int, str]:
    """(size in bytes, hex sha256) of a file, opened without following links."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return size, digest.hexdigest()
