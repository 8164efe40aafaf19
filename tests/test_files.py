"""core.files: the one atomic-write, copy and sha256 helper every feature uses."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from chi_companion.core.files import copy_atomic, sha256_file, write_atomic


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]
    assert target.stat().st_mode & 0o777 == 0o640


def test_sha256_file_matches_hashlib_and_refuses_links(tmp_path: Path) -> None:
    data = b"x" * (3 * 1024 * 1024 + 5)  # more than one read chunk
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == (len(data), hashlib.sha256(data).hexdigest())
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(OSError):
        sha256_file(link)


def test_copy_atomic_checks_before_it_names_the_copy(tmp_path: Path) -> None:
    source = tmp_path / "a.db"
    source.write_bytes(b"payload")
    good = (7, hashlib.sha256(b"payload").hexdigest())
    dest = tmp_path / "out" / "a.db"
    dest.parent.mkdir()
    assert copy_atomic(source, dest, expect=good) == good
    assert dest.read_bytes() == b"payload"
    other = tmp_path / "out" / "b.db"
    assert copy_atomic(source, other, expect=(7, "0" * 64)) == good  # what was really read
    assert not other.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.db"]
