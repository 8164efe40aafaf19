"""The list of optional features wired into the companion.

Each feature module offers ``install(ctx)`` (stores, schemas, health checks,
background workers, start-up tasks) and ``routes(app, ctx)``.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from . import analysis_api, backup_api, replication_status

if TYPE_CHECKING:
    from bottle import Bottle

    from .context import Companion

FEATURES: tuple[ModuleType, ...] = (replication_status, backup_api, analysis_api)


def install_features(ctx: Companion) -> None:
    for feature in FEATURES:
        feature.install(ctx)


def feature_routes(app: Bottle, ctx: Companion) -> None:
    for feature in FEATURES:
        feature.routes(app, ctx)
