"""Endpoint slots shared by every process of the host: at most ``capacity`` requests in flight per endpoint.

Concurrent Dagster runs each execute in their own process and each builds its own backend, so a limit kept in one
process's memory lets N runs send N × capacity requests to an endpoint that accepts ``capacity`` (the rest are
answered 429, and the back-off leaves the GPU idle). Here each (endpoint, slot) is one lock file,
``<slot_dir>/<sha256(url)[:16]>/<k>.lock``, and a request holds an exclusive ``flock`` on one of its endpoint's
files while it is in flight, whichever process sends it. The kernel drops a lock when its holder's last descriptor
closes, so a killed process frees its slots at once (no stale lock files, nothing to clean up).

``fcntl.flock`` directly, not ``filelock``/``portalocker``: the pool must *probe* every slot of every endpoint
without blocking (to pick the least busy endpoint) and hold whichever is free, from many threads, in processes
that fork; those libraries lock one path at a time with per-object reentrancy and blocking waits on that path.
flock locks belong to an open file description, so two threads holding their own descriptors exclude each other
too; the descriptors are opened again in a forked child (an inherited one would share the parent's lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from isonyc_dagster.backends.base import BackendConfigError

#: How often a request waiting for a slot held by another process looks again (a release in this process wakes
#: it at once). Small against a generation (seconds): the GPU waits at most this long for its next request.
POLL_S = 0.02


def endpoint_key(url: str) -> str:
    """The directory name of ``url``'s slots (a URL is no file name; its hash is, and leaks nothing)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class SlotFiles:
    """The slot lock files of some endpoints, ``capacity`` each, as this process sees them (not thread-safe: the
    caller serialises calls, e.g. under its own lock)."""

    def __init__(self, slot_dir: str | os.PathLike[str], urls: Sequence[str], capacity: int) -> None:
        self.dirs = [Path(slot_dir) / endpoint_key(u) for u in urls]
        self.capacity = capacity
        try:
            for d in self.dirs:
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BackendConfigError(
                f"cannot create the endpoint slot directory {slot_dir} ({e.strerror}): "
                "give a writable directory shared by the run processes"
            ) from None
        self._pid = -1
        self._fds: list[list[int]] = []
        self.held: list[list[bool]] = []
        self._open()

    def _open(self) -> None:
        for row in self._fds:  # inherited from the parent process: its locks are not ours
            for fd in row:
                os.close(fd)
        self._fds = [
            [
                os.open(d / f"{k}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                for k in range(self.capacity)
            ]
            for d in self.dirs
        ]
        self.held = [[False] * self.capacity for _ in self.dirs]
        self._pid = os.getpid()

    def forked(self) -> bool:
        """Reopen the files after a fork (this process holds no slot then); True when it did."""
        if self._pid == os.getpid():
            return False
        self._open()
        return True

    def _try(self, i: int, k: int) -> bool:
        try:
            fcntl.flock(self._fds[i][k], fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held[i][k] = True
        return True

    def release(self, i: int, k: int) -> None:
        """Free slot ``k`` of endpoint ``i`` (held by this process)."""
        if self.held[i][k]:
            fcntl.flock(self._fds[i][k], fcntl.LOCK_UN)
            self.held[i][k] = False

    def free(self) -> list[list[int]]:
        """Per endpoint, the slots free host-wide now, each *taken* (hold one, :meth:`release` the others).

        ``capacity - len(free[i])`` is the host-wide number of requests in flight to endpoint ``i``.
        """
        return [
            [k for k in range(self.capacity) if not self.held[i][k] and self._try(i, k)]
            for i in range(len(self.dirs))
        ]

    def close(self) -> None:
        for row in self._fds:
            for fd in row:
                os.close(fd)  # also frees any slot still held
        self._fds, self.held = [], []
