"""The running companion: every part built once, in one place, as typed attributes.

This is the only module (with ``web`` and ``cli``) that knows every feature: it builds the
core (config, database, keys), then each feature's store or service, and says which schemas,
start-up tasks, health components and background workers exist. Nothing registers itself.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .analysis import service as analysis_service
from .analysis.service import AnalysisService, ollama_health
from .backups.health import backups_health
from .backups.store import SCHEMA as BACKUP_SCHEMA
from .backups.store import BackupStore
from .core import service_lock
from .core.config import Config
from .core.context import Core
from .core.health import HealthCheck, health_report
from .core.quotas import quota_health
from .core.release import ReleaseSource
from .replication.health import replication_health
from .sync import queries as sync_queries
from .sync.store import SCHEMA as SYNC_SCHEMA
from .sync.store import SyncStore

log = logging.getLogger(__name__)

DATA_SUBDIRS = ("backups", "ai_results", "logs", "db-backups")


@dataclass
class Companion:
    core: Core
    release: ReleaseSource
    sync: SyncStore
    backups: BackupStore
    analysis: AnalysisService
    started_monotonic: float = field(default_factory=time.monotonic)

    @classmethod
    def from_config(cls, config: Config) -> Companion:
        core = Core.from_config(config)
        return cls(
            core=core,
            release=ReleaseSource(config.release.record_path),
            sync=SyncStore(
                config.sync.history_max_age_days,
                config.sync.history_max_entries,
                config.quotas.synced_bytes_per_device,
            ),
            backups=BackupStore.from_config(config, core.db),
            analysis=analysis_service.build(core),
        )

    @property
    def config(self) -> Config:
        return self.core.config

    @property
    def schemas(self) -> list[str]:
        return [*SYNC_SCHEMA, *BACKUP_SCHEMA, *self.analysis.schema]

    def prepare_storage(self) -> None:
        """Create the data directory layout and the database schema, then reconcile.

        Runs once in the server's master process before workers start, so a
        broken data directory stops the service with a clear message."""
        data_dir = self.config.data_dir
        if data_dir.exists() and not data_dir.is_dir():
            # mkdir(exist_ok=True) would say only "File exists".
            raise NotADirectoryError(
                errno.ENOTDIR, "server.data_dir is not a directory", str(data_dir)
            )
        data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        for sub in DATA_SUBDIRS:
            (data_dir / sub).mkdir(mode=0o750, exist_ok=True)
        if not os.access(data_dir, os.W_OK):
            raise PermissionError(f"data directory {data_dir} is not writable by this user")
        # Held for the server's life: `chi-companion db restore` refuses while it is.
        service_lock.hold(data_dir)
        self.core.db.migrate(self.schemas)
        self.backups.reconcile()
        analysis_service.cleanup_temp_results(data_dir)

    def health_checks(self) -> dict[str, HealthCheck]:
        return {
            "replication": lambda: replication_health(self.config),
            "backups": lambda: backups_health(self.backups, self.config.devices),
            "quotas": lambda: quota_health(
                self.config,
                self.sync.usage_per_device(self.core.db.conn()),
                self.backups.usage_per_device(),
            ),
            "ollama": lambda: ollama_health(self.analysis),
            "background": self.core.faults.report,
        }

    def health(self) -> dict[str, Any]:
        return health_report(
            self.config,
            self.health_checks(),
            lambda: sync_queries.last_sync_per_device(self.core.db.conn()),
            self.started_monotonic,
        )

    def start_background(self) -> None:
        self.analysis.start()

    def stop_background(self) -> None:
        try:
            self.analysis.stop()
        except Exception:
            log.exception("stopping the analysis workers failed")

    def close(self) -> None:
        self.core.db.close_all()
