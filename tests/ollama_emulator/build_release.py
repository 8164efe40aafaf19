#!/usr/bin/env python3
"""Build a FAKE Ollama release archive for tests (the payload is the API emulator, a TEST DOUBLE).

    python3 tests/ollama_emulator/build_release.py VERSION OUTDIR [--arch amd64|arm64]

writes, like a real Ollama release (v0.14 and later):

    OUTDIR/ollama-linux-<arch>.tar.zst   bin/ollama       the emulator, python3 shebang,
                                                         EMULATOR_VERSION set to VERSION
                                         lib/ollama/      a marker named after VERSION, so a
                                                         test can see leftover libs after an
                                                         upgrade, plus a stand-in library
    OUTDIR/sha256sum.txt                 "<sha256>  ./ollama-linux-<arch>.tar.zst"

The archive is deterministic (fixed mtimes and owners), so building the same version twice
gives the same checksum. Compression uses the `zstd` command (Debian package `zstd`), since
Python 3.11 has no zstd module.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMULATOR_SOURCE = HERE / "emulator.py"
# Fixed timestamp (2025-01-01T00:00:00Z) so the archive bytes only depend on the inputs.
ARCHIVE_MTIME = 1735689600
_VERSION_LINE = re.compile(r'^EMULATOR_VERSION = "[^"]*"$', re.MULTILINE)
_VERSION_OK = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$")


def marker_name(version: str) -> str:
    """File in lib/ollama/ that only this version's archive contains."""
    return f"emulated-lib-{version}.marker"


def archive_name(arch: str) -> str:
    return f"ollama-linux-{arch}.tar.zst"


def emulator_binary(version: str) -> bytes:
    """The emulator source with its version constant set and a python3 shebang."""
    source = EMULATOR_SOURCE.read_text()
    replaced, count = _VERSION_LINE.subn(f'EMULATOR_VERSION = "{version}"', source)
    if count != 1:
        raise RuntimeError(f"expected one EMULATOR_VERSION line in {EMULATOR_SOURCE}, got {count}")
    lines = replaced.splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        lines[0] = "#!/usr/bin/env python3\n"
    else:
        lines.insert(0, "#!/usr/bin/env python3\n")
    return "".join(lines).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = ARCHIVE_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def build_tar(version: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "bin", None, 0o755)
        _add(tar, "bin/ollama", emulator_binary(version), 0o755)
        _add(tar, "lib", None, 0o755)
        _add(tar, "lib/ollama", None, 0o755)
        note = (
            f"Ollama API emulator release {version}: a TEST DOUBLE built by "
            "tests/ollama_emulator/build_release.py, not a real Ollama library.\n"
        ).encode()
        _add(tar, f"lib/ollama/{marker_name(version)}", note, 0o644)
        # Present in every version: the upgrade must replace it, not just add files.
        _add(tar, "lib/ollama/libggml-base.so", note, 0o644)
    return buffer.getvalue()


def compress_zstd(data: bytes) -> bytes:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise RuntimeError("the `zstd` command is required (Debian: apt-get install zstd)")
    result = subprocess.run(
        [zstd, "-q", "-c", "-3", "--no-progress"], input=data, capture_output=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"zstd failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def build_release(version: str, outdir: Path, arch: str = "amd64") -> Path:
    """Write the archive and sha256sum.txt into `outdir`; return the archive path."""
    if not _VERSION_OK.match(version):
        raise ValueError(f"version must look like 0.14.2, got {version!r}")
    if arch not in ("amd64", "arm64"):
        raise ValueError(f"arch must be amd64 or arm64, got {arch!r}")
    outdir.mkdir(parents=True, exist_ok=True)
    archive = outdir / archive_name(arch)
    payload = compress_zstd(build_tar(version))
    tmp = archive.with_name(archive.name + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(archive)
    digest = hashlib.sha256(payload).hexdigest()
    # Same line format as Ollama's published sha256sum.txt.
    (outdir / "sha256sum.txt").write_text(f"{digest}  ./{archive.name}\n")
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="release version without the v, e.g. 0.14.2")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--arch", default="amd64", choices=("amd64", "arm64"))
    args = parser.parse_args(argv)
    try:
        archive = build_release(args.version, args.outdir, args.arch)
    except (RuntimeError, ValueError) as exc:
        print(f"build_release: {exc}", file=sys.stderr)
        return 1
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
