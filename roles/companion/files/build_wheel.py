#!/usr/bin/env python3
"""Build the companion's wheel on the controller, reproducibly, without touching service/.

Usage: build_wheel.py SOURCE_DIR OUT_DIR   (prints the wheel's path as the last line)

Why a pristine copy: building in place would leave build/ and *.egg-info in the source tree
(other people work in it) and could pick up stale files from an earlier build/.
Why SOURCE_DATE_EPOCH: zip entries then carry a fixed timestamp, so the same source gives a
byte-identical wheel. The role compares the wheel's checksum with what the host has installed,
which makes "reinstall and restart only when the code changed" exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# 1980-01-01, the earliest time a zip entry can carry.
FIXED_EPOCH = "315532800"
SKIP = shutil.ignore_patterns(
    "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache"
)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, out = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    if not (source / "pyproject.toml").is_file():
        print(f"build_wheel: no pyproject.toml in {source}", file=sys.stderr)
        return 1
    copy = out / "src"
    shutil.copytree(source, copy, ignore=SKIP)
    dist = out / "dist"
    env = dict(os.environ, SOURCE_DATE_EPOCH=FIXED_EPOCH)
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(copy)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        print(f"build_wheel: `{' '.join(cmd)}` failed (is `build` installed? make venv)",
              file=sys.stderr)
        return 1
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        print(f"build_wheel: expected one wheel in {dist}, found {wheels}", file=sys.stderr)
        return 1
    print(wheels[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
