"""An edge node: joins the network through the entry node and stays attached to a supernode.

It asks the entry node for the least-loaded alive supernode, registers there with a signed
REGISTER transaction, and heartbeats to it. An upload to the supernode counts as a heartbeat on
both sides (the supernode marks the node alive, the node learns its supernode answers), so during
a round a node skips the heartbeat that would tell nothing new: at most 2 heartbeat intervals
pass between two signs of life, well within ``dead_after`` (3 intervals by default). When two
heartbeats in a row fail, it asks the entry node again (excluding the supernode that stopped
answering) and re-registers elsewhere: with the default one-second heartbeat that takes about
three seconds.

An edge node serves only what a supernode needs from it (receiving models); it refuses console
commands and membership or ledger calls with a status that says where to go instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.rules import genesis_proposer
from node.chain.identity import Identity, node_id_for
from node.net.channels import ADDRESSED_NODE, Channels
from node.net.errors import refuse
from node.net.guard import Rule, certified, method_path, refused, require_caller
from node.net.tls import Credentials, Peer
from node.roles.membership import register_transaction, signed_heartbeat
from node.roles.settings import NodeSettings
from node.net.model_store import ModelCache
from node.net.streams import ReceivedModel, check_header_signature, receive
from node.net.wire import block_from_pb, tx_to_pb

if TYPE_CHECKING:
    from node.roles.trainer import EdgeTrainer

log = logging.getLogger(__name__)

FAILURES_BEFORE_REHOMING = 2  # missed heartbeats, spanning dead_after seconds, before an edge node moves


class EdgeNode:
    role = "EN"

    def __init__(self, identity: Identity, address: str, entry_address: str, settings: NodeSettings, *,
                 credentials: Credentials | None = None, entry_id: str | None = None,
                 genesis_hash: str = "", datasets: list[str] | None = None, models: ModelCache | None = None) -> None:
        """``credentials``: this node's TLS certificate (None: plaintext, ``--insecure``);
        ``entry_id`` and ``genesis_hash``: the network as pinned at enrolment; ``datasets``: what
        its data_dir holds, said in its registration (None: not said); ``models``: the model
        cache, shared by the edge nodes of one process (models are named by their hash)."""
        self.identity = identity
        self.node_id = identity.node_id
        self.address = address
        self.entry_address = entry_address
        self.settings = settings
        self.supernode: pb.NodeInfo | None = None
        self.entry_id: str | None = entry_id  # pinned at enrolment; its key comes from the genesis block
        self.entry_key: bytes | None = None
        self.genesis_hash = genesis_hash
        self.models = models if models is not None else ModelCache(2 * settings.max_model_bytes)
        self.channels = Channels(credentials)  # to the entry node and its supernode, reused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_upload = -float("inf")  # time.monotonic() of the last upload its supernode took
        self.datasets = datasets
        self._delivered: ReceivedModel | None = None  # the last model its supernode sent it

    def keep_model(self, model: ReceivedModel) -> None:
        """Keep a model its supernode sent it: in the cache (once per hash, shared by the edge
        nodes of one process) and as this node's own latest, which another node's deliveries
        cannot evict from under it."""
        held = self.models.get(model.header.model_hash)
        if held is None:
            self.models.put(model)
            held = model
        self._delivered = held

    def model(self, model_hash: str) -> ReceivedModel | None:
        """A model this node was sent, by its hash."""
        delivered = self._delivered
        if delivered is not None and delivered.header.model_hash == model_hash:
            return delivered
        return self.models.get(model_hash)

    def upload_done(self) -> None:
        """The supernode took an upload: it now knows this node is alive (see the module doc)."""
        self._last_upload = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edge", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop heartbeating; ``wait``: until its thread has ended (a process with many edge nodes
        tells them all first, then waits)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=10)

    def join(self, exclude: set[str]) -> pb.NodeInfo:
        """Ask the entry node for a supernode (none of ``exclude``) and register there; raises
        ``grpc.RpcError``. A supernode that does not take the registration joins ``exclude``, so
        one that heartbeats but cannot be reached does not keep this node out of the network; one
        that answers too late is not excluded (it may have registered this node: asked again, the
        entry node is likely to name it again, which keeps the registrations consistent)."""
        entry = self.channels.get(self.entry_address, self.entry_id or "")
        if self.entry_key is None:
            self.entry_id, self.entry_key = _entry_identity(entry, self.entry_id, self.genesis_hash)
        try:
            chosen = rpc_pb.MembershipStub(entry).FindSupernode(
                pb.FindSupernodeRequest(node_id=self.node_id, exclude=sorted(exclude)), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                exclude.clear()  # nothing else is alive: the excluded supernodes may be back
            raise
        if node_id_for(chosen.public_key) != chosen.node_id:
            raise RuntimeError(f"the entry node named supernode {chosen.node_id} with a key that is not its own")
        tx = register_transaction(self.identity, "EN", self.address, supernode=chosen.node_id, datasets=self.datasets)
        try:
            rpc_pb.MembershipStub(self.channels.get(chosen.address, chosen.node_id)).Register(
                pb.RegisterRequest(registration=tx_to_pb(tx)), timeout=15)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # (a slow one may have taken it: ask again)
                exclude.add(chosen.node_id)
            raise
        log.info("registered with supernode %s at %s", chosen.node_id, chosen.address)
        return chosen

    def _run(self) -> None:
        failures, exclude, answered = 0, set(), time.monotonic()
        while not self._stop.is_set():
            try:
                if self.supernode is None:
                    self.supernode = self.join(exclude)
                    exclude.clear()
                    failures, answered = 0, time.monotonic()
                if time.monotonic() - self._last_upload < self.settings.heartbeat_interval:
                    failures, answered = 0, self._last_upload  # the upload said it already
                    self._stop.wait(self.settings.heartbeat_interval)
                    continue
                reply = rpc_pb.MembershipStub(self.channels.get(self.supernode.address, self.supernode.node_id)).Heartbeat(
                    signed_heartbeat(self.identity), timeout=max(1.0, self.settings.heartbeat_interval))
                failures, answered = 0, time.monotonic()
                if not reply.known:
                    log.info("supernode %s no longer knows this node; registering again", self.supernode.node_id)
                    self.supernode = None
                    continue
            except grpc.RpcError as exc:
                failures += 1
                where = self.supernode.address if self.supernode else self.entry_address
                log.warning("%s: %s %s", where, exc.code().name, exc.details())
                silent = time.monotonic() - answered  # (a busy supernode answers late, not never: wait as long
                if self.supernode is not None and (   # as the network waits before it calls a node dead)
                        (failures >= FAILURES_BEFORE_REHOMING and silent >= self.settings.dead_after)
                        or exc.code() == grpc.StatusCode.FAILED_PRECONDITION):
                    log.warning("supernode %s stopped answering; asking the entry node for another",
                                self.supernode.node_id)
                    exclude.add(self.supernode.node_id)
                    self.supernode = None
                    failures = 0
                    continue
            except Exception:  # noqa: BLE001 - keep trying whatever happened
                log.exception("edge node loop failed")
            self._stop.wait(self.settings.heartbeat_interval)
        self.channels.close()


def _entry_identity(ch: grpc.Channel, entry_id: str | None, genesis_hash: str) -> tuple[str, bytes]:
    """The entry node's id and key from its genesis block (the one pinned at enrolment): the
    trust anchor for its orders."""
    message = next(iter(rpc_pb.LedgerStub(ch).GetBlocks(pb.GetBlocksRequest(from_height=0, limit=1), timeout=5)), None)
    if message is None:
        raise RuntimeError("the entry node has no genesis block yet")
    genesis = block_from_pb(message)
    if genesis_hash and genesis.hash != genesis_hash:
        raise RuntimeError(f"the entry node's genesis block {genesis.hash[:16]}… is not the one pinned at enrolment "
                           f"({genesis_hash[:16]}…): another network")
    found_id, key = genesis_proposer(genesis)
    if entry_id and found_id != entry_id:
        raise RuntimeError(f"the genesis block names entry node {found_id}, not {entry_id} (pinned at enrolment)")
    return found_id, key


class SharedJobData:
    """``job_data`` once per job for the edge nodes of one process (``--count``): the first to ask
    loads the job's samples and partition while the others wait, then each copies out only its
    own shard; only the latest job's are kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: tuple[Any, tuple[Any, list[Any]]] | None = None

    def __call__(self, spec: Any, data_dir: str | Path, model_path: str | Path) -> tuple[Any, list[Any]]:
        key = (spec, str(data_dir), str(model_path))
        with self._lock:
            if self._kept is None or self._kept[0] != key:
                from fl.federation import job_data  # (torch: imported when a job needs it)

                self._kept = None  # (the last job's data goes before the next one's loads)
                self._kept = (key, job_data(spec, data_dir, model_path))
            return self._kept[1]


class TrainerOnDemand:
    """The edge node's trainer, built when first needed: an idle edge node holds no learning
    runtime (torch), about 55 MiB instead of 250. The first model its supernode sends it warms the
    trainer up in the background, before the round that needs it (a process of many edge nodes
    warms one up as it starts: see ``EdgeHost.start``)."""

    def __init__(self, build: Callable[[], EdgeTrainer]) -> None:
        self._build = build
        self._trainer: EdgeTrainer | None = None
        self._warming = False
        self._lock = threading.Lock()

    def get(self) -> EdgeTrainer:
        with self._lock:
            if self._trainer is None:
                try:
                    self._trainer = self._build()
                except (RuntimeError, ValueError, OSError) as exc:  # a device or library this host lacks
                    raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"this edge node cannot train: {exc}") from None
            return self._trainer

    def warm_up(self) -> None:
        """Build the trainer and run ``fl.federation.warm_up`` in the background, once."""
        with self._lock:
            if self._warming:
                return
            self._warming = True
        threading.Thread(target=self._warm, name="trainer-warm-up", daemon=True).start()

    def _warm(self) -> None:
        try:
            trainer = self.get()
            from fl.federation import warm_up, warmed_up

            if not warmed_up(trainer.device):  # (torch's and this code's first-use costs, before the first round)
                with trainer.slots:
                    warm_up(trainer.device)
        except Exception as exc:  # noqa: BLE001 - said again, to the supernode, when a round needs it
            log.warning("the trainer could not start: %s", exc)

    def handle(self, request: pb.RoundRequest) -> pb.EdgeResult:
        return self.get().handle(request)


class EdgeHost:
    """The edge nodes one process runs behind one gRPC server: one, or K with ``--count K``, each
    with its own identity, certificate, supernode and trainer. A supernode names the edge node it
    calls in the call's metadata (``ADDRESSED_NODE``) and, under mutual TLS, as the certificate it
    expects; the call goes to that node or is refused."""

    def __init__(self, members: list[tuple[EdgeNode, TrainerOnDemand]]) -> None:
        if not members:
            raise ValueError("an edge host needs at least one edge node")
        self.members = {node.node_id: (node, trainer) for node, trainer in members}
        self.entry_address = members[0][0].entry_address
        self._stopping = threading.Event()

    def addressed(self, context: grpc.ServicerContext) -> tuple[EdgeNode, TrainerOnDemand]:
        """The edge node a call is for."""
        named = dict(context.invocation_metadata()).get(ADDRESSED_NODE)
        if named is None:
            if len(self.members) == 1:
                return next(iter(self.members.values()))
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"this process runs {len(self.members)} edge nodes: name the "
                         f"one the call is for (metadata {ADDRESSED_NODE})")
        found = self.members.get(named)
        if found is None:
            raise refuse(grpc.StatusCode.NOT_FOUND, f"edge node {named[:40]} is not served here")
        return found

    def nodes(self) -> list[EdgeNode]:
        return [node for node, _ in self.members.values()]

    def start(self) -> None:
        for node in self.nodes():
            node.start()
        if len(self.members) > 1:  # torch's start-up, shared by all of them, before their first round
            next(iter(self.members.values()))[1].warm_up()
            threading.Thread(target=self._report_joining, name="joining", daemon=True).start()

    def _report_joining(self, every_s: float = 2.0) -> None:
        """Progress while K edge nodes join: a line every ``every_s`` seconds, then one when all have."""
        started = said = time.monotonic()
        nodes = self.nodes()
        while (joined := sum(node.supernode is not None for node in nodes)) < len(nodes):
            if self._stopping.wait(0.2):
                return
            if time.monotonic() - said >= every_s:
                said = time.monotonic()
                log.info("joining: %d of %d edge nodes registered with a supernode (%.0f s)", joined, len(nodes),
                         said - started)
        log.info("all %d edge nodes joined in %.1f s", len(nodes), time.monotonic() - started)

    def stop(self) -> None:
        self._stopping.set()
        for node in self.nodes():
            node.stop(wait=False)
        for node in self.nodes():
            node.stop()


class EdgeTrainingService(rpc_pb.TrainingServicer):
    """Receives models and round orders for the edge node each call names, from its supernode only."""

    def __init__(self, host: EdgeHost) -> None:
        self.host = host

    def DistributeModel(self, request_iterator, context: grpc.ServicerContext) -> pb.TransferReceipt:
        node, trainer = self.host.addressed(context)

        def authorise(header: pb.ModelHeader) -> None:
            sn = node.supernode
            require_caller(header.sender, "a model")
            if sn is None or header.sender != sn.node_id:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                             f"node {header.sender} is not this edge node's supernode")
            check_header_signature(header, sn.public_key)

        model = receive(request_iterator, node.settings.max_model_bytes, authorise)
        node.keep_model(model)
        trainer.warm_up()  # a round follows: have torch and the trainer ready for it
        return pb.TransferReceipt(model_hash=model.header.model_hash, size=model.header.size)

    def TrainRound(self, request: pb.RoundRequest, context: grpc.ServicerContext) -> pb.EdgeResult:
        return self.host.addressed(context)[1].handle(request)


def edge_servicers(host: EdgeHost) -> list[tuple[Callable[[Any, Any], None], Any]]:
    return [(rpc_pb.add_TrainingServicer_to_server, EdgeTrainingService(host))]


def edge_rules(host: EdgeHost) -> dict[str, Rule]:
    """Who may call each RPC of an edge node: its supernode, for models and rounds; nobody else."""
    where = f"connect to a supernode such as the entry node at {host.entry_address}"
    rules = {method_path(service, method): refused(code, message)
             for service, code, message in (
                 ("Console", grpc.StatusCode.PERMISSION_DENIED,
                  f"this is an edge node: it does not take console commands; {where}"),
                 ("Membership", grpc.StatusCode.FAILED_PRECONDITION,
                  f"this is an edge node: it keeps no membership; {where}"),
                 ("Ledger", grpc.StatusCode.FAILED_PRECONDITION, f"this is an edge node: it keeps no ledger; {where}"))
             for method in [m.name for m in pb.DESCRIPTOR.services_by_name[service].methods]}

    def its_supernode(context: grpc.ServicerContext, peer: Peer) -> None:
        sn = host.addressed(context)[0].supernode
        if sn is None or not peer.is_node(sn.node_id):
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"only this edge node's supernode sends it work, not {peer}")
    rules.update({
        method_path("Enrolment", "GetNetwork"): refused(grpc.StatusCode.FAILED_PRECONDITION, f"nodes enrol at the entry node; {where}"),
        method_path("Enrolment", "Enrol"): refused(grpc.StatusCode.FAILED_PRECONDITION, f"nodes enrol at the entry node; {where}"),
        method_path("Training", "DistributeModel"): certified("its supernode (signed model header)", "SN", check=its_supernode),
        method_path("Training", "TrainRound"): certified("its supernode, relaying the entry node's signed JOB and ROUND orders",
                                                         "SN", check=its_supernode),
        method_path("Training", "RunRound"): refused(grpc.StatusCode.FAILED_PRECONDITION,
                                                     "edge nodes do not run supernode rounds"),
        method_path("Training", "UploadUpdate"): refused(grpc.StatusCode.FAILED_PRECONDITION,
                                                         "edge nodes do not take updates; upload to a supernode"),
        method_path("Training", "DownloadModel"): refused(grpc.StatusCode.FAILED_PRECONDITION,
                                                          "edge nodes do not serve models; ask a supernode"),
        method_path("Training", "SplitTrain"): refused(grpc.StatusCode.FAILED_PRECONDITION,
                                                       "edge nodes hold the lower layers; the upper ones are on a supernode"),
    })
    return rules
