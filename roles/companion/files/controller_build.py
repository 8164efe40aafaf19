#!/usr/bin/env python3
"""Controller-side artefacts of the companion role, content-addressed and cached.

  controller_build.py wheel SOURCE_DIR CACHE_DIR      build (or reuse) the wheel of SOURCE_DIR
  controller_build.py wheelhouse WHEEL_DIR CACHE_DIR  pack WHEEL_DIR/*.whl into one tar
  controller_build.py download CONSTRAINTS CACHE_DIR PYTHON MACHINE GLIBC
                                                      download the wheels of CONSTRAINTS for a
                                                      host's Python (3.13), machine (x86_64) and
                                                      glibc (2.41), pack them into one tar

Each prints the path of its result as the last line. Results are named by a hash of their
inputs, so the same inputs give the same file (a cache hit, no rebuild) and concurrent plays
never overwrite each other's files (written to a temporary name, then renamed).

Why a pristine copy of the source: building in place would leave build/ and *.egg-info in the
tree (other people work in it) and could pick up stale files from an earlier build/.
Why SOURCE_DATE_EPOCH and a normalised tar: the same source gives byte-identical files, so the
role's checksum comparison means "the code (or the pins) changed" and nothing else.
Why `download` takes the host's Python and platform: the controller may run another Python
than the server (3.11 here, 3.13 on Debian 13), and a wheel built for one CPython ABI does not
install on another; pip downloads for the target given, whatever interpreter runs it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# 1980-01-01, the earliest time a zip entry can carry.
FIXED_EPOCH = 315532800
SKIP_NAMES = {"build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
SKIP_SUFFIXES = (".egg-info", ".pyc")


def _skipped(name: str) -> bool:
    return name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES)


def _source_files(source: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        files += [Path(dirpath, f) for f in sorted(filenames) if not _skipped(f)]
    return files


def _tree_hash(source: Path) -> str:
    digest = hashlib.sha256()
    for path in _source_files(source):
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(b"x" if os.access(path, os.X_OK) else b"-")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


def build_wheel(source: Path, cache: Path) -> Path:
    if not (source / "pyproject.toml").is_file():
        raise SystemExit(f"controller_build: no pyproject.toml in {source}")
    key = _tree_hash(source)
    target_dir = cache / f"wheel-{key}"
    done = sorted(target_dir.glob("*.whl"))
    if done:
        return done[0]
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        copy = Path(tmp, "src")
        copy.mkdir()
        for path in _source_files(source):
            dest = copy / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        dist = Path(tmp, "dist")
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(FIXED_EPOCH))
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(copy)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.stderr.write(result.stdout[-4000:] + "\n" + result.stderr[-4000:] + "\n")
            raise SystemExit(f"controller_build: `{' '.join(cmd)}` failed (is `build` installed?)")
        wheels = sorted(dist.glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"controller_build: expected one wheel, found {wheels}")
        try:
            dist.rename(target_dir)
        except OSError:
            if not any(target_dir.glob("*.whl")):  # not a concurrent build's finished result
                raise
    return sorted(target_dir.glob("*.whl"))[0]


def pack_wheelhouse(wheel_dir: Path, cache: Path) -> Path:
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"controller_build: no *.whl in {wheel_dir}")
    digest = hashlib.sha256()
    for wheel in wheels:
        digest.update(wheel.name.encode() + b"\0" + hashlib.sha256(wheel.read_bytes()).digest())
    target = cache / f"wheelhouse-{digest.hexdigest()[:24]}.tar"
    if target.exists():
        return target
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for wheel in wheels:
            info = tarfile.TarInfo(wheel.name)
            info.size = wheel.stat().st_size
            info.mtime, info.mode, info.uid, info.gid = FIXED_EPOCH, 0o644, 0, 0
            with wheel.open("rb") as fh:
                tar.addfile(info, fh)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tar.tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, target)
    return target


def platform_tags(machine: str, glibc: str) -> list[str]:
    """Every manylinux tag a host with this machine and glibc accepts, newest first."""
    major, _, minor = glibc.partition(".")
    if major != "2" or not minor.isdigit():
        raise SystemExit(f"controller_build: unexpected glibc version {glibc!r}")
    tags = [f"manylinux_2_{m}_{machine}" for m in range(int(minor), 4, -1)]
    # The legacy names of manylinux_2_17/_2_12/_2_5, still used by some wheels' filenames.
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    tags += [f"{name}_{machine}" for name, m in legacy.items() if m <= int(minor)]
    return tags


def download_wheelhouse(
    constraints: Path, cache: Path, python: str, machine: str, glibc: str
) -> Path:
    if not re.fullmatch(r"3\.\d+", python) or not re.fullmatch(r"[A-Za-z0-9_]+", machine):
        raise SystemExit(f"controller_build: unexpected python {python!r} or machine {machine!r}")
    pins = constraints.read_bytes()
    target = f"{python} {machine} {glibc}".encode()
    key = hashlib.sha256(pins + b"\0" + target).hexdigest()[:24]
    wheel_dir = cache / f"wheels-{key}"
    if not wheel_dir.is_dir():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            dest = Path(tmp, "wheels")
            abi = "cp" + python.replace(".", "")
            cmd = [sys.executable, "-m", "pip", "download", "--quiet"]
            cmd += ["--disable-pip-version-check"]
            cmd += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
            cmd += ["--abi", abi, "--abi", "abi3", "--abi", "none"]
            for tag in platform_tags(machine, glibc):
                cmd += ["--platform", tag]
            cmd += ["--requirement", str(constraints), "--dest", str(dest)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                sys.stderr.write(result.stdout[-4000:] + "\n" + result.stderr[-4000:] + "\n")
                raise SystemExit(
                    f"controller_build: no wheels of {constraints} for CPython {python} on "
                    f"{machine} with glibc {glibc} (the controller needs the package index)"
                )
            try:
                dest.rename(wheel_dir)
            except OSError:
                if not wheel_dir.is_dir():  # not a concurrent download's finished result
                    raise
    return pack_wheelhouse(wheel_dir, cache)


def main(argv: list[str]) -> int:
    counts = {"wheel": 4, "wheelhouse": 4, "download": 7}
    if len(argv) < 2 or counts.get(argv[1]) != len(argv):
        sys.stderr.write(__doc__ or "")
        return 2
    src, cache = Path(argv[2]).expanduser().resolve(), Path(argv[3]).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    if argv[1] == "wheel":
        result = build_wheel(src, cache)
    elif argv[1] == "wheelhouse":
        result = pack_wheelhouse(src, cache)
    else:
        result = download_wheelhouse(src, cache, argv[4], argv[5], argv[6])
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
