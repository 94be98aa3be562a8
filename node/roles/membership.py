"""Who is in the network, where, and whether they are alive (last heartbeat within a window).

Supernodes keep the edge nodes they serve; the entry node keeps every supernode, the edge
nodes each supernode reports, and short-lived *reservations*: when it sends an edge node to a
supernode it counts that edge node there at once, so several edge nodes joining in the same
second spread out instead of all picking the same "least loaded" supernode.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from base_package import data_pb2 as pb
from node.chain.identity import Identity
from node.chain.rules import Transaction, TxKind, check_payload, now_ms
from node.net.errors import refuse
from node.net.wire import signed_fields

RESERVATION_SECONDS = 15.0


@dataclass
class Member:
    node_id: str
    role: str  # "SN" | "EN"
    address: str
    public_key: bytes
    supernode: str = ""  # for edge nodes: the supernode they are registered with
    last_seen: float = field(default_factory=time.monotonic)
    edge_nodes: frozenset[str] = frozenset()  # for supernodes: what they last reported
    datasets: frozenset[str] | None = None  # for edge nodes: what their data_dir holds (None: not said)
    head_height: int = -1
    last_beat_ms: int = 0  # the newest heartbeat's timestamp: the next must be newer (no replays)


class Members:
    def __init__(self, dead_after: float, self_id: str = "") -> None:
        self.dead_after = dead_after
        self.self_id = self_id  # this node: always alive to itself
        self._members: dict[str, Member] = {}
        self._reserved: dict[str, tuple[str, float]] = {}  # edge node -> (supernode, until)
        self._lock = threading.Lock()

    def add(self, member: Member) -> None:
        with self._lock:
            old = self._members.get(member.node_id)
            if old is not None and old.role == "SN":
                member.edge_nodes, member.head_height = old.edge_nodes, old.head_height
            self._members[member.node_id] = member

    def get(self, node_id: str) -> Member | None:
        with self._lock:
            return self._members.get(node_id)

    def touch(self, node_id: str, edge_nodes: Iterable[str] | None = None, head_height: int | None = None) -> None:
        """Record a heartbeat; a supernode's heartbeat also vouches for its edge nodes."""
        now = time.monotonic()
        with self._lock:
            member = self._members.get(node_id)
            if member is None:
                return
            member.last_seen = now
            if head_height is not None:
                member.head_height = head_height
            if edge_nodes is not None:
                member.edge_nodes = frozenset(edge_nodes)
                for en in member.edge_nodes:
                    child = self._members.get(en)
                    # a supernode vouches only for edge nodes that registered with it
                    if child is not None and child.role == "EN" and child.supernode == node_id:
                        child.last_seen = now
                        self._reserved.pop(en, None)

    def alive(self, member: Member) -> bool:
        return member.node_id == self.self_id or time.monotonic() - member.last_seen <= self.dead_after

    def of_role(self, role: str, alive_only: bool = False) -> list[Member]:
        with self._lock:
            found = [m for m in self._members.values() if m.role == role]
        return sorted((m for m in found if not alive_only or self.alive(m)), key=lambda m: m.node_id)

    def load(self, supernode: str) -> int:
        """Edge nodes a supernode serves: those it reported plus those sent to it since."""
        with self._lock:
            return self._load(supernode, time.monotonic())

    def _load(self, supernode: str, now: float) -> int:
        if supernode == self.self_id:  # our own edge nodes heartbeat to us directly
            reported = {m.node_id for m in self._members.values() if m.role == "EN" and m.supernode == supernode
                        and now - m.last_seen <= self.dead_after}
        else:
            member = self._members.get(supernode)
            reported = set(member.edge_nodes) if member else set()
        reserved = {en for en, (sn, until) in self._reserved.items() if sn == supernode and until > now}
        return len(reported | reserved)

    def pick_supernode(self, edge_node: str, exclude: Iterable[str] = ()) -> Member | None:
        """The alive supernode with the fewest edge nodes (ties: lowest id); reserves a place."""
        excluded = set(exclude)
        now = time.monotonic()
        with self._lock:
            for en, (_, until) in list(self._reserved.items()):
                if until <= now:
                    del self._reserved[en]
            self._reserved.pop(edge_node, None)
            for sn in self._members.values():  # the edge node is leaving wherever it was
                if edge_node in sn.edge_nodes:
                    sn.edge_nodes = sn.edge_nodes - {edge_node}
            candidates = [m for m in self._members.values() if m.role == "SN" and m.node_id not in excluded
                          and (m.node_id == self.self_id or now - m.last_seen <= self.dead_after)]
            if not candidates:
                return None
            best = min(candidates, key=lambda m: (self._load(m.node_id, now), m.node_id))
            self._reserved[edge_node] = (best.node_id, now + RESERVATION_SECONDS)
            return best

    def remove(self, node_id: str) -> None:
        with self._lock:
            self._members.pop(node_id, None)

    def to_pb(self, member: Member) -> pb.NodeInfo:
        return pb.NodeInfo(
            node_id=member.node_id, role=pb.Role.Value(member.role), address=member.address,
            alive=self.alive(member), load=self.load(member.node_id) if member.role == "SN" else 0,
            supernode=member.supernode,
            seen_ms_ago=0 if member.node_id == self.self_id else int((time.monotonic() - member.last_seen) * 1000),
            public_key=member.public_key)

    def list_pb(self, role: str | None = None) -> pb.NodeList:
        roles = [role] if role else ["SN", "EN"]
        return pb.NodeList(nodes=[self.to_pb(m) for r in roles for m in self.of_role(r)])


# --- the signed messages of membership ----------------------------------------------------------
def heartbeat_fields(req: pb.HeartbeatRequest) -> bytes:
    return signed_fields({"node_id": req.node_id, "timestamp": req.timestamp,
                          "edge_nodes": sorted(req.edge_nodes), "head_height": req.head_height})


def signed_heartbeat(identity: Identity, edge_nodes: list[str] = (), head_height: int = -1,
                     timestamp: int | None = None) -> pb.HeartbeatRequest:
    req = pb.HeartbeatRequest(node_id=identity.node_id, timestamp=now_ms() if timestamp is None else timestamp,
                              edge_nodes=sorted(edge_nodes), head_height=head_height)
    req.signature = identity.sign(heartbeat_fields(req))
    return req


def register_transaction(identity: Identity, role: str, address: str, supernode: str = "",
                         datasets: list[str] | None = None) -> Transaction:
    """A signed REGISTER; an edge node names its supernode and the datasets its data_dir holds."""
    payload: dict[str, Any] = {"public_key": identity.public_key.hex(), "role": role, "address": address}
    if supernode:
        payload["supernode"] = supernode
    if datasets is not None:
        payload["datasets"] = sorted(datasets)
    return Transaction.create(TxKind.REGISTER, payload, identity)


def edge_member(tx: Transaction, key: bytes, alive: bool = True) -> Member:
    """The edge node a (checked) REGISTER describes: where it is, its supernode, its datasets
    (``alive``: seen now; else only once a heartbeat, its own or its supernode's, says so)."""
    datasets = tx.payload.get("datasets")
    return Member(tx.sender, "EN", tx.payload["address"], key, supernode=tx.payload.get("supernode", ""),
                  datasets=None if datasets is None else frozenset(datasets),
                  last_seen=time.monotonic() if alive else -math.inf)


def check_registration(tx: Transaction) -> bytes:
    """A REGISTER transaction is self-certifying: its payload's key must sign it. Returns the key."""
    if tx.kind != TxKind.REGISTER:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"expected a REGISTER transaction, got {tx.kind}")
    check_payload(tx)
    key = bytes.fromhex(tx.payload["public_key"])
    if not tx.signed_by(key):
        raise refuse(grpc.StatusCode.UNAUTHENTICATED,
                     f"the registration of node {tx.sender} is not signed by the key it presents")
    return key
