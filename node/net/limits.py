"""Bounds on streaming calls, so that no caller can hold a node's threads.

A gRPC server thread serves one call from start to end, and a model stream lasts as long as its
sender likes: without bounds, a few dozen idle streams from one client take every thread, and
health checks and heartbeats queue behind them until the node looks dead. So:

- **per peer**: at most ``per_peer`` streaming calls at once from one caller (a node id; an
  address for callers without a certificate); more are refused at once (RESOURCE_EXHAUSTED);
- **in total**: at most ``total`` streaming calls at once (the server's threads minus a reserve
  kept for short calls: health checks, heartbeats, round orders);
- **idle**: a stream that moves no message for ``idle_seconds`` is cancelled by a watchdog thread,
  which frees the thread serving it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from node.net.errors import refuse

log = logging.getLogger(__name__)


@dataclass
class _Watched:
    peer: str
    context: grpc.ServicerContext
    last: float


class StreamLimits:
    def __init__(self, per_peer: int, total: int, idle_seconds: float) -> None:
        self.per_peer, self.total, self.idle_seconds = per_peer, total, idle_seconds
        self._by_peer: dict[str, int] = {}
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._watchdog: threading.Thread | None = None

    @contextlib.contextmanager
    def stream(self, peer: str, context: grpc.ServicerContext) -> Iterator[Callable[[], None]]:
        """Hold one of ``peer``'s stream places (or refuse); yields ``moved()``, to call whenever
        a message goes either way."""
        with self._lock:
            if len(self._watched) >= self.total:
                raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"this node is serving {len(self._watched)} model streams, its most; retry in a moment")
            held = self._by_peer.get(peer, 0)
            if held >= self.per_peer:
                raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{peer} already holds {held} streams with this node (at most {self.per_peer} at once)")
            self._by_peer[peer] = held + 1
            key, self._next_id = self._next_id, self._next_id + 1
            watched = self._watched[key] = _Watched(peer, context, time.monotonic())
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="stream-watchdog", daemon=True)
                self._watchdog.start()

        def moved() -> None:
            watched.last = time.monotonic()

        try:
            yield moved
        finally:
            with self._lock:
                del self._watched[key]
                self._by_peer[peer] -= 1
                if not self._by_peer[peer]:
                    del self._by_peer[peer]

    def active(self, peer: str) -> int:
        with self._lock:
            return self._by_peer.get(peer, 0)

    def _watch(self) -> None:
        period = max(0.05, min(1.0, self.idle_seconds / 4))
        while True:
            time.sleep(period)
            now = time.monotonic()
            with self._lock:
                idle = [w for w in self._watched.values() if now - w.last > self.idle_seconds]
            for w in idle:
                w.last = now  # cancel once
                log.warning("cancelled a stream from %s: nothing moved for %.0f s", w.peer, self.idle_seconds)
                w.context.cancel()


def peer_key(node_id: str, context: grpc.ServicerContext) -> str:
    """Who holds a stream: the caller's node id, else its network address without the port."""
    if node_id:
        return node_id
    address = context.peer()  # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555"
    return address.rsplit(":", 1)[0] if address.count(":") >= 2 else address
