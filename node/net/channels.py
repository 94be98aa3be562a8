"""Channels between nodes: one set of options for every link, opened once per peer and reused.

With credentials every channel is mutual TLS against the network CA; a caller that knows which
node it calls names it, and the server's certificate must then carry that node id (any node of
the network otherwise). Without credentials (``--insecure``) channels are plaintext.
"""

from __future__ import annotations

import socket
import threading

import grpc

from node.net.tls import NETWORK_NAME, Credentials

# gRPC metadata naming which of the edge nodes behind one address a supernode's call is for (one
# process may run many: ``main.py --count K``); their server routes the call by it
ADDRESSED_NODE = "fedledger-node"
CHUNK_BYTES = 1 << 20  # model streams: 1 MiB per message
MAX_MESSAGE_BYTES = 8 << 20  # anything larger is refused by gRPC itself (RESOURCE_EXHAUSTED)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # servers take those pings (by default they allow one per 5 minutes, then answer GOAWAY
    # "too_many_pings" and a call on the idle channel fails UNAVAILABLE)
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.max_ping_strikes", 0),
    # reused channels must find a restarted peer quickly (the default back-off grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


def channel(address: str, credentials: Credentials | None = None, node_id: str = "") -> grpc.Channel:
    """A channel to ``address``: mutual TLS with ``credentials`` (the server must be ``node_id``
    when given, else any node of the network), plaintext without."""
    if credentials is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", node_id or NETWORK_NAME)]
    return grpc.secure_channel(address, credentials.channel(), options=options)


def addressed_to(node_id: str) -> tuple[tuple[str, str], ...]:
    """The metadata of a call to edge node ``node_id`` (see ``ADDRESSED_NODE``)."""
    return ((ADDRESSED_NODE, node_id),)


class Channels:
    """Open channels by address (and the node expected there), reused across calls: a round talks
    to the same peers again and again, and a fresh connection (TCP, TLS and HTTP/2 handshakes)
    per call costs milliseconds each."""

    def __init__(self, credentials: Credentials | None = None) -> None:
        self.credentials = credentials
        self._open: dict[tuple[str, str], grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, address: str, node_id: str = "") -> grpc.Channel:
        with self._lock:
            ch = self._open.get((address, node_id))
            if ch is None:
                ch = self._open[(address, node_id)] = channel(address, self.credentials, node_id)
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


def url_host(host: str) -> str:
    """A host as it goes before ``:PORT``: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def route_ip(towards: str) -> str:
    """The local IP address that routes to ``towards`` (HOST:PORT): what peers can reach us at."""
    host, port = split_address(towards)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))  # UDP connect sends nothing; it only picks a route
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
