"""The shared parts every feature is built with: the config, the database and the key ring.

Features take a ``Core`` instead of the whole companion, so they depend on ``core`` only and
the top-level ``companion`` module is the one place that knows every feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .auth import KeyRing
from .config import Config
from .db import Database
from .faults import Faults


@dataclass(frozen=True)
class Core:
    config: Config
    db: Database
    keys: KeyRing
    # What the background threads caught, for /health (shared, mutable: not part of equality).
    faults: Faults = field(default_factory=Faults, compare=False)

    @classmethod
    def from_config(cls, config: Config) -> Core:
        return cls(
            config=config,
            db=Database(config.db_path),
            keys=KeyRing(config.devices, config.operator_digests),
        )
