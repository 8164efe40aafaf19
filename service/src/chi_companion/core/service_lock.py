"""The signal that a companion server is running on a data directory: a shared ``flock`` on
the directory itself, held by the server for as long as it runs.

``chi-companion db restore`` must never swap the database under a running server (its open
connections would keep writing to the replaced file and the restore would be lost). A pid file
can outlive a crash; a flock cannot: the kernel drops it when the last process holding the
open directory exits. Servers take it shared (tests start several on one directory), the
restore takes it exclusive and without waiting, and holds it while it swaps the files, so a
server started meanwhile refuses to start instead of opening a half-swapped database.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import Conflict

# Kept open for the life of the process (and inherited by gunicorn's worker): closing the
# descriptor would drop the lock.
_HELD: dict[str, int] = {}


class ServiceRunning(Conflict):
    """A server holds the data directory (or a restore does, seen from a starting server)."""


def hold(data_dir: Path) -> None:
    """Take the server's shared lock on ``data_dir`` for the rest of this process."""
    key = str(data_dir.resolve())
    if key in _HELD:
        return
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServiceRunning(
            "restore in progress",
            f"`chi-companion db restore` holds {data_dir}; start the service once it has finished",
        ) from None
    _HELD[key] = fd


@contextmanager
def exclusive(data_dir: Path, service: str = "chi-companion") -> Iterator[None]:
    """Hold ``data_dir`` exclusively, or raise ServiceRunning at once if a server holds it."""
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServiceRunning(
                "service running",
                f"a companion server is running on {data_dir}; stop it first "
                f"(sudo systemctl stop {service}) and run the command again",
            ) from None
        yield
    finally:
        os.close(fd)
