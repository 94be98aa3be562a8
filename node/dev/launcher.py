"""Start node processes on this machine and wait for conditions on them.

Used by the demo (``scripts/local_network.py``), the tests and the benchmarks: each node is a
real ``main.py`` process with its own home, port and log file. Nodes are enrolled automatically:
the entry node gets a free enrolment port, every other node a one-time token made in the entry
node's home (as ``python main.py token`` makes one); this process talks to the nodes with the
console's certificate from the entry node's home, over mutual TLS unless ``--insecure`` is among
the node's arguments.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.net.channels import channel
from node.net.tls import CONSOLE_CERT, CONSOLE_DIR, CONSOLE_KEY, Credentials

ROOT = Path(__file__).resolve().parents[2]  # the repository: where main.py lives
# quick membership for local networks: heartbeats every 0.3 s, dead after 1.5 s, blocks every 0.2 s
FAST = {"FL_HEARTBEAT_INTERVAL": "0.3", "FL_DEAD_AFTER": "1.5", "FL_BLOCK_INTERVAL": "0.2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (below Linux's ephemeral range, where the
    kernel picks ports for outgoing connections and ``free_port``)."""
    import random

    for _ in range(200):
        base = random.randrange(10000, 32000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except grpc.RpcError as exc:  # a node still starting
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


class NodeProcess:
    def __init__(self, tmp: Path, name: str, nt: str, entry: str | None = None, is_entry: bool = False,
                 db: str | None = None, env: dict[str, str] | None = None, extra: list[str] = (),
                 token_source: "NodeProcess | None" = None, host: str = "127.0.0.1",
                 port: int | None = None, prefix: list[str] = (), script: Path | None = None) -> None:
        """``token_source``: the entry node (its home holds the admin token, the console's
        certificate and the CA that enrols this node); without one a node other than the entry
        node starts unenrolled. ``host``/``port``: where it listens (and is reached); ``prefix``
        wraps the command, e.g. ``ip netns exec NS`` to start it on another (namespaced) host;
        ``script`` runs instead of main.py with the same arguments (a test's deliberately faulty node)."""
        count = int(extra[list(extra).index("--count") + 1]) if "--count" in extra else 1
        forked = "--fork" in extra  # K processes on K consecutive ports
        self.name, self.port = name, port or (free_ports(count) if forked else free_port())
        self.insecure = "--insecure" in extra
        self.enrol_port = free_port() if is_entry and port is None else None
        self.address = f"{host}:{self.port}"
        self.home = tmp / name
        self.log = tmp / f"{name}.log"
        args = [*prefix, sys.executable, str(script or ROOT / "main.py"), "--host", host, "--port", str(self.port),
                "--nt", nt, "--entry", entry or self.address, "--home", str(self.home), "--advertise", self.address,
                *extra]
        if is_entry:
            args.append("-z")
            if self.enrol_port is not None:
                args += ["--enrol-port", str(self.enrol_port)]
        if db:
            args += ["--db", db]
        environment = {**os.environ, **FAST, **(env or {})}
        if not is_entry and token_source is not None:  # (`--count K` edge nodes enrol K times)
            environment["FEDLEDGER_ENROL_TOKEN"] = token_source.enrolment_token(nt, count)
        self.proc = subprocess.Popen(args, cwd=ROOT, env=environment, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        self.token_source = token_source
        self._channel: grpc.Channel | None = None

    def enrolment_token(self, role: str, uses: int = 1) -> str:
        """A token (valid for an hour) that enrols ``uses`` nodes of ``role`` with this entry node."""
        from node.roles.enrolment import enrol_port_for, offline_token

        port = self.enrol_port if self.enrol_port is not None else enrol_port_for(self.port)
        return str(offline_token(self.home, role, uses, 1.0, port))

    @property
    def console_dir(self) -> Path:
        return (self.token_source or self).home / CONSOLE_DIR

    @property
    def channel(self) -> grpc.Channel:
        """A channel to this node with the console's certificate (made once it exists)."""
        if self._channel is None:
            creds = None if self.insecure else Credentials.load(self.console_dir, CONSOLE_KEY, CONSOLE_CERT)
            self._channel = channel(self.address, creds)
        return self._channel

    def stub(self, kind: type) -> Any:
        return kind(self.channel)

    @property
    def token(self) -> str:
        source = self.token_source or self
        return (source.home / "admin.token").read_text().strip()

    def admin(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]

    def console(self, method: str, request: Any = None, timeout: float = 30) -> Any:
        call = getattr(self.stub(rpc_pb.ConsoleStub), method)
        return call(request if request is not None else pb.Empty(), metadata=self.admin(), timeout=timeout)

    def status(self) -> pb.StatusReply:
        return self.console("Status", timeout=5)

    def head(self) -> pb.Head:
        return self.stub(rpc_pb.LedgerStub).GetHead(pb.Empty(), timeout=5)

    def wait_ready(self, timeout: float = 60) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if not self.insecure and not (self.console_dir / CONSOLE_CERT).exists():
                return False  # the entry node makes it on its first start
            reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, timeout, f"{self.name} to serve")

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait: the exit status."""
        self.close_channel()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def terminate(self) -> None:
        """SIGTERM without waiting (``stop_all`` stops many nodes at once)."""
        self.close_channel()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.close_channel()
        self.proc.kill()
        self.proc.wait()


def stop_all(nodes: list[NodeProcess], timeout: float = 20) -> None:
    """Stop every node in parallel: all get SIGTERM at once, then each is awaited (killed when it
    outlives ``timeout``), so stopping a network takes as long as its slowest node."""
    for node in nodes:
        node.terminate()
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


def start_supernodes(work: Path, started: list[NodeProcess], *, env: dict[str, str] | None = None,
                     db: Callable[[str], str | None] = lambda name: None, entry_args: list[str] = (),
                     **second: Any) -> tuple[NodeProcess, NodeProcess]:
    """An entry supernode and a second one, each with its own ledger (``db(name)``: its URL; None:
    SQLite in its home), serving and registered; both appended to ``started`` as they start.
    ``second``: more NodeProcess arguments for the second one (a faulty script …)."""
    entry = NodeProcess(work, "entry", "SN", is_entry=True, db=db("entry"), extra=list(entry_args), env=env)
    started.append(entry)
    entry.wait_ready()
    sn = NodeProcess(work, "sn1", "SN", entry=entry.address, db=db("sn1"), token_source=entry, env=env, **second)
    started.append(sn)
    sn.wait_ready()
    wait_until(lambda: sum(n.alive for n in entry.status().supernodes.nodes) == 2, 30, "the second supernode")
    return entry, sn


def start_edge_host(work: Path, entry: NodeProcess, started: list[NodeProcess], count: int, *, fork: bool = False,
                    env: dict[str, str] | None = None, timeout: float = 60) -> NodeProcess:
    """``count`` edge nodes in one process (``--count``), or as forked processes (``--fork``),
    enrolled with ``entry`` and alive there (appended to ``started`` as it starts)."""
    host = NodeProcess(work, "edges", "EN", entry=entry.address, token_source=entry, env=env,
                       extra=["--count", str(count), *(["--fork"] if fork else [])])
    started.append(host)
    ports = range(host.port, host.port + (count if fork else 1))  # (the host's own: a network may hold others)

    def joined() -> bool:
        edges = entry.status().edge_nodes.nodes
        return sum(e.alive and int(e.address.rsplit(":", 1)[1]) in ports for e in edges) == count

    wait_until(joined, timeout, f"{count} edge nodes", interval=0.5)
    return host


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
