"""Put the fake `nvidia-smi` (tests/gpu_double, a TEST DOUBLE) on PATH for code in this process.

The Ollama emulator asks whatever `nvidia-smi` is on PATH when it loads a model, as Ollama asks
the driver; with this one it finds the GPU that `describe` writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FAKE_SMI = Path(__file__).resolve().parent / "gpu_double" / "nvidia_smi.py"


def fake_gpu_env(tmp: Path, keep_path: bool = True) -> dict[str, str]:
    """Environment variables that make `nvidia-smi` the fake one (configured by the returned
    FAKE_NVIDIA_SMI_CONF file). With keep_path False, PATH holds nothing else."""
    bin_dir = tmp / "gpu-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "nvidia-smi"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_SMI} "$@"\n')
    wrapper.chmod(0o755)
    path = f"{bin_dir}:{os.environ.get('PATH', '')}" if keep_path else str(bin_dir)
    return {"PATH": path, "FAKE_NVIDIA_SMI_CONF": str(tmp / "fake-nvidia-smi.conf")}


def describe(conf: Path | str, driver: str, free_mib: int) -> None:
    """The GPU the fake reports: Chi-Srv-01's 12 GB card with this driver and free VRAM."""
    Path(conf).write_text(
        "name=NVIDIA GeForce RTX 3060\n"
        f"driver_version={driver}\nmemory.total=12288\nmemory.free={free_mib}\ncompute_cap=8.6\n"
    )
