"""The gRPC face of a supernode: decode the request, call :class:`Supernode`, encode the reply.

Who may call what is :func:`supernode_rules`, applied by the server's interceptor
(``node.net.guard``); payload signatures are checked by the node against registered keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.audit import verify_chain
from node.chain.rules import Transaction, TxKind
from node.roles.reports import privacy_report, score_report
from node.roles.scoring import scorer_utility
from node.net.admin import require_admin
from node.net.errors import refuse
from node.net.guard import Rule, anyone, caller, certified, method_path, refused, require_caller
from node.net.tls import CONSOLE_ROLE, Peer
from node.roles.coordinator import Coordinator
from node.roles.enrolment import Enroller
from node.roles.recompute import recompute_chain
from node.roles.supernode import Supernode
from node.net.streams import ReceivedModel, check_header_signature, receive
from node.net.wire import block_from_pb, block_to_pb, head_to_pb, tx_from_pb

MAX_GET_BLOCKS = 500


def _enroller(node: Supernode) -> Enroller:
    """The entry node's enroller; elsewhere a refusal naming the entry node."""
    if node.enroller is None:
        raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                     f"enrolment is the entry node's: enrol at, and connect the console to, {node.entry_address}")
    return node.enroller


class EnrolmentService(rpc_pb.EnrolmentServicer):
    """Admission (the entry node): the network's CA certificate, and a certificate for a token."""

    def __init__(self, node: Supernode) -> None:
        self.node = node

    def GetNetwork(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.NetworkInfo:
        return _enroller(self.node).network()

    def Enrol(self, request: pb.EnrolRequest, context: grpc.ServicerContext) -> pb.EnrolReply:
        return _enroller(self.node).enrol(request)


class MembershipService(rpc_pb.MembershipServicer):
    def __init__(self, node: Supernode) -> None:
        self.node = node

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterReply:
        if not request.HasField("registration"):
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "RegisterRequest needs a signed REGISTER transaction")
        return self.node.register(tx_from_pb(request.registration))

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        return self.node.heartbeat(request)

    def ListNodes(self, request: pb.ListNodesRequest, context: grpc.ServicerContext) -> pb.NodeList:
        return self.node.list_nodes(request.role)

    def FindSupernode(self, request: pb.FindSupernodeRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        return self.node.find_supernode(request)


ROUND_RECORDS = (TxKind.MODEL_UPDATE, TxKind.AGGREGATE, TxKind.EXCLUDED, TxKind.SCORE)


class LedgerService(rpc_pb.LedgerServicer):
    def __init__(self, node: Supernode) -> None:
        self.node = node

    def SubmitTransaction(self, request: pb.Transaction, context: grpc.ServicerContext) -> pb.SubmitReply:
        tx = tx_from_pb(request)
        if tx.kind in ROUND_RECORDS:  # only inside their round's unit, from the entry node's own hands
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"{tx.kind} transactions reach the chain with their "
                         f"round (the entry node seals them with its GLOBAL_MODEL), not on their own")
        return pb.SubmitReply(tx_hash=self.node.submit(tx))

    def PushBlock(self, request: pb.Block, context: grpc.ServicerContext) -> pb.PushReply:
        stored, head = self.node.receive_block(block_from_pb(request))
        return pb.PushReply(head=head_to_pb(head), stored=stored)

    def GetBlocks(self, request: pb.GetBlocksRequest, context: grpc.ServicerContext):
        if request.from_height < 0:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "from_height must be >= 0")
        limit = request.limit if 0 < request.limit <= MAX_GET_BLOCKS else MAX_GET_BLOCKS
        for block in self.node.ledger.store.blocks_from(request.from_height, limit):
            yield block_to_pb(block)

    def GetHead(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.Head:
        return head_to_pb(self.node.ledger.head())


class TrainingService(rpc_pb.TrainingServicer):
    """Model streams: edge nodes upload updates here; the entry node distributes models here."""

    def __init__(self, node: Supernode) -> None:
        self.node = node

    def UploadUpdate(self, request_iterator, context: grpc.ServicerContext) -> pb.TransferReceipt:
        uploads, admitted = self.node.rounds.uploads, []

        def authorise(header: pb.ModelHeader) -> None:
            require_caller(header.sender, "an upload")
            member = self.node.members.get(header.sender)
            if member is None or member.role != "EN" or member.supernode != self.node.node_id:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                             f"node {header.sender} is not an edge node of this supernode; register here first")
            check_header_signature(header, member.public_key)
            uploads.admit(header.sender, header.job_id, header.round)  # its one update, for a round in progress
            admitted.append(header)
            self.node.upload_seen(header)

        try:
            return self._accept(receive(request_iterator, self.node.settings.max_model_bytes, authorise))
        except BaseException:
            for header in admitted:  # it never arrived: the edge node may send it again in the round
                uploads.release(header.sender, header.job_id, header.round)
            raise

    def SplitTrain(self, request_iterator, context: grpc.ServicerContext) -> Iterator[pb.SplitMessage]:
        return self.node.rounds.split.serve(request_iterator)

    def DistributeModel(self, request_iterator, context: grpc.ServicerContext) -> pb.TransferReceipt:
        def authorise(header: pb.ModelHeader) -> None:
            entry = self.node.entry_id
            if self.node.is_entry or header.sender != entry:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, "only the entry node distributes models to supernodes")
            key = self.node.ledger.store.public_key(entry)
            if key is None:
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "this supernode has not synced the entry node's key yet")
            check_header_signature(header, key)

        return self._accept(receive(request_iterator, self.node.settings.max_model_bytes, authorise))

    def _accept(self, model: ReceivedModel) -> pb.TransferReceipt:
        model.layout()  # a safetensors layout that fits the bytes, or INVALID_ARGUMENT; decoded when used
                        # (a round checks keys, shapes and values against its global model)
        self.node.models.put(model)
        return pb.TransferReceipt(model_hash=model.header.model_hash, size=model.header.size)

    def RunRound(self, request: pb.RoundRequest, context: grpc.ServicerContext) -> pb.SupernodeResult:
        return self.node.rounds.run(request)

    def DownloadModel(self, request: pb.ModelRequest, context: grpc.ServicerContext):
        model = self.node.models.get(request.model_hash)
        if model is None:
            raise refuse(grpc.StatusCode.NOT_FOUND, f"this node holds no model with hash {request.model_hash[:16]}…")
        who = caller()
        if who.role == "EN" and (model.header.sender not in (who.node_id, self.node.entry_id)
                                 or request.model_hash in self.node.rounds.partials):
            # edge nodes see the global models and their own updates, never another node's update or a
            # partial sum (the entry node's own partials carry its signature too)
            raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                         "edge nodes may download global models and their own updates only")
        yield from model.stream()


class ConsoleService(rpc_pb.ConsoleServicer):
    """Operator commands. Every call needs the admin token; job commands need the entry node."""

    def __init__(self, node: Supernode) -> None:
        self.node = node

    def _coordinator(self) -> Coordinator:
        if self.node.coordinator is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                         f"jobs run on the entry node; connect the console to {self.node.entry_address}")
        return self.node.coordinator

    def Status(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.StatusReply:
        node = self.node
        return pb.StatusReply(
            node_id=node.node_id, role=pb.SN, entry=node.is_entry, address=node.address,
            head=head_to_pb(node.ledger.head()), final_height=node.final_height(),
            pending_transactions=node.pending_count(), supernodes=node.supernodes_pb(),
            edge_nodes=node.list_nodes(pb.EN))

    def ListNodes(self, request: pb.ListNodesRequest, context: grpc.ServicerContext) -> pb.NodeList:
        return self.node.list_nodes(request.role)

    def GetBlock(self, request: pb.BlockRequest, context: grpc.ServicerContext) -> pb.Block:
        height = request.height
        if height < 0:
            head = self.node.ledger.head()
            height = head.height if head else 0
        block = self.node.ledger.store.block(height)
        if block is None:
            raise refuse(grpc.StatusCode.NOT_FOUND, f"no block at height {request.height}")
        return block_to_pb(block)

    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.VerifyReply:
        store = self.node.ledger.store
        report = verify_chain(store, genesis_hash=self.node.genesis_hash)
        reply = pb.VerifyReply(ok=report.ok, blocks=report.blocks, transactions=report.transactions,
                               head=head_to_pb(report.head),
                               bad_height=-1 if report.bad_height is None else report.bad_height, reason=report.reason)
        if request.recompute:
            recomputed = recompute_chain((tx for _, tx in store.transactions()), self.node.find_model,
                                         lambda job: scorer_utility(job, self.node.data_dir), self.node.model_path)
            reply.recompute.CopyFrom(pb.RecomputeReport(**dataclasses.asdict(recomputed)))
        return reply

    def StartJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.JobStatus:
        return self._coordinator().start_job(dict(request.settings))

    def Resume(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.JobStatus:
        return self._coordinator().resume()

    def Pause(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.JobStatus:
        return self._coordinator().pause()

    def GetJob(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.JobStatus:
        return self._coordinator().status()

    def Evaluate(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.EvalReport:
        return self._coordinator().evaluate()

    def CreateEnrolment(self, request: pb.EnrolmentRequest, context: grpc.ServicerContext) -> pb.EnrolmentToken:
        return _enroller(self.node).create_token(request.role, request.uses, request.hours, request.max_samples)

    def ListEnrolments(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.EnrolmentList:
        tokens = [] if self.node.enroller is None else [
            pb.EnrolmentToken(token_id=t.token_id, role=t.role, uses=t.uses, expires_ms=t.expires_ms,
                              max_samples=t.max_samples)
            for t in self.node.enroller.tokens.list()]
        nodes = [pb.EnrolledNode(node_id=r["node_id"], role=r["role"], token_id=r["token"],
                                 enrolled_height=r["enrolled_height"], revoked=r["revoked_height"] is not None,
                                 reason=r["reason"] or "")
                 for r in self.node.ledger.store.enrolment_records()]
        return pb.EnrolmentList(tokens=tokens, nodes=nodes)

    def Privacy(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.PrivacyReport:
        return privacy_report(self.node.ledger.store)

    def Scores(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ScoreReport:
        return score_report(self.node.ledger.store)

    def Revoke(self, request: pb.RevokeRequest, context: grpc.ServicerContext) -> pb.SubmitReply:
        return pb.SubmitReply(tx_hash=_enroller(self.node).revoke(request.id, request.reason))

    def RecordSave(self, request: pb.SaveRequest, context: grpc.ServicerContext) -> pb.SubmitReply:
        coordinator = self._coordinator()
        if self.node.models.get(request.model_hash) is None:
            raise refuse(grpc.StatusCode.NOT_FOUND, f"this node holds no model {request.model_hash[:16]}…")
        tx = Transaction.create(TxKind.SAVE, {"job_id": request.job_id or coordinator.status().job_id or "none",
                                              "hash": request.model_hash, "path": request.path[:1024]},
                                self.node.identity)
        return pb.SubmitReply(tx_hash=self.node.submit(tx))


def supernode_rules(node: Supernode) -> dict[str, Rule]:
    """Who may call each RPC of a supernode (the README's table "Who may call what")."""

    def operator(context: grpc.ServicerContext, peer: Peer) -> None:
        require_admin(context, node.admin_token_hash)

    def entry_node(context: grpc.ServicerContext, peer: Peer) -> None:
        if node.is_entry or not peer.is_node(node.entry_id or ""):
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"only the entry node sends this to a supernode, not {peer}")

    def operator_if_console(context: grpc.ServicerContext, peer: Peer) -> None:
        if peer.role == CONSOLE_ROLE:
            require_admin(context, node.admin_token_hash)

    enrolment = (anyone("anyone: the entry node admits holders of an enrolment token (the token pins its CA)")
                 if node.is_entry else refused(grpc.StatusCode.FAILED_PRECONDITION,
                                               f"nodes enrol at the entry node ({node.entry_address}), not here"))
    nodes = ("SN", "EN")
    readers = (*nodes, CONSOLE_ROLE)  # the chain and the membership list: any enrolled node, and the operator
    rules = {
        method_path("Enrolment", "GetNetwork"): enrolment,
        method_path("Enrolment", "Enrol"): enrolment,
        method_path("Membership", "Register"): certified("an enrolled node, registering itself with its own certificate", *nodes),
        method_path("Membership", "Heartbeat"): certified("a registered node, for itself, fresh and in sequence", *nodes),
        method_path("Membership", "ListNodes"): certified("enrolled nodes and the operator", *readers),
        method_path("Membership", "FindSupernode"): certified("enrolled edge nodes", "EN"),
        method_path("Ledger", "SubmitTransaction"): certified("supernodes, forwarding signed transactions", "SN"),
        method_path("Ledger", "PushBlock"): certified("the entry node", "SN", check=entry_node),
        method_path("Ledger", "GetBlocks"): certified("enrolled nodes and the operator", *readers),
        method_path("Ledger", "GetHead"): certified("enrolled nodes and the operator", *readers),
        method_path("Training", "UploadUpdate"): certified("this supernode's own edge nodes, for the round in progress", "EN"),
        method_path("Training", "DistributeModel"): certified("the entry node", "SN", check=entry_node),
        method_path("Training", "DownloadModel"): certified("enrolled nodes (edge nodes: global models and their own "
                                                            "updates), and the operator (console certificate and admin token)",
                                                            *nodes, CONSOLE_ROLE, check=operator_if_console),
        method_path("Training", "RunRound"): certified("the entry node", "SN", check=entry_node),
        method_path("Training", "SplitTrain"): certified("this supernode's own edge nodes, asked to train the split "
                                                         "round in progress", "EN"),
        method_path("Training", "TrainRound"): refused(grpc.StatusCode.FAILED_PRECONDITION,
                                                       "supernodes do not train; edge nodes do"),
    }
    admin = certified("the operator: the console's certificate and the admin token", CONSOLE_ROLE, check=operator)
    for method in pb.DESCRIPTOR.services_by_name["Console"].methods:
        rules[method_path("Console", method.name)] = admin
    return rules


def supernode_servicers(node: Supernode) -> list[tuple[Callable[[Any, Any], None], Any]]:
    return [(rpc_pb.add_EnrolmentServicer_to_server, EnrolmentService(node)),
            (rpc_pb.add_MembershipServicer_to_server, MembershipService(node)),
            (rpc_pb.add_LedgerServicer_to_server, LedgerService(node)),
            (rpc_pb.add_TrainingServicer_to_server, TrainingService(node)),
            (rpc_pb.add_ConsoleServicer_to_server, ConsoleService(node))]
