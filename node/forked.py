"""K edge node processes forked from one that has loaded the learning runtime (``main.py --nt EN
--count K --fork``).

An edge node process that imports torch holds about 135 MiB of memory of its own for it (the
C++ operator registry on its heap, torch's Python modules), and spends a second of CPU loading
it: a hundred such processes need ~24 GiB after a job, and on two cores their first round waits
minutes while each loads torch. Forked after one process has imported torch and the node's code
and trained a small model once, K processes share those pages copy-on-write (each keeps ~10 MiB
of its own after a job) and none loads anything before its first round.

Each child is a whole edge node, as if started on its own: its own server on its own port
(``--port`` + i), key, enrolment, certificate, data shard and head in ``<home>/node-<i>``; one
crashing stops only itself. The parent only supervises: SIGINT/SIGTERM are passed on to every
child, it returns when all have stopped, and a child whose parent dies is sent SIGTERM by the
kernel (``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("fedledger")

STOPS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE_S = 10.0  # after passing a stop on: children still running then are killed
_PR_SET_PDEATHSIG = 1


def preload(torch_threads: int) -> None:
    """Import what an edge node runs and run a client's round once (``fl.federation.warm_up``), so
    that forked children share it all. Call before any thread, gRPC object or OpenMP pool exists:
    ``fork`` copies only the calling thread. One thread trains here (no OpenMP pool to leave
    half-copied); the children's count is ``OMP_NUM_THREADS``, set before torch loads. The children
    train on the CPU: CUDA does not survive a fork, so this process hides it before torch loads."""
    os.environ["OMP_NUM_THREADS"] = str(torch_threads)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CUDA cannot work in a process forked after it started
    import torch

    torch.set_num_threads(1)  # (this thread's only; each child's gRPC threads take OMP_NUM_THREADS)

    import node.chain.identity  # noqa: F401 - (imported for the children: shared pages)
    import node.net.server  # noqa: F401
    import node.net.tls  # noqa: F401
    import node.roles.edgenode  # noqa: F401
    import node.roles.enrolment  # noqa: F401
    import node.roles.trainer  # noqa: F401
    from fl.datasets import DatasetError, load_dataset
    from fl.federation import warm_up

    with contextlib.suppress(OSError, DatasetError):  # the built-in dataset, parsed once for all (without
        load_dataset("digits")                           # scikit-learn installed: read when a job needs it)
    warm_up(torch.device("cpu"))
    gc.collect()
    gc.freeze()  # what is loaded now stays out of the collector's sweeps (which would write to, and so copy, its pages)


class ForkedEdgeNodes:
    """The parent of ``count`` edge node processes; ``child(i)`` runs edge node ``i`` to its end and
    returns its exit code."""

    def __init__(self, count: int, child: Callable[[int], int], name: Callable[[int], str]) -> None:
        self.count = count
        self.child = child
        self.name = name
        self.running: dict[int, int] = {}  # pid -> index
        self._stop_at: float | None = None

    def run(self) -> int:
        """Fork every child, pass stops on, wait for all; the worst exit code (0: all stopped cleanly)."""
        if threading.active_count() > 1:
            raise RuntimeError("edge node processes must be forked before any thread starts")
        parent = os.getpid()
        previous = {sig: signal.signal(sig, self._on_stop) for sig in STOPS}
        failed = 0
        try:
            for index in range(self.count):
                if self._stop_at is not None:
                    break
                sys.stdout.flush()
                sys.stderr.flush()
                # a stop arriving now waits until the child is on the list (and is not the child's to handle)
                signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
                try:
                    pid = os.fork()
                    if pid == 0:
                        self._become_child(index, parent, previous)
                    self.running[pid] = index
                except OSError as exc:  # no memory or processes left for another: stop those started
                    log.error("could not start edge node %s: %s; stopping the others", self.name(index), exc)
                    failed = 1
                    self._on_stop(signal.SIGTERM, None)
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
            if self.running:
                log.info("%d edge node processes started (pids %d … %d)", len(self.running), min(self.running),
                         max(self.running))
            return max(failed, self._wait())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_stop(self, signum: int, _frame: object) -> None:
        if self._stop_at is None:
            log.info("signal %d: stopping %d edge node processes", signum, len(self.running))
            self._stop_at = time.monotonic()
        for pid in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _wait(self) -> int:
        worst = 0
        killed = False
        while self.running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if self._stop_at is not None and not killed and time.monotonic() - self._stop_at > STOP_GRACE_S:
                    log.warning("%d edge node processes still running %.0f s after the stop: killing them",
                                len(self.running), STOP_GRACE_S)
                    for left in self.running:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(left, signal.SIGKILL)
                    killed = True
                time.sleep(0.05)
                continue
            index = self.running.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            worst = max(worst, abs(code))
            if code != 0 or self._stop_at is None:
                log.warning("edge node %s (pid %d) ended with exit code %d; %d still running", self.name(index), pid,
                            code, len(self.running))
        return worst

    def _become_child(self, index: int, parent: int, previous: dict[int, object]) -> None:
        """In the child: die with the parent, run edge node ``index``, exit (never returns)."""
        code = 1
        try:
            for sig, handler in previous.items():
                signal.signal(sig, handler)  # (the node installs its own; until then a stop ends it at once)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
            _die_with_parent()
            if os.getppid() != parent:  # the parent died before the line above took effect
                os._exit(1)
            code = self.child(index)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - a child reports and exits; it must never return into the parent's loop
            log.error("edge node %s stopped: %s", self.name(index), exc)
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _die_with_parent() -> None:
    """Ask the kernel to send this process SIGTERM when its parent ends (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
