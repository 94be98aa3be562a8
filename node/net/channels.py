"""Channels between nodes: one set of options for every link, opened once per peer and reused."""

from __future__ import annotations

import socket
import threading

import grpc

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
