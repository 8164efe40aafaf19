"""The running companion's shared state, built once per process.

Features (sync, backups, analysis) hang their stores, health components,
background workers and start-up tasks here, so the app factory and the
server wiring do not need to know each feature's internals.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .auth import KeyRing
from .config import Config
from .db import Database
from .release import ReleaseSource
from .sync_store import SCHEMA as SYNC_SCHEMA
from .sync_store import SyncStore

log = logging.getLogger(__name__)

DATA_SUBDIRS = ("backups", "ai_results", "logs")
HealthCheck = Callable[[], dict[str, Any]]


class Background(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Companion:
    config: Config
    db: Database
    keys: KeyRing
    sync: SyncStore
    release: ReleaseSource
    started_monotonic: float = field(default_factory=time.monotonic)
    schemas: list[str] = field(default_factory=list)
    health_checks: dict[str, HealthCheck] = field(default_factory=dict)
    background: list[Background] = field(default_factory=list)
    startup_tasks: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: Config) -> Companion:
        ctx = cls(
            config=config,
            db=Database(config.db_path),
            keys=KeyRing(config.devices, config.operator["api_key"]),
            sync=SyncStore(config.sync["history_max_age_days"], config.sync["history_max_entries"]),
            release=ReleaseSource(config.release["record_path"]),
        )
        ctx.schemas.extend(SYNC_SCHEMA)
        # Imported here: feature modules import this one for the type.
        from .features import install_features

        install_features(ctx)
        return ctx

    def prepare_storage(self) -> None:
        """Create the data directory layout and the database schema.

        Runs once in the server's master process before workers start, so a
        broken data directory stops the service with a clear message."""
        data_dir = self.config.data_dir
        data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        for sub in DATA_SUBDIRS:
            (data_dir / sub).mkdir(mode=0o750, exist_ok=True)
        if not os.access(data_dir, os.W_OK):
            raise PermissionError(f"data directory {data_dir} is not writable by this user")
        self.db.migrate(self.schemas)
        for task in self.startup_tasks:
            task()

    def start_background(self) -> None:
        for worker in self.background:
            worker.start()

    def stop_background(self) -> None:
        for worker in reversed(self.background):
            try:
                worker.stop()
            except Exception:
                log.exception("stopping %r failed", worker)
