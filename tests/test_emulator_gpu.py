"""The Ollama emulator's GPU placement (`size_vram` in /api/ps), driven by the fake nvidia-smi.

Both are TEST DOUBLES (tests/ollama_emulator, tests/gpu_double): the emulator asks whatever
`nvidia-smi` is on PATH when it loads a model, as Ollama asks the driver. These tests put the
fake one on PATH with a GPU described per test, and talk HTTP to the emulator on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fake_gpu import describe, fake_gpu_env
from tests.ollama_emulator import OllamaEmulator

GEMMA_SIZE = 1629518495  # gemma2:2b in the emulated registry


def _call(url: str, method: str, path: str, body: Any = None) -> Any:
    resp = requests.request(method, url + path, json=body, timeout=10)
    resp.raise_for_status()
    return resp.json()


@pytest.fixture
def gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PATH holds only the fake nvidia-smi; write the returned file to describe a GPU."""
    env = fake_gpu_env(tmp_path, keep_path=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield Path(env["FAKE_NVIDIA_SMI_CONF"])


def _load_and_ps(emu: OllamaEmulator) -> dict[str, Any]:
    reply = _call(emu.url, "POST", "/api/generate", {"model": "gemma2:2b", "keep_alive": "5m"})
    assert reply["done_reason"] == "load"
    [entry] = _call(emu.url, "GET", "/api/ps")["models"]
    assert entry["name"] == "gemma2:2b"
    return entry


@pytest.fixture
def emu() -> Iterator[OllamaEmulator]:
    emulator = OllamaEmulator(models=["gemma2:2b"]).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def test_no_driver_means_cpu(gpu: Path, emu: OllamaEmulator) -> None:
    assert not gpu.exists()  # the fake fails like nvidia-smi without a loaded driver
    assert _load_and_ps(emu)["size_vram"] == 0


def test_driver_550_with_room_puts_the_whole_model_on_the_gpu(
    gpu: Path, emu: OllamaEmulator
) -> None:
    describe(gpu, "550.163.01", 11800)
    entry = _load_and_ps(emu)
    assert entry["size_vram"] == entry["size"] == GEMMA_SIZE


def test_driver_535_is_refused_like_ollama_does(gpu: Path, emu: OllamaEmulator) -> None:
    describe(gpu, "535.247.01", 11800)
    assert _load_and_ps(emu)["size_vram"] == 0


def test_gpu_without_free_vram_means_cpu(gpu: Path, emu: OllamaEmulator) -> None:
    describe(gpu, "550.163.01", 200)
    assert _load_and_ps(emu)["size_vram"] == 0


def test_placement_is_decided_at_load_time_only(gpu: Path, emu: OllamaEmulator) -> None:
    describe(gpu, "550.163.01", 11800)
    assert _load_and_ps(emu)["size_vram"] == GEMMA_SIZE
    describe(gpu, "550.163.01", 200)  # VRAM taken later: the loaded model stays where it is
    assert _load_and_ps(emu)["size_vram"] == GEMMA_SIZE
    _call(emu.url, "POST", "/api/generate", {"model": "gemma2:2b", "keep_alive": 0})
    assert _call(emu.url, "GET", "/api/ps")["models"] == []
    assert _load_and_ps(emu)["size_vram"] == 0  # reloaded: no room now
