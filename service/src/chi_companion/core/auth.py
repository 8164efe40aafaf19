"""API keys: which device (or the operator) a request speaks for.

Each key is bound to one device id; the operator key (optional) may read and
manage every device's data but cannot sync rows as a device. Keys are compared
in constant time against every configured key, so the time taken does not hint
at which key, or how much of one, matched.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .config import key_digest
from .errors import NotFound
from .http_json import ApiError, header

OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    device_id: str | None  # None for the operator

    @property
    def is_operator(self) -> bool:
        return self.device_id is None

    def may_access(self, device_id: str) -> bool:
        return self.is_operator or self.device_id == device_id

    def require_visible(self, device_id: str) -> None:
        """For reads: another device's data answers 404 like data that does not exist, so a
        key cannot learn which devices, backups or analyses exist beyond its own."""
        if not self.may_access(device_id):
            raise NotFound(f"no device {device_id[:64]!r} is configured", "unknown device")

    def require_device(self, device_id: str) -> None:
        if not self.may_access(device_id):
            raise ApiError(
                403,
                "forbidden",
                f"this API key belongs to device {self.device_id!r}, not {device_id!r}",
            )


class KeyRing:
    """Compares the SHA-256 of a presented key with the configured digests: the config
    holds no usable key, and two digests per device allow a rotation without downtime."""

    def __init__(
        self, devices: dict[str, tuple[str, ...]], operator_digests: tuple[str, ...] = ()
    ) -> None:
        self._entries: list[tuple[bytes, Principal]] = [
            (bytes.fromhex(digest), Principal(device))
            for device, digests in devices.items()
            for digest in digests
        ]
        self._entries += [(bytes.fromhex(d), Principal(None)) for d in operator_digests]

    def lookup(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        candidate = bytes.fromhex(key_digest(presented))
        found: Principal | None = None
        for digest, principal in self._entries:
            # No early exit: every key is compared whatever matched.
            if hmac.compare_digest(digest, candidate):
                found = principal
        return found

    def authenticate(self) -> Principal:
        principal = self.lookup(header("X-API-Key"))
        if principal is None:
            raise ApiError(
                401,
                "unauthorized",
                "missing or invalid X-API-Key header",
                headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'},
            )
        return principal
