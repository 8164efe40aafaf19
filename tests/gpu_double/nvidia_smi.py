#!/usr/bin/env python3
"""Fake `nvidia-smi` -- a TEST DOUBLE for the Molecule hosts, never installed on a real server.

Installed by the ollama scenario as /usr/local/bin/nvidia-smi (python3 only, stdlib only).

The rig's hosts have no NVIDIA GPU. Installed as /usr/local/bin/nvidia-smi on a test host, this
script answers the queries the ollama role and the Ollama emulator make, from the GPU that
/etc/fake-nvidia-smi.conf describes (key=value lines):

    name=NVIDIA GeForce RTX 3060
    driver_version=550.163.01
    memory.total=12288          MiB
    memory.free=11800           MiB (small: VRAM taken by something else, the model won't fit)
    compute_cap=8.6

Without that file it fails as nvidia-smi does on a host whose driver is not loaded (exit 9).
Supported: --query-gpu=FIELD[,FIELD...] --format=csv[,noheader][,nounits]; anything else prints
a one-line summary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The pytest tests point FAKE_NVIDIA_SMI_CONF elsewhere; test hosts use the default.
CONFIG = Path(os.environ.get("FAKE_NVIDIA_SMI_CONF", "/etc/fake-nvidia-smi.conf"))
UNITS = {"memory.total": " MiB", "memory.free": " MiB", "memory.used": " MiB"}


def main(argv: list[str]) -> int:
    if not CONFIG.is_file():
        print(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running."
        )
        return 9
    gpu = {}
    for line in CONFIG.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            gpu[key.strip()] = value.split("#")[0].strip()
    if "memory.total" in gpu and "memory.free" in gpu:
        gpu.setdefault("memory.used", str(int(gpu["memory.total"]) - int(gpu["memory.free"])))
    options = dict(arg.split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
    if "--query-gpu" not in options:
        print(f"GPU 0: {gpu.get('name', '?')} (driver {gpu.get('driver_version', '?')})")
        return 0
    fields = options["--query-gpu"].split(",")
    formats = options.get("--format", "csv").split(",")
    unknown = [f for f in fields if f not in gpu]
    if unknown:
        print(f'Field "{unknown[0]}" is not a valid field to query.', file=sys.stderr)
        return 2
    if "noheader" not in formats:
        print(", ".join(f + UNITS.get(f, "").replace(" MiB", " [MiB]") for f in fields))
    units = "nounits" not in formats
    print(", ".join(gpu[f] + (UNITS.get(f, "") if units else "") for f in fields))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
