"""Start a node's gRPC server (with health checking and reflection) and run it until a signal."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from base_package import data_pb2 as pb
from node.net.channels import CHANNEL_OPTIONS
from node.net.guard import Guard, Rule
from node.net.limits import StreamLimits
from node.net.tls import Credentials, HostCredentials

log = logging.getLogger(__name__)

RESERVED_THREADS = 8  # server threads streams can never take
SERVICES = [s.full_name for s in pb.DESCRIPTOR.services_by_name.values()]


def build_server(bind: str, servicers: Iterable[tuple[Callable[[Any, Any], None], Any]],
                 rules: Mapping[str, Rule], credentials: Credentials | HostCredentials | None = None, *,
                 revoked: Callable[[str], bool] = lambda node_id: False, enrol_bind: str | None = None,
                 workers: int = 32, streams_per_peer: int = 4, stream_idle_s: float = 30.0) -> grpc.Server:
    """A started server on ``bind`` (HOST:PORT) with every servicer, health and reflection, and
    ``rules`` (one per RPC) applied by the :class:`Guard` interceptor.

    With ``credentials`` the port is mutual TLS (plaintext without: ``--insecure``);
    ``enrol_bind`` adds a plaintext port for nodes that have no certificate yet: the guard lets
    such callers reach only the methods whose rule admits anyone (enrolment). Streams are bounded
    (``node.net.limits``): ``streams_per_peer`` at once per caller, ``workers`` − 8 in all (the
    rest of the threads stay free for health checks, heartbeats and orders), cancelled after
    ``stream_idle_s`` without a message."""
    limits = StreamLimits(streams_per_peer, max(1, workers - RESERVED_THREADS), stream_idle_s)
    guard = Guard(rules, tls=credentials is not None, revoked=revoked, limits=limits)
    server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
                         interceptors=[guard], options=CHANNEL_OPTIONS)
    for add, servicer in servicers:
        add(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *SERVICES]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    _listen(server, bind, credentials)
    if enrol_bind is not None:
        _listen(server, enrol_bind, None)
    server.start()
    return server


def _listen(server: grpc.Server, bind: str, credentials: Credentials | HostCredentials | None) -> None:
    try:
        port = (server.add_secure_port(bind, credentials.server()) if credentials is not None
                else server.add_insecure_port(bind))
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {bind}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {bind}: the address is taken or not local")


def stop_event() -> threading.Event:
    """An event set by the first SIGINT or SIGTERM (installed now, before any slow start-up)."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d", signum)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stopping
