"""Separate hosts on one Linux machine: network namespaces on a bridge (needs root and `ip`).

Each host gets its own namespace with one address in 10.123.0.0/24 (only addresses inside the
namespaces made here), joined to a bridge in the root namespace at 10.123.0.1. The machine's
MariaDB listens on loopback only, so a small TCP forwarder on 10.123.0.1:3306 lets the hosts
reach it. ``Cluster.close()`` removes every namespace, link and forwarder it made, and is safe
to call after a failure half-way.

Used by the multi-host test (tests/test_netns.py) and by ``scripts/netns_cluster.py``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field

SUBNET = "10.123.0"
BRIDGE_IP = f"{SUBNET}.1"


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, or no `ip netns`)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str | None:
    """None when namespaces can be made here, else why not."""
    import os

    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = "flprobe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


class TcpForwarder:
    """Accept on ``listen`` and relay each connection to ``target`` (both (host, port))."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="forwarder", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.server.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.server.close()


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    veth: str  # the root-namespace end of its link: `ip link set <veth> down` cuts the host off

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]


@dataclass
class Cluster:
    """Hosts ``names`` at 10.123.0.10, .11, ... on bridge ``<prefix>br``."""

    prefix: str = "fl"
    hosts: dict[str, Host] = field(default_factory=dict)
    forwarders: list[TcpForwarder] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def open(self, names: list[str]) -> "Cluster":
        problem = unavailable_reason()
        if problem:
            raise NetnsUnavailable(problem)
        self.remove_leftovers()
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{BRIDGE_IP}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for index, name in enumerate(names):
                self._add_host(name, index)
        except Exception:
            self.close()
            raise
        return self

    def _add_host(self, name: str, index: int) -> None:
        namespace, veth, address = f"{self.prefix}-{name}", f"{self.prefix}v{index}", f"{SUBNET}.{10 + index}"
        ip("netns", "add", namespace)
        self.hosts[name] = Host(name, namespace, address, veth)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "route", "add", "default", "via", BRIDGE_IP)

    def forward(self, port: int, target: tuple[str, int]) -> str:
        """Make ``target`` on the root namespace reachable from the hosts at BRIDGE_IP:port."""
        self.forwarders.append(TcpForwarder((BRIDGE_IP, port), target))
        return f"{BRIDGE_IP}:{port}"

    def set_link(self, name: str, up: bool) -> None:
        ip("link", "set", self.hosts[name].veth, "up" if up else "down")

    def remove_leftovers(self) -> None:
        """Namespaces and the bridge of an earlier run that died before cleaning up."""
        for line in ip("netns", "list", check=False).stdout.splitlines():
            namespace = line.split()[0] if line.strip() else ""
            if namespace.startswith(f"{self.prefix}-"):
                ip("netns", "del", namespace, check=False)
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if link.startswith(f"{self.prefix}v"):
                ip("link", "del", link, check=False)
        ip("link", "del", self.bridge, check=False)

    def close(self) -> None:
        for forwarder in self.forwarders:
            forwarder.close()
        self.forwarders.clear()
        for host in self.hosts.values():
            ip("link", "del", host.veth, check=False)  # both ends of the pair
            ip("netns", "del", host.namespace, check=False)
        self.hosts.clear()
        ip("link", "del", self.bridge, check=False)
