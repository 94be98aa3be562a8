"""A supernode: serves edge nodes, keeps a copy of the chain, and (the entry node) runs it.

Every supernode registers the edge nodes that come to it, takes their heartbeats, stores every
block after validating it, and reports to the entry node once per heartbeat (its edge nodes and
its head). The entry supernode (``-z``) also creates the genesis block, admits transactions into
its pool, seals them into blocks (every ``block_max_txs`` transactions or ``block_interval``
seconds), pushes each block to the other supernodes, tracks which height a majority holds
(final), and sends each joining edge node to the least-loaded alive supernode.

The gRPC servicers in ``node.sn_services`` are thin: they decode, call these methods, encode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.rules import Block, Head, InvalidBlock, InvalidTransaction, Registration, Transaction, TxKind, canonical_bytes, check_payload, check_sender_role, now_ms
from node.chain.identity import Identity, verify_signature
from node.chain.ledger import Ledger
from node.roles.membership import Member, Members
from node.net.channels import Channels
from node.net.errors import refuse
from node.roles.rounds import RoundRunner
from node.net.model_store import ModelCache
from node.net.wire import block_from_pb, block_to_pb, head_to_pb, signed_fields, tx_to_pb
from node.chain.store import StoreError

log = logging.getLogger(__name__)

HEARTBEAT_MAX_SKEW_MS = 60_000
SYNC_BATCH = 500
MAX_PENDING = 20_000  # transactions waiting for a block; beyond that submitters are asked to retry
MAX_BLOCK_BYTES = 6 << 20  # a sealed block must fit one gRPC message (8 MiB) when pushed


@dataclass(frozen=True)
class NodeSettings:
    heartbeat_interval: float = 1.0
    dead_after: float = 3.0
    block_interval: float = 0.5
    block_max_txs: int = 500
    max_model_bytes: int = 1024 << 20
    edge_parallelism: int = 0
    model_store_bytes: int = 10240 << 20

    @classmethod
    def from_config(cls, conf: dict[str, Any]) -> "NodeSettings":
        return cls(conf["heartbeat_interval"], conf["dead_after"], conf["block_interval"],
                   conf["block_max_txs"], conf["max_model_mb"] << 20, conf["edge_parallelism"],
                   conf["model_store_mb"] << 20)


def heartbeat_fields(req: pb.HeartbeatRequest) -> bytes:
    return signed_fields({"node_id": req.node_id, "timestamp": req.timestamp,
                          "edge_nodes": sorted(req.edge_nodes), "head_height": req.head_height})


def signed_heartbeat(identity: Identity, edge_nodes: list[str] = (), head_height: int = -1) -> pb.HeartbeatRequest:
    req = pb.HeartbeatRequest(node_id=identity.node_id, timestamp=now_ms(), edge_nodes=sorted(edge_nodes),
                              head_height=head_height)
    req.signature = identity.sign(heartbeat_fields(req))
    return req


def register_transaction(identity: Identity, role: str, address: str, supernode: str = "") -> Transaction:
    payload = {"public_key": identity.public_key.hex(), "role": role, "address": address}
    if supernode:
        payload["supernode"] = supernode
    return Transaction.create(TxKind.REGISTER, payload, identity)


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


class Supernode:
    role = "SN"

    def __init__(self, identity: Identity, address: str, ledger: Ledger, entry_address: str,
                 is_entry: bool, settings: NodeSettings, model_dir: Path | None = None,
                 job_defaults: dict[str, Any] | None = None) -> None:
        """``model_dir``: where received models are kept once out of memory (else they are dropped);
        ``job_defaults``: the configuration the entry node's jobs start from."""
        self.identity = identity
        self.node_id = identity.node_id
        self.address = address
        self.ledger = ledger
        self.entry_address = entry_address
        self.is_entry = is_entry
        self.settings = settings
        self.entry_id: str | None = identity.node_id if is_entry else None
        self.members = Members(settings.dead_after, identity.node_id)
        self.models = ModelCache(2 * settings.max_model_bytes, model_dir, settings.model_store_bytes)
        self.supernode_view = pb.NodeList()  # the entry node's list, as last broadcast to us
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sync_lock = threading.Lock()
        # entry node only
        self._pool: list[Transaction] = []
        self._pool_hashes: set[str] = set()
        self._pool_cond = threading.Condition()
        self._peer_heads: dict[str, int] = {}
        self._pushers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="push")
        self.admin_token_hash = ""  # the entry node sets it from its token; others learn it at registration
        self.channels = Channels()  # to peers, reused
        self.rounds = RoundRunner(self)
        # the entry node runs jobs (imported here: the coordinator needs this class to exist)
        from node.roles.coordinator import Coordinator

        self.coordinator: Coordinator | None = Coordinator(self, job_defaults or {}) if is_entry else None

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.is_entry:
            genesis = self.ledger.create_genesis(self.identity, self.address)
            if genesis.proposer != self.node_id:
                raise RuntimeError(
                    f"this ledger's genesis was made by entry node {genesis.proposer}, not by this node "
                    f"({self.node_id}); start the entry node with its own --home, or use a fresh --db")
            self.members.add(Member(self.node_id, "SN", self.address, self.identity.public_key))
            self._spawn(self._block_loop, "blocks")
        else:
            self._spawn(self._report_loop, "report")

    def stop(self) -> None:
        """Stop the loops; the entry node seals what is pending into a last block first."""
        if self.coordinator is not None:
            self.coordinator.stop()
        self._stop.set()
        with self._pool_cond:
            self._pool_cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.is_entry:
            try:
                self._seal_pending()
            except Exception:  # noqa: BLE001
                log.exception("could not seal the last pending transactions")
        self.rounds.close()
        self._pushers.shutdown(wait=True, cancel_futures=False)
        self.channels.close()
        self.models.close()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _entry_stub(self, kind: type) -> Any:
        return kind(self.channels.get(self.entry_address))

    # --- membership -----------------------------------------------------------------------------------
    def register(self, tx: Transaction) -> pb.RegisterReply:
        key = check_registration(tx)
        role, address = tx.payload["role"], tx.payload["address"]
        if role == "SN":
            if not self.is_entry:
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                             f"supernodes register with the entry node at {self.entry_address}, not here")
            existing = self.members.get(tx.sender)
            if existing is not None and existing.role != "SN":
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"node {tx.sender} is registered as an edge node")
            self.members.add(Member(tx.sender, "SN", address, key))
            if self.coordinator is not None:
                self.coordinator.delivered.forget(tx.sender)
        else:
            if tx.payload.get("supernode") != self.node_id:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                             f"the registration names supernode {tx.payload.get('supernode')!r}, but this is {self.node_id}")
            existing = self.members.get(tx.sender)
            if existing is not None and existing.role == "SN":
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"node {tx.sender} is registered as a supernode")
            self.members.add(Member(tx.sender, "EN", address, key, supernode=self.node_id))
            self.rounds.delivered.forget(tx.sender)
        self.submit(tx)
        log.info("registered %s %s at %s", role, tx.sender, address)
        return pb.RegisterReply(entry_id=self.entry_id or "", supernode_id=self.node_id,
                                supernodes=self.supernodes_pb(), head=head_to_pb(self.ledger.head()),
                                admin_token_sha256=self.admin_token_hash if role == "SN" else "")

    def heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        member = self.members.get(req.node_id)
        if member is None:
            return pb.HeartbeatReply(known=False, supernodes=self.supernodes_pb(), head=head_to_pb(self.ledger.head()))
        if not verify_signature(member.public_key, req.signature, heartbeat_fields(req)):
            raise refuse(grpc.StatusCode.UNAUTHENTICATED, f"heartbeat for {req.node_id} has a bad signature")
        if abs(now_ms() - req.timestamp) > HEARTBEAT_MAX_SKEW_MS:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "heartbeat timestamp is off by more than 60 s: check the clock")
        if member.role == "EN" and member.supernode != self.node_id:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                         f"edge node {req.node_id} is registered with supernode {member.supernode}; heartbeat there")
        if member.role == "SN":
            if not self.is_entry:
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "supernodes report to the entry node")
            self.members.touch(req.node_id, req.edge_nodes, req.head_height)
            self._peer_heads[req.node_id] = req.head_height
            return pb.HeartbeatReply(known=True, supernodes=self.supernodes_pb(), head=head_to_pb(self.ledger.head()))
        self.members.touch(req.node_id)
        return pb.HeartbeatReply(known=True)  # an edge node needs no list and no head: no database read

    def upload_seen(self, header: pb.ModelHeader) -> None:
        """A signed, fresh upload from one of this supernode's edge nodes proves it alive as a
        heartbeat does; its edge node skips the heartbeat it would have sent meanwhile."""
        if abs(now_ms() - header.timestamp) <= HEARTBEAT_MAX_SKEW_MS:
            self.members.touch(header.sender)

    def find_supernode(self, req: pb.FindSupernodeRequest) -> pb.NodeInfo:
        if not self.is_entry:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"ask the entry node at {self.entry_address}")
        asking = self.members.get(req.node_id)
        if asking is not None and asking.role == "SN":
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"{req.node_id} is a supernode; only edge nodes join one")
        best = self.members.pick_supernode(req.node_id, req.exclude)
        if best is None:
            raise refuse(grpc.StatusCode.UNAVAILABLE, "no supernode is alive right now; retry in a few seconds")
        return self.members.to_pb(best)

    def supernodes_pb(self) -> pb.NodeList:
        return self.members.list_pb("SN") if self.is_entry else self.supernode_view

    def list_nodes(self, role: int) -> pb.NodeList:
        if role == pb.SN:
            return self.supernodes_pb()
        edge = self.members.list_pb("EN")
        if role == pb.EN:
            return edge
        return pb.NodeList(nodes=[*self.supernodes_pb().nodes, *edge.nodes])

    def my_edge_nodes(self) -> list[str]:
        return [m.node_id for m in self.members.of_role("EN", alive_only=True) if m.supernode == self.node_id]

    # --- transactions and blocks --------------------------------------------------------------
    def submit(self, tx: Transaction) -> str:
        """Admit ``tx`` into the entry node's pool (forwarding it there from other supernodes)."""
        return self.submit_all([tx])[0]

    def submit_all(self, txs: list[Transaction]) -> list[str]:
        """Admit ``txs`` in order, as ``submit`` does each, with one database read for them all
        (a round's updates, exclusions and aggregate on the way to the next round)."""
        if not self.is_entry:
            stub = self._entry_stub(rpc_pb.LedgerStub)
            return [stub.SubmitTransaction(tx_to_pb(tx), timeout=10).tx_hash for tx in txs]
        distinct = list({tx.hash: tx for tx in txs}.values())  # a repeat is the same transaction
        for tx in distinct:
            check_payload(tx)
        sealed = self.ledger.store.existing_transactions([tx.hash for tx in distinct])
        # database reads outside the lock
        registered = self.ledger.store.registrations(tx.sender for tx in distinct)
        for tx in distinct:
            if tx.hash not in sealed:  # a sealed one is idempotent
                self._admit(tx, registered.get(tx.sender))
        return [tx.hash for tx in txs]

    def _admit(self, tx: Transaction, stored: Registration | None) -> None:
        with self._pool_cond:
            if tx.hash in self._pool_hashes:
                return
            if len(self._pool) >= MAX_PENDING:
                raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{len(self._pool)} transactions are waiting for a block; retry shortly")
            key, role = self._pending_identity(tx, stored)
            if key is None:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"sender {tx.sender} is not a registered node")
            try:
                check_sender_role(tx, role, self.node_id)
            except InvalidTransaction as exc:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
            if not tx.signed_by(key):
                raise refuse(grpc.StatusCode.UNAUTHENTICATED, f"transaction {tx.hash[:16]}… has a bad signature")
            if tx.kind == TxKind.REGISTER and tx.payload["role"] == "EN":  # where it lives now
                self.members.add(Member(tx.sender, "EN", tx.payload["address"], key,
                                        supernode=tx.payload.get("supernode", "")))
            self._pool.append(tx)
            self._pool_hashes.add(tx.hash)
            self._pool_cond.notify_all()

    def _pending_identity(self, tx: Transaction, stored: Registration | None) -> tuple[bytes | None, str | None]:
        """The sender's key and role: from the chain, or from a registration still in the pool."""
        key, role = (stored.public_key, stored.role) if stored else (None, None)
        if tx.kind == TxKind.REGISTER:
            if role is not None and role != tx.payload["role"]:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"node {tx.sender} is registered as {role}")
            return bytes.fromhex(tx.payload["public_key"]), tx.payload["role"]
        for pending in self._pool:
            if pending.kind == TxKind.REGISTER and pending.sender == tx.sender:
                return bytes.fromhex(pending.payload["public_key"]), pending.payload["role"]
        return key, role

    def pending_count(self) -> int:
        with self._pool_cond:
            return len(self._pool)

    def _block_loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            with self._pool_cond:
                self._pool_cond.wait_for(lambda: self._pool or self._stop.is_set())
                deadline = time.monotonic() + max(self.settings.block_interval, backoff)
                while (len(self._pool) < self.settings.block_max_txs and not self._stop.is_set()
                       and (left := deadline - time.monotonic()) > 0):
                    self._pool_cond.wait(left)
            if self._stop.is_set():
                return
            try:
                self._seal_pending()
                backoff = 0.0
            except StoreError as exc:  # the database is down: keep the pool, try again later
                backoff = min(max(1.0, 2 * backoff), 30.0)
                log.error("could not seal a block (%s); %d transactions kept, retrying in %.0f s",
                          exc, self.pending_count(), backoff)
            except Exception:  # noqa: BLE001 - the block loop must survive anything
                log.exception("sealing a block failed")
                self._stop.wait(1.0)

    def _next_batch(self) -> list[Transaction]:
        """Pending transactions for one block: at most block_max_txs, and few enough bytes that the
        block fits one gRPC message when pushed to the other supernodes."""
        batch, size = [], 0
        with self._pool_cond:
            for tx in self._pool[: self.settings.block_max_txs]:
                size += len(canonical_bytes(tx.payload)) + 512
                if batch and size > MAX_BLOCK_BYTES:
                    break
                batch.append(tx)
        return batch

    def _seal_pending(self) -> None:
        batch = self._next_batch()
        if not batch:
            return
        try:
            block = self.ledger.propose(batch, self.identity)
        except InvalidBlock as exc:  # one bad transaction: never lose the others to it
            log.error("sealing %d transactions failed (%s); sealing them one by one", len(batch), exc)
            block = None
            for tx in batch:
                try:
                    self.ledger.propose([tx], self.identity)
                except InvalidBlock as one:
                    log.error("dropped transaction %s (%s): %s", tx.hash[:16], tx.kind, one)
        with self._pool_cond:
            sealed = {t.hash for t in batch}
            self._pool = [t for t in self._pool if t.hash not in sealed]
            self._pool_hashes -= sealed
        head = self.ledger.head()
        if block is not None:
            log.debug("sealed block %d with %d transactions", block.height, len(block.transactions))
        if head is not None:
            self._push_head(head.height)

    def _push_head(self, height: int) -> None:
        """Push the new block to every alive supernode (in parallel; laggards catch up themselves)."""
        block = self.ledger.store.block(height)
        if block is None:
            return
        message = block_to_pb(block)
        for sn in self.members.of_role("SN", alive_only=True):
            if sn.node_id != self.node_id:
                self._pushers.submit(self._push_to, sn, message)

    def _push_to(self, sn: Member, message: pb.Block) -> None:
        try:
            reply = rpc_pb.LedgerStub(self.channels.get(sn.address)).PushBlock(message, timeout=10)
            self._peer_heads[sn.node_id] = max(self._peer_heads.get(sn.node_id, -1), reply.head.height)
        except grpc.RpcError as exc:
            log.info("push of block %d to %s failed: %s", message.height, sn.address, exc.code().name)

    def final_height(self) -> int:
        """The highest block a majority of the alive supernodes (this one included) hold."""
        head = self.ledger.head()
        own = head.height if head else -1
        if not self.is_entry:
            return own
        peers = [min(own, self._peer_heads.get(m.node_id, -1)) for m in self.members.of_role("SN", alive_only=True)
                 if m.node_id != self.node_id]  # a peer cannot hold more than we made
        heights = sorted([own, *peers], reverse=True)
        return heights[len(heights) // 2]

    # --- replication (other supernodes) ---------------------------------------------------------------
    def receive_block(self, block: Block) -> tuple[bool, Head | None]:
        if self.is_entry:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "the entry node proposes blocks; it does not take pushed ones")
        head = self.ledger.head()
        if head is None or block.height > head.height + 1:
            self.sync()
        return self.ledger.add_block(block), self.ledger.head()  # False: already held

    def sync(self) -> int:
        """Fetch and validate every block the entry node has beyond our head. Returns blocks added."""
        added = 0
        with self._sync_lock:
            stub = self._entry_stub(rpc_pb.LedgerStub)
            while True:
                head = self.ledger.head()
                start = 0 if head is None else head.height + 1
                got = 0
                for message in stub.GetBlocks(pb.GetBlocksRequest(from_height=start, limit=SYNC_BATCH), timeout=60):
                    if self.ledger.add_block(block_from_pb(message)):
                        added += 1
                    got += 1
                after = self.ledger.head()
                if got < SYNC_BATCH or after is None or after.height < start:  # done, or no progress
                    return added

    def _report_loop(self) -> None:
        """Register with the entry node, catch up, then report every heartbeat interval."""
        registered = False
        while not self._stop.is_set():
            try:
                if not registered:
                    reply = self._entry_stub(rpc_pb.MembershipStub).Register(pb.RegisterRequest(
                        registration=tx_to_pb(register_transaction(self.identity, "SN", self.address))), timeout=10)
                    self.entry_id = reply.entry_id
                    self.admin_token_hash = reply.admin_token_sha256
                    self.supernode_view = reply.supernodes
                    registered = True
                    log.info("registered with entry node %s at %s", reply.entry_id, self.entry_address)
                    self.sync()
                head = self.ledger.head()
                reply = self._entry_stub(rpc_pb.MembershipStub).Heartbeat(
                    signed_heartbeat(self.identity, self.my_edge_nodes(), head.height if head else -1), timeout=5)
                if not reply.known:
                    registered = False
                    self._stop.wait(self.settings.heartbeat_interval)
                    continue
                self.supernode_view = reply.supernodes
                if reply.head.height > (head.height if head else -1):
                    self.sync()
            except grpc.RpcError as exc:
                log.warning("entry node %s: %s %s", self.entry_address, exc.code().name, exc.details())
            except Exception:  # noqa: BLE001 - keep reporting whatever happened
                log.exception("reporting to the entry node failed")
            self._stop.wait(self.settings.heartbeat_interval)
