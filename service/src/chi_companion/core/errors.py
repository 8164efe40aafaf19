"""Domain errors: what went wrong, in the stores' own words, with no HTTP in them.

Stores and validators raise these; ``core.http_errors`` is the one place that turns them
into a status code and a JSON body, so 404, 503 and 507 mean the same in every feature.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class. ``error`` is a short label (it becomes the JSON body's ``error``),
    ``detail`` a sentence for the operator."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail


class Invalid(DomainError):
    """Well-formed input the contract cannot accept (a sync body, an analysis request).
    ``field`` names the offending field when there is one."""

    def __init__(self, error: str, detail: str, field: str | None = None) -> None:
        super().__init__(error, detail)
        self.field = field


class Malformed(DomainError):
    """A single value that cannot be what it claims (a file name, a checksum, a type)."""


class TooLarge(DomainError):
    """More bytes than a configured limit allows."""


class NotFound(DomainError):
    """The thing named does not exist (or the caller may not know that it does)."""

    def __init__(self, detail: str, error: str = "not found") -> None:
        super().__init__(error, detail)


class UnknownDevice(NotFound):
    """A device id that no ``[devices.<id>]`` of the config defines."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"no device {device_id[:64]!r} is configured", "unknown device")


class Conflict(DomainError):
    """The request contradicts the stored state (e.g. two checksums that disagree)."""


class DiskFull(DomainError):
    """The data directory's file system has no room: a transient server fault."""

    def __init__(self, detail: str = "the server's disk is full; retry later") -> None:
        super().__init__("insufficient storage", detail)


class QuotaExceeded(DomainError):
    """A device would store more than its quota allows: refused like a full disk (507), with
    the quota, the usage and the request's size for the body."""

    def __init__(self, setting: str, limit: int, used: int, incoming: int, remedy: str) -> None:
        super().__init__(
            "quota exceeded",
            f"storing this ({incoming} bytes) would take the device's usage from {used} to "
            f"{used + incoming} bytes, over its quota of {limit} bytes ({setting}); {remedy}",
        )
        self.setting = setting
        self.limit = limit
        self.used = used
        self.incoming = incoming

    def as_json(self) -> dict[str, object]:
        return {
            "setting": self.setting,
            "limitBytes": self.limit,
            "usedBytes": self.used,
            "requestBytes": self.incoming,
        }


class Unavailable(DomainError):
    """A transient fault (the database is locked, no free name): the client retries."""

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__("service unavailable", detail)
        self.retry_after = retry_after


class RateLimited(DomainError):
    """Too many requests of one kind from one device: the client waits ``retry_after`` s."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__("too many requests", detail)
        self.retry_after = retry_after
