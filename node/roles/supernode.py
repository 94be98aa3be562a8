"""A supernode: serves edge nodes, keeps a copy of the chain, and (the entry node) runs it.

Every supernode registers the edge nodes that come to it, takes their heartbeats, stores every
block after validating it, and reports to the entry node once per heartbeat (its edge nodes and
its head). The entry supernode (``-z``) also creates the genesis block, admits transactions into
its pool, seals them into blocks (every ``block_max_txs`` transactions or ``block_interval``
seconds), pushes each block to the other supernodes, tracks which height a majority holds
(final), and sends each joining edge node to the least-loaded alive supernode.

The jobs are split: membership (registrations, heartbeats, liveness, the choice of supernode)
is this class; the entry node's transaction pool and blocks are ``BlockProducer``; another
supernode's copy of the chain is ``Replica``; a round's part is ``RoundRunner`` and the entry
node's jobs ``Coordinator``. The gRPC servicers in ``node.roles.services`` are thin: they decode,
call these methods, encode.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.rules import Block, Head, Transaction, now_ms
from node.chain.identity import Identity, verify_signature
from node.chain.ledger import Ledger
from node.roles.membership import Member, Members, check_registration, edge_member, heartbeat_fields, register_transaction, signed_heartbeat
from node.net.channels import Channels
from node.net.errors import ServiceError, refuse
from node.net.guard import caller, require_caller
from node.net.tls import Credentials
from node.roles.block_producer import BlockProducer
from node.roles.enrolment import Admission, Enroller
from node.roles.replica import Replica
from node.roles.rounds import RoundRunner
from node.roles.settings import NodeSettings
from node.net.model_store import ModelCache
from node.net.streams import ReceivedModel, receive
from node.net.wire import head_to_pb, tx_to_pb

log = logging.getLogger(__name__)

HEARTBEAT_WINDOW_MS = 5_000  # a heartbeat (or upload header) must be this fresh: clocks must agree that well


class Supernode:
    role = "SN"

    def __init__(self, identity: Identity, address: str, ledger: Ledger, entry_address: str,
                 is_entry: bool, settings: NodeSettings, model_dir: Path | None = None,
                 job_defaults: dict[str, Any] | None = None, *, credentials: Credentials | None = None,
                 entry_id: str | None = None, admission: Admission | None = None, jobs_dir: Path | None = None,
                 genesis_hash: str = "") -> None:
        """``model_dir``: where received models are kept once out of memory (else they are dropped);
        ``job_defaults``: the configuration the entry node's jobs start from; ``credentials``: this
        node's TLS certificate (None: plaintext, ``--insecure``); ``entry_id``: the entry node's id
        as pinned at enrolment; ``admission``: the entry node's CA and enrolment tokens; ``jobs_dir``: where
        the entry node keeps its jobs' checkpoints (a restart resumes the job in progress);
        ``genesis_hash``: the genesis block pinned at enrolment, which ``verify`` checks."""
        self.identity = identity
        self.node_id = identity.node_id
        self.address = address
        self.ledger = ledger
        self.entry_address = entry_address
        self.is_entry = is_entry
        self.settings = settings
        self.data_dir = str((job_defaults or {}).get("data_dir", "data"))  # datasets here (an audit's validation set)
        self.model_path = str((job_defaults or {}).get("model_path", ""))  # model=lora: the base model here
        self.entry_id: str | None = identity.node_id if is_entry else entry_id
        self.genesis_hash = genesis_hash
        self.members = Members(settings.dead_after, identity.node_id)
        self.models = ModelCache(2 * settings.max_model_bytes, model_dir, settings.model_store_bytes)
        self.supernode_view = pb.NodeList()  # the entry node's list, as last broadcast to us
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.admin_token_hash = ""  # the entry node sets it from its token; others learn it at registration
        self.channels = Channels(credentials)  # to peers, reused
        # the entry node seals blocks; the others keep a replica of its chain
        self.producer = BlockProducer(identity, ledger, self.members, settings, self.channels) if is_entry else None
        self.replica = None if is_entry else Replica(ledger, self.channels, entry_address, entry_id or "")
        self.enroller = Enroller(self, admission) if is_entry and admission is not None else None
        self.rounds = RoundRunner(self)
        # the entry node runs jobs (imported here: the coordinator needs this class to exist)
        from node.roles.coordinator import Coordinator

        self.coordinator: Coordinator | None = Coordinator(self, job_defaults or {}, jobs_dir) if is_entry else None
        if self.producer is not None and self.coordinator is not None:
            self.producer.check_claims = self.coordinator.check_claims

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.is_entry:
            genesis = self.ledger.create_genesis(self.identity, self.address)
            if genesis.proposer != self.node_id:
                raise RuntimeError(
                    f"this ledger's genesis was made by entry node {genesis.proposer}, not by this node "
                    f"({self.node_id}); start the entry node with its own --home, or use a fresh --db")
            self.members.add(Member(self.node_id, "SN", self.address, self.identity.public_key))
            self.producer.start()
            self.coordinator.recover()
        else:
            self._spawn(self._report_loop, "report")

    def stop(self) -> None:
        """Stop the loops; the entry node seals what is pending into a last block first."""
        if self.coordinator is not None:
            self.coordinator.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.producer is not None:
            self.producer.stop()
        self.rounds.close()
        self.channels.close()
        self.models.close()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _entry_stub(self, kind: type) -> Any:
        return kind(self.channels.get(self.entry_address, self.entry_id or ""))

    # --- membership -----------------------------------------------------------------------------------
    def register(self, tx: Transaction) -> pb.RegisterReply:
        key = check_registration(tx)
        role, address = tx.payload["role"], tx.payload["address"]
        require_caller(tx.sender, "a registration")
        if caller().authenticated and caller().role != role:
            raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                         f"node {tx.sender} is enrolled as {caller().role}; it cannot register as {role}")
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
            self.members.add(edge_member(tx, key))
            self.rounds.delivered.forget(tx.sender)
            self.rounds.jobs_sent.forget(tx.sender)
            self._dial(address, tx.sender)
        self.submit(tx)
        log.info("registered %s %s at %s", role, tx.sender, address)
        return pb.RegisterReply(entry_id=self.entry_id or "", supernode_id=self.node_id,
                                supernodes=self.supernodes_pb(), head=head_to_pb(self.ledger.head()),
                                admin_token_sha256=self.admin_token_hash if role == "SN" else "")

    def _dial(self, address: str, node_id: str) -> None:
        """Open the channel rounds will use to a new edge node now, with a health check nobody
        waits for: its TCP, TLS and HTTP/2 handshakes happen as it joins, not in the first round
        (where a thousand of them at once are most of what makes it slower than the next)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        check = health_pb2_grpc.HealthStub(self.channels.get(address, node_id)).Check
        check.future(health_pb2.HealthCheckRequest(), timeout=30).add_done_callback(lambda _done: None)

    def heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        require_caller(req.node_id, "a heartbeat")
        member = self.members.get(req.node_id)
        if member is None:
            return pb.HeartbeatReply(known=False, supernodes=self.supernodes_pb(), head=head_to_pb(self.ledger.head()))
        if not verify_signature(member.public_key, req.signature, heartbeat_fields(req)):
            raise refuse(grpc.StatusCode.UNAUTHENTICATED, f"heartbeat for {req.node_id} has a bad signature")
        skew = now_ms() - req.timestamp
        if abs(skew) > HEARTBEAT_WINDOW_MS:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"heartbeat of {req.node_id} is {skew / 1000:+.1f} s off this node's clock (at most "
                         f"±{HEARTBEAT_WINDOW_MS / 1000:.0f} s): check both clocks (NTP)")
        if req.timestamp <= member.last_beat_ms:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"heartbeat of {req.node_id} is not in sequence (replayed, or older than the last one)")
        member.last_beat_ms = req.timestamp
        if member.role == "EN" and member.supernode != self.node_id:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                         f"edge node {req.node_id} is registered with supernode {member.supernode}; heartbeat there")
        if member.role == "SN":
            if not self.is_entry:
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "supernodes report to the entry node")
            self.members.touch(req.node_id, req.edge_nodes, req.head_height)
            self.producer.peer_holds(req.node_id, req.head_height)
            return pb.HeartbeatReply(known=True, supernodes=self.supernodes_pb(), head=head_to_pb(self.ledger.head()))
        self.members.touch(req.node_id)
        return pb.HeartbeatReply(known=True)  # an edge node needs no list and no head: no database read

    def upload_seen(self, header: pb.ModelHeader) -> None:
        """A signed, fresh upload from one of this supernode's edge nodes proves it alive as a
        heartbeat does; its edge node skips the heartbeat it would have sent meanwhile."""
        if abs(now_ms() - header.timestamp) <= HEARTBEAT_WINDOW_MS:
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

    # --- models held elsewhere -------------------------------------------------------------------------
    def download(self, address: str, model_hash: str, max_bytes: int | None = None, node_id: str = "") -> ReceivedModel:
        """The model ``model_hash`` from the node at ``address`` (``node_id`` when known), checked
        against its hash (at most ``max_bytes``, by default ``max_model_mb``: a partial sum is
        larger than its model)."""
        stub = rpc_pb.TrainingStub(self.channels.get(address, node_id))
        model = receive(stub.DownloadModel(pb.ModelRequest(model_hash=model_hash), timeout=60),
                        max_bytes or self.settings.max_model_bytes)
        if model.header.model_hash != model_hash:
            raise refuse(grpc.StatusCode.DATA_LOSS, f"{address} sent another model than {model_hash[:16]}…")
        return model

    def fetch_model(self, model_hash: str, address: str, max_bytes: int | None = None, node_id: str = "") -> ReceivedModel:
        """A model from this node's store, else downloaded from ``address`` (checked either way)."""
        local = self.models.get(model_hash)
        return local if local is not None else self.download(address, model_hash, max_bytes, node_id)

    def find_model(self, model_hash: str, holder: str) -> bytes | None:
        """A recorded model's bytes (checked against its hash): from this node's store, else from
        ``holder``, the supernode that received it; None when neither has it."""
        known = self.members.get(holder)
        address = known.address if known is not None else next(
            (n.address for n in self.supernode_view.nodes if n.node_id == holder), None)
        if address is None:
            local = self.models.get(model_hash)
            return None if local is None else local.data
        try:
            return self.fetch_model(model_hash, address, node_id=holder).data
        except (grpc.RpcError, ServiceError):  # unreachable, or it sent something else: not found here
            return None

    # --- transactions and blocks --------------------------------------------------------------
    def submit(self, tx: Transaction) -> str:
        """Admit ``tx`` into the entry node's pool (forwarding it there from other supernodes)."""
        return self.submit_all([tx])[0]

    def submit_all(self, txs: list[Transaction], together: bool = False) -> list[str]:
        """Admit ``txs`` into the entry node's pool, in order (other supernodes forward them);
        ``together`` (the entry node's own round records): sealed in one block, or not at all."""
        if self.producer is not None:
            return self.producer.submit_all(txs, together)
        assert not together, "only the entry node seals transactions together"
        stub = self._entry_stub(rpc_pb.LedgerStub)
        return [stub.SubmitTransaction(tx_to_pb(tx), timeout=10).tx_hash for tx in txs]

    def pending_count(self) -> int:
        return self.producer.pending_count() if self.producer is not None else 0

    def final_height(self) -> int:
        """The highest block a majority of the alive supernodes hold (as far as this node knows)."""
        if self.producer is not None:
            return self.producer.final_height()
        head = self.ledger.head()
        return head.height if head else -1

    def receive_block(self, block: Block) -> tuple[bool, Head | None]:
        if self.replica is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "the entry node proposes blocks; it does not take pushed ones")
        return self.replica.receive_block(block)

    def sync(self) -> int:
        assert self.replica is not None
        return self.replica.sync()

    # --- reporting to the entry node (other supernodes) ----------------------------------------------
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


