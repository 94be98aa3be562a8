"""Serve the explorer beside the node's gRPC server: uvicorn on a thread of its own, on a socket
bound before the node starts (a port in use is said at once), over TLS with the node's own
certificate unless the network runs ``--insecure``."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import uvicorn

from node.explorer.app import explorer_app
from node.roles.supernode import Supernode

log = logging.getLogger(__name__)

CONCURRENT_REQUESTS = 64  # beyond: 503 at once (the page server shares the supernode's process)


class ExplorerServer:
    """The explorer of ``node`` on ``host:port``; ``tls``: (certificate file, key file), or None
    for plain HTTP."""

    def __init__(self, node: Supernode, host: str, port: int, tls: tuple[Path, Path] | None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family)  # OSError now, not in the thread
        self.scheme = "https" if tls else "http"
        config = uvicorn.Config(explorer_app(node, secure_cookies=tls is not None), log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=2,
                                limit_concurrency=CONCURRENT_REQUESTS,
                                ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True,
                                       name="explorer")

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.socket.close()
