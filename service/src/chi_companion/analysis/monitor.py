"""The Ollama monitor: a background prober whose last view /health reports.

Health never probes Ollama inline (a hanging Ollama must not hang /health); it reads the
snapshot this monitor keeps, and the workers' own observations update it at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..core.clock import now_iso
from .ollama import OllamaClient, OllamaError, normalize_model_name

log = logging.getLogger(__name__)


@dataclass
class OllamaSnapshot:
    """What the monitor last saw; health reports this and never probes inline."""

    checked_at: str | None = None
    reachable: bool | None = None
    version: str | None = None
    model_present: bool | None = None
    model_digest: str | None = None
    models_signature: tuple[str, ...] = ()
    detail: str | None = None
    # From /api/ps: is our model in memory, and how much of it sits in the GPU's memory.
    loaded: bool | None = None
    size_bytes: int | None = None
    vram_bytes: int | None = None
    expires_at: str | None = None


class OllamaMonitor:
    """Background prober of /api/version and /api/tags every ``ollama.poll_seconds``.

    Workers report what they see too (``note_unreachable``/``note_model_missing``),
    so health reflects a failure at once and the monitor's next successful probe
    counts as a recovery that releases the waiting jobs."""

    def __init__(self, client: OllamaClient, model: str, poll_seconds: float) -> None:
        self.client = client
        self.model = model
        self.poll_seconds = poll_seconds
        self.on_reachable: Callable[[], None] = lambda: None
        self.on_models_changed: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._snapshot = OllamaSnapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> OllamaSnapshot:
        with self._lock:
            return OllamaSnapshot(**vars(self._snapshot))

    def note_unreachable(self, detail: str) -> None:
        with self._lock:
            self._snapshot.reachable = False
            self._snapshot.detail = detail

    def note_model_missing(self) -> None:
        with self._lock:
            self._snapshot.model_present = False

    def probe(self) -> OllamaSnapshot:
        new = OllamaSnapshot(checked_at=now_iso())
        try:
            new.version = self.client.version()
            new.reachable = True
            models = self.client.tags()
            entry = self.client.find_model(models, self.model)
            new.model_present = entry is not None
            new.model_digest = str(entry.get("digest")) if entry else None
            new.models_signature = tuple(
                sorted(f"{m.get('name')}@{m.get('digest')}" for m in models)
            )
            if entry is None:
                new.detail = f"model {self.model} is not pulled"
            self._read_loaded(new)
        except OllamaError as exc:
            new.reachable = new.version is not None
            new.detail = str(exc)[:300]
        with self._lock:
            old, self._snapshot = self._snapshot, new
        # "Not True" includes the first probe after start: jobs a previous process
        # left waiting for Ollama need not sit out their backoff if it is up now.
        if new.reachable and old.reachable is not True:
            log.info("Ollama reachable (version %s)", new.version)
            self.on_reachable()
        if new.reachable and new.models_signature and new.models_signature != old.models_signature:
            self.on_models_changed()
        if not new.reachable and old.reachable is not False:
            log.warning("Ollama unreachable: %s", new.detail)
        return new

    def _read_loaded(self, snap: OllamaSnapshot) -> None:
        """Fill in where the model runs from /api/ps; a failure here leaves it unknown
        without making Ollama count as unreachable."""
        try:
            running = self.client.running()
        except OllamaError:
            return
        wanted = normalize_model_name(self.model)
        mine = next((m for m in running if normalize_model_name(m.name) == wanted), None)
        snap.loaded = mine is not None
        if mine is not None:
            snap.size_bytes, snap.vram_bytes = mine.size, mine.size_vram
            snap.expires_at = mine.expires_at

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe()
            except Exception:  # the monitor must outlive any surprise
                log.exception("Ollama probe failed unexpectedly")
            self._stop.wait(self.poll_seconds)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ollama-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
