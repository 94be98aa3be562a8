"""How many cores a node process takes for torch when several share a host (``torch_threads =
0``, auto): the cores this process may run on, divided among the FedLedger node processes running
on the host at that moment. Each process registers itself by holding a lock on a file of its own
in a per-user folder; the kernel lets go of the lock when the process ends however it ends, so a
file nobody holds is a process gone, and is removed."""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
import threading
from pathlib import Path
from typing import Any


def default_registry() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(runtime) / f"fedledger-{os.getuid()}-nodes"


def usable_cores() -> int:
    """The cores this process may run on (its affinity; all of them where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def node_processes(registry: Path | None = None, mine: Path | None = None) -> int:
    """The node processes registered on this host now (``mine``: this process's own file, held by
    it); files nobody holds are removed."""
    registry = registry or default_registry()
    alive = 0
    for path in registry.glob("*.lock"):
        if path == mine:
            alive += 1
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            alive += 1  # held: its process runs
        else:
            path.unlink(missing_ok=True)  # nobody holds it: its process is gone
        finally:
            os.close(fd)
    return alive


def cores_each(processes: int) -> int:
    """Each of ``processes`` node processes' share of the cores this one may run on (at least one)."""
    return max(1, usable_cores() // max(1, processes))


def share_for(joining: int, registry: Path | None = None) -> int:
    """Each of ``joining`` processes' share of the cores once they join those running."""
    return cores_each(node_processes(registry) + joining)


class HostShare:
    """This process's place among the node processes of its host."""

    def __init__(self, registry: Path | None = None) -> None:
        self.registry = registry or default_registry()
        self.registry.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._mine = self.registry / f"{os.getpid()}.lock"
        self._fd = os.open(self._mine, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until this process ends

    def processes(self) -> int:
        """Node processes on this host now, this one included (files nobody holds are removed)."""
        return node_processes(self.registry, mine=self._mine)

    def threads(self) -> tuple[int, int]:
        """(this process's share of the cores, at least one; the node processes sharing them)."""
        processes = self.processes()
        return cores_each(processes), processes

    def close(self) -> None:
        os.close(self._fd)
        self._mine.unlink(missing_ok=True)


class HostSlots:
    """At most ``count`` trainings at once among the host's node processes and their threads: a
    training holds a lock on one of ``count`` files, which the kernel releases however its holder
    ends. Without it the hundred edge node processes of one two-core host each start training as a
    round starts, and the supernodes sharing those cores wait behind a hundred runnable processes:
    heartbeats time out and edge nodes leave supernodes that were only busy. A context manager.

    A training that finds every slot taken waits on one chosen at random (the kernel wakes it when
    that one frees): no polling, at the price of a slot standing idle now and then near a round's
    end while others queue elsewhere. Processes using different counts share the largest."""

    def __init__(self, count: int, registry: Path | None = None) -> None:
        self.count = max(1, count)
        self.folder = (registry or default_registry()) / "slots"
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._held = threading.local()  # the lock a thread holds (one at a time)

    def _open(self, slot: int) -> int:
        try:
            return os.open(self.folder / f"slot-{slot}", os.O_CREAT | os.O_RDWR, 0o600)
        except FileNotFoundError:  # the runtime folder went (a logout ends the user's XDG_RUNTIME_DIR)
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(self.folder / f"slot-{slot}", os.O_CREAT | os.O_RDWR, 0o600)

    def __enter__(self) -> "HostSlots":
        assert getattr(self._held, "fd", None) is None, "a thread holds one training slot at a time"
        order = random.sample(range(self.count), self.count)
        for slot in order:  # a free one, if any …
            fd = self._open(slot)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held.fd = fd
            return self
        fd = self._open(order[0])  # … else wait for one (each waiter picks its own at random)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._held.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        fd, self._held.fd = self._held.fd, None
        os.close(fd)  # (closing the file lets go of its lock)
