"""gRPC plumbing shared by every node: channel options, status codes, and error mapping.

Servicer methods are wrapped with :func:`handled`, which turns the project's exceptions into
gRPC status codes with a message a person can act on, so a bad request never kills a node and
never leaves a half-done write behind (writes happen only after all checks pass).
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from fl.serialize import SerializationError
from fl.strategy import InvalidUpdate
from node.chain import ChainError
from node.identity import IdentityError
from node.wire import WireError
from sql.store import BlockConflict, LedgerUnavailable, StoreError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

CHUNK_BYTES = 1 << 20  # model streams: 1 MiB per message
MAX_MESSAGE_BYTES = 8 << 20  # anything larger is refused by gRPC itself (RESOURCE_EXHAUSTED)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # reused channels must find a restarted peer quickly (the default back-off grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


class ServiceError(Exception):
    """A request was refused: carries the gRPC status code and the reason."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def refuse(code: grpc.StatusCode, message: str) -> ServiceError:
    return ServiceError(code, message)


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (BlockConflict, grpc.StatusCode.ABORTED),
    (LedgerUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreError, grpc.StatusCode.INTERNAL),
    (WireError, grpc.StatusCode.INVALID_ARGUMENT),
    (ChainError, grpc.StatusCode.INVALID_ARGUMENT),
    (IdentityError, grpc.StatusCode.INVALID_ARGUMENT),
    (SerializationError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidUpdate, grpc.StatusCode.INVALID_ARGUMENT),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    if isinstance(exc, grpc.RpcError):  # a call this node made to another one failed
        return grpc.StatusCode.UNAVAILABLE, f"another node did not answer: {exc.code().name} {exc.details()}"
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def handled(method: F) -> F:
    """Map exceptions raised by a servicer method to a gRPC status (works for streams too)."""

    def fail(context: grpc.ServicerContext, exc: Exception) -> None:
        code, message = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s failed", method.__qualname__)
        else:
            log.info("%s refused: %s: %s", method.__qualname__, code.name, message)
        context.abort(code, message)

    if _is_generator(method):
        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                fail(context, exc)
        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            fail(context, exc)
    return unary  # type: ignore[return-value]


def _is_generator(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.isgeneratorfunction(fn)


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


class Channels:
    """Open channels by address, reused across calls: a round talks to the same peers again and
    again, and a fresh connection (TCP + HTTP/2 handshake) per call costs milliseconds each."""

    def __init__(self) -> None:
        self._open: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> grpc.Channel:
        with self._lock:
            ch = self._open.get(address)
            if ch is None:
                ch = self._open[address] = channel(address)
            return ch

    def close(self) -> None:
        with self._lock:
            for ch in self._open.values():
                ch.close()
            self._open.clear()


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` → (host, port), with a clear error for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def route_ip(towards: str) -> str:
    """The local IP address that routes to ``towards`` (HOST:PORT): what peers can reach us at."""
    host, port = split_address(towards)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))  # UDP connect sends nothing; it only picks a route
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
