"""The analysis feature's parts, built once: the Ollama client, its monitor, the job store and
the workers; plus the ``ollama`` component of /health, read from them without a network call.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.context import Core
from .jobs import SCHEMA, WAITING_MODEL, WAITING_OLLAMA, AnalysisStore
from .monitor import OllamaMonitor, OllamaSnapshot
from .ollama import OllamaClient
from .worker import AnalysisQueue


@dataclass
class AnalysisService:
    store: AnalysisStore
    queue: AnalysisQueue
    monitor: OllamaMonitor
    client: OllamaClient
    # Long-poll waiters hold a server thread each; past this many, ?wait answers at once.
    max_waiters: int
    waiters: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    schema = SCHEMA

    def start(self) -> None:
        self.monitor.start()
        self.queue.start()

    def stop(self) -> None:
        # Workers first, then the monitor: the reverse of start.
        try:
            self.queue.stop()
        finally:
            self.monitor.stop()


def cleanup_temp_results(data_dir: Path) -> None:
    """Drop half-written result files left by a crash (their jobs run again)."""
    for tmp in (data_dir / "ai_results").glob("*/.*.tmp"):
        tmp.unlink(missing_ok=True)


def build(ctx: Core) -> AnalysisService:
    cfg = ctx.config
    client = OllamaClient(
        cfg.ollama.url,
        cfg.ollama.timeout_seconds,
        cfg.ollama.keep_alive,
        cfg.ollama.num_ctx,
    )
    monitor = OllamaMonitor(client, cfg.ollama.model, float(cfg.ollama.poll_seconds))
    queue = AnalysisQueue(ctx, client, monitor)
    svc = AnalysisService(
        store=queue.store,
        queue=queue,
        monitor=monitor,
        client=client,
        max_waiters=max(1, cfg.server.threads // 2),
    )
    return svc


def placement(snap: OllamaSnapshot) -> dict[str, Any]:
    """Where the model runs, from Ollama's /api/ps: ``processor`` is "gpu" (all of it in
    VRAM), "cpu" (none: analysis is slow), "gpu+cpu" (split) or None (not loaded/unknown)."""
    processor: str | None = None
    if snap.loaded and snap.vram_bytes is not None:
        if snap.vram_bytes <= 0:
            processor = "cpu"
        elif snap.size_bytes is not None and snap.vram_bytes < snap.size_bytes:
            processor = "gpu+cpu"
        else:
            processor = "gpu"
    return {
        "modelLoaded": snap.loaded,
        "processor": processor,
        "vramBytes": snap.vram_bytes if snap.loaded else None,
        "modelBytes": snap.size_bytes if snap.loaded else None,
        "loadedUntil": snap.expires_at if snap.loaded else None,
    }


def ollama_health(svc: AnalysisService) -> dict[str, Any]:
    """From the monitor's last probe and the queue table; never a network call."""
    snap = svc.monitor.snapshot()
    report: dict[str, Any] = {
        "reachable": snap.reachable,
        "version": snap.version,
        "model": svc.queue.model,
        "modelPresent": snap.model_present,
        "checkedAt": snap.checked_at,
        **placement(snap),
    }
    try:
        counts = svc.store.counts()
        report["queueDepth"] = sum(counts.values())
        report["queue"] = counts
        report["lastAnalysisAt"] = svc.store.last_finished_at()
    except sqlite3.Error:
        report["queueDepth"] = None
        report["lastAnalysisAt"] = None
        counts = {}
    if snap.checked_at is None and snap.reachable is None:
        report.update(status="degraded", detail="Ollama not checked yet")
    elif not snap.reachable:
        report.update(status="degraded", detail="Ollama is unreachable; analyses wait")
    elif snap.model_present is None:
        report.update(
            status="degraded", detail="Ollama answers but its model list could not be read"
        )
    elif not snap.model_present:
        report.update(
            status="degraded",
            detail=f"model {svc.queue.model} is not pulled; analyses wait for it",
        )
    elif counts.get(WAITING_OLLAMA) or counts.get(WAITING_MODEL):
        report.update(status="degraded", detail="some analyses are waiting for Ollama")
    else:
        report["status"] = "ok"
        if report["processor"] == "cpu":
            report["detail"] = "the model runs on the CPU (size_vram 0): analyses are slow"
    return report
