"""How many cores a node process takes for torch when several share a host (``torch_threads =
0``, auto): the cores this process may run on, divided among the FedLedger node processes running
on the host at that moment. Each process registers itself by holding a lock on a file of its own
in a per-user folder; the kernel lets go of the lock when the process ends however it ends, so a
file nobody holds is a process gone, and is removed."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path


def default_registry() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(runtime) / f"fedledger-{os.getuid()}-nodes"


def usable_cores() -> int:
    """The cores this process may run on (its affinity; all of them where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


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
        alive = 0
        for path in self.registry.glob("*.lock"):
            if path == self._mine:
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

    def threads(self) -> tuple[int, int]:
        """(this process's share of the cores, at least one; the node processes sharing them)."""
        processes = self.processes()
        return max(1, usable_cores() // processes), processes

    def close(self) -> None:
        os.close(self._fd)
        self._mine.unlink(missing_ok=True)
