"""A supernode's part of a round: fan out to its edge nodes, check their updates, aggregate.

For each of its edge nodes in the job, in parallel: send the global model if that node does not
have it yet, then ask it to train (or evaluate) before the round's deadline. An edge node that
fails, times out, or returns an update that does not fit (unsigned, wrong job or round, missing
bytes, wrong keys/shapes/dtypes, NaN) is left out with the reason, in an EXCLUDED transaction.
The job's strategy checks every update (``Strategy.validate``); when its rule decomposes (a
mean, FedAvgM, FedAdam) the supernode folds the updates into an exact partial sum (``ExactSum``:
the same bytes whatever the order or grouping) as they arrive, otherwise (median, trimmed mean,
Krum) it only lists them and the entry node works from the updates themselves. The edge nodes' signed MODEL_UPDATE transactions, the supernode's EXCLUDED records and its AGGREGATE
(the updates it checked, and the partial's hash when there is one) go back to the entry node,
which seals them with the round's global model in one block, or not at all.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from fl.serialize import state_to_bytes, state_views
from fl.strategy import ExactSum, InvalidUpdate, Strategy, Update
from node.chain.rules import Transaction, TxKind, fixed
from fl.names import SPLIT_STRATEGIES
from node.roles.split import SplitServer
from node.roles.jobs import (JOB_NEEDED, Job, OrderLog, Orders, check_model_update, read_orders, seconds_left,
                             signed_train_loss)
from node.net.channels import addressed_to
from node.net.errors import refuse, status_for
from node.net.model_store import Deliveries, UploadWindow
from node.net.streams import ReceivedModel, chunks, make_header
from node.net.wire import WireError, tx_from_pb, tx_to_pb

if TYPE_CHECKING:
    from node.roles.supernode import Supernode

log = logging.getLogger(__name__)

STORE_TIMEOUT_S = 30.0  # how long a round's updates may take to reach the supernode's disk
# split rounds: edge nodes training through a stream to this supernode at once (each holds one of
# the server's stream slots, 24 in all by default, for its whole training; the rest stay free for
# uploads, downloads and the chain)
SPLIT_STREAMS = 12
PARTIALS_KEPT = 100_000  # partial sums remembered as such (an edge node may not download them)


class RoundRunner:
    def __init__(self, node: Supernode) -> None:
        self.node = node
        self.delivered = Deliveries()  # which edge node holds which model
        self.jobs_sent = Deliveries()  # which edge node holds which JOB (by job id): orders go without it
        self.partials: OrderedDict[str, None] = OrderedDict()  # the partial sums this supernode made (newest last)
        # edge_parallelism: how many of its edge nodes a supernode asks at once (0: all). Edge nodes
        # that share one host's cores train faster a few at a time than all at once.
        self._pool = ThreadPoolExecutor(max_workers=node.settings.edge_parallelism or 64, thread_name_prefix="edge-round")
        # models go out in the order of the asks, as many at once as asks: the first edge nodes
        # get theirs at once instead of sharing the link (and the CPU) with every other transfer
        self._senders = ThreadPoolExecutor(max_workers=min(16, node.settings.edge_parallelism or 16),
                                           thread_name_prefix="edge-send")
        self._scratch: ExactSum | None = None  # the last round's sum, its buffers refilled by the next
        self._scratch_lock = threading.Lock()
        self._job_strategy: tuple[str, Strategy] | None = None
        self.orders = OrderLog()  # each signed order is carried out once
        self.uploads = UploadWindow()  # which edge nodes may upload, for the rounds in progress
        self.split = SplitServer(node)  # split learning: the upper layers, batch by batch
        self._split_slots = threading.BoundedSemaphore(SPLIT_STREAMS)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._senders.shutdown(wait=False, cancel_futures=True)

    def run(self, request: pb.RoundRequest) -> pb.SupernodeResult:
        node = self.node
        entry_id = node.entry_id or ""
        entry_key = node.ledger.store.public_key(entry_id)
        if entry_key is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "this supernode has not synced the entry node's key yet")
        orders = read_orders(request, entry_id, entry_key, self.orders)
        job, round_number, model_hash = orders.job, orders.round, orders.model_hash
        model = node.models.get(model_hash)
        if model is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"this supernode lacks global model {model_hash[:16]}…")
        mine = {m.node_id: m for m in node.members.of_role("EN", alive_only=True) if m.supernode == node.node_id}
        edges = [mine[n] for n in job.participants if n in mine]
        if orders.evaluate_only:
            return self._evaluate(edges, model, request)
        ids = [e.node_id for e in edges]
        # a split round's attempt: its edge nodes train through streams to this node
        attempt = orders.authority.hash if job.spec.strategy in SPLIT_STRATEGIES else None
        with self.uploads.open(job.job_id, round_number, ids), \
                self.split.attempt(attempt, job, round_number, model, ids) if attempt else nullcontext():
            return self._train(orders, edges, model, request, attempt)

    def _evaluate(self, edges: list[Any], model: ReceivedModel, request: pb.RoundRequest) -> pb.SupernodeResult:
        reply = pb.SupernodeResult(node_id=self.node.node_id)
        for edge_id, future in self._ask_all(edges, model, request):
            try:
                reply.edges.append(future.result())
            except Exception as exc:  # noqa: BLE001 - a failing edge node is left out, not fatal
                reply.excluded.append(pb.Exclusion(node_id=edge_id, reason=_reason(exc)))
        return reply

    def _ask_all(self, edges: list[Any], model: ReceivedModel, request: pb.RoundRequest,
                 split_attempt: str | None = None) -> Iterator[tuple[str, Future[pb.EdgeResult]]]:
        """Ask every edge node in ``edges``; (edge node id, its answer) as the answers arrive.
        ``split_attempt``: a split round's attempt, whose edge nodes each hold a stream to this
        node while they train: at most ``SPLIT_STREAMS`` train at once, the others wait their turn
        in the round (and may open their stream only once asked)."""
        # the model goes to the edge nodes in the order they will be asked, and the asks,
        # edge_parallelism at a time, each wait for their own edge node's copy, then train
        sent = {e.node_id: self._senders.submit(self._send_model, e, model, request) for e in edges}
        futures = {self._pool.submit(self._ask_edge, e, sent[e.node_id], request, split_attempt): e.node_id
                   for e in edges}
        for future in as_completed(futures):
            yield futures[future], future

    def _train(self, orders: Orders, edges: list[Any], model: ReceivedModel, request: pb.RoundRequest,
               attempt: str | None) -> pb.SupernodeResult:
        """One attempt of a training round here (``attempt``: a split round's, else None)."""
        job, round_number = orders.job, orders.round
        reply = pb.SupernodeResult(node_id=self.node.node_id)
        strategy = self._strategy(job)
        try:  # the round's options for checking updates, from the signed order (adaptive clipping's clip norm)
            strategy.set_validate_config(orders.authority.payload.get("validate", {}))
        except ValueError as exc:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the round's order cannot be followed: {exc}") from None
        reference = state_views(model.data)
        partial = None
        if strategy.decomposable:
            with self._scratch_lock:  # a round running beside this one (rare) gets buffers of its own
                scratch, self._scratch = self._scratch, None
            partial = ExactSum(strategy.sum_layout(reference), reuse=scratch)
        txs: list[Transaction] = []
        for edge_id, future in self._ask_all(edges, model, request, attempt):  # fold each update in as it arrives
            try:
                result = future.result()
                tx, update = self._check_update(result, job, round_number, model.header.model_hash, reference, strategy,
                                                attempt)
                if partial is not None:
                    partial.add(update, checked=True)  # (refuses a sample total that would reach 2**35)
            except Exception as exc:  # noqa: BLE001 - a failing edge node is left out, not fatal
                reply.excluded.append(pb.Exclusion(node_id=edge_id, reason=_reason(exc)))
                continue
            txs.append(tx)
            reply.edges.append(result)
            self.node.models.spill(update.model_hash)  # checked (and summed): memory for the next, disk for audits
        self._ensure_stored(txs)
        return self._publish(job, round_number, partial, txs, reply)

    def _ensure_stored(self, txs: list[Transaction]) -> None:
        """Return once the updates' bytes are on this supernode's disk: the chain will name them
        and an audit fetches them from here, after a crash too. A disk that cannot keep up fails
        this supernode's part of the round (its edge nodes are excluded with the reason)."""
        if self.node.models.directory is None:
            return
        unstored = self.node.models.wait_stored([t.payload["hash"] for t in txs], STORE_TIMEOUT_S)
        if unstored:
            raise refuse(grpc.StatusCode.UNAVAILABLE, f"{len(unstored)} update(s) could not be stored on this "
                         f"supernode's disk within {STORE_TIMEOUT_S:g} s")

    def _strategy(self, job: Job) -> Strategy:
        """The job's strategy (the supernode only validates and sums: it keeps no server state)."""
        if self._job_strategy is None or self._job_strategy[0] != job.job_id:
            self._job_strategy = (job.job_id, job.strategy())
        return self._job_strategy[1]

    def _send_model(self, edge: Any, model: ReceivedModel, request: pb.RoundRequest) -> None:
        """Give ``edge`` the round's model unless it already has it; re-signed by this supernode,
        as edge nodes take models from their own supernode only."""
        if self.delivered.has(edge.node_id, model.header.model_hash):
            return
        header = make_header(self.node.identity, model.data, model.header.job_id, model.header.round,
                             model.header.num_samples, model_hash=model.header.model_hash)
        stub = rpc_pb.TrainingStub(self.node.channels.get(edge.address, edge.node_id))
        stub.DistributeModel(chunks(header, model.data), timeout=_seconds_left(request), metadata=addressed_to(edge.node_id))
        self.delivered.record(edge.node_id, model.header.model_hash)

    def _ask_edge(self, edge: Any, sent: Future[None], request: pb.RoundRequest,
                  split_attempt: str | None) -> pb.EdgeResult:
        sent.result()  # the model must be there first (raises what sending it raised)
        with self._split_slots if split_attempt else nullcontext():
            if split_attempt:
                self.split.ask(split_attempt, edge.node_id)
            timeout = _seconds_left(request)
            stub = rpc_pb.TrainingStub(self.node.channels.get(edge.address, edge.node_id))
            if self.jobs_sent.has(edge.node_id, request.order.job_id):  # it holds the JOB: the order alone
                try:
                    return stub.TrainRound(pb.RoundRequest(authority=request.authority, order=request.order),
                                           timeout=timeout, metadata=addressed_to(edge.node_id))
                except grpc.RpcError as exc:  # (it restarted since: the JOB again)
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or not (exc.details() or "").startswith(JOB_NEEDED):
                        raise
            result = stub.TrainRound(request, timeout=_seconds_left(request), metadata=addressed_to(edge.node_id))
            self.jobs_sent.record(edge.node_id, request.order.job_id)
            return result

    def _publish(self, job: Job, round_number: int, partial: ExactSum | None, txs: list[Transaction],
                 reply: pb.SupernodeResult) -> pb.SupernodeResult:
        """The round's records, signed, in the reply for the entry node to seal with the round's
        global model (all of them, or none when the round fails): an EXCLUDED per edge node left
        out, and the AGGREGATE listing the MODEL_UPDATE transactions this supernode checked (the
        edge nodes' signed updates travel in ``reply.edges``). When the job's rule decomposes, the
        AGGREGATE names the partial sum, kept for download."""
        node = self.node
        reply.exclusion_records.extend(tx_to_pb(Transaction.create(TxKind.EXCLUDED, {
            "job_id": job.job_id, "round": round_number, "node": exclusion.node_id,
            "reason": exclusion.reason[:500]}, node.identity)) for exclusion in reply.excluded)
        if txs:
            samples = sum(int(t.payload["samples"]) for t in txs)
            loss = sum(signed_train_loss(t) * int(t.payload["samples"]) for t in txs) / samples  # (as each signed it)
            aggregate = {"job_id": job.job_id, "round": round_number, "samples": samples,  # the MODEL_UPDATEs it checked
                         "updates": sorted(t.hash for t in txs), "metrics": {"train_loss": fixed(loss)}}
            if partial is not None:
                data = state_to_bytes(partial.to_state())
                with self._scratch_lock:
                    self._scratch = partial
                header = make_header(node.identity, data, job.job_id, round_number, samples)
                node.models.put(ReceivedModel.of(header, data))
                self.partials[header.model_hash] = None  # (never served to an edge node: a clean sum of updates)
                while len(self.partials) > PARTIALS_KEPT:
                    self.partials.popitem(last=False)
                aggregate["hash"] = reply.partial_hash = header.model_hash
            reply.num_samples = samples
            reply.aggregate.CopyFrom(tx_to_pb(Transaction.create(TxKind.AGGREGATE, aggregate, node.identity)))
        return reply

    def _check_update(self, result: pb.EdgeResult, job: Job, round_number: int, sent_hash: str,
                      reference: dict[str, Any], strategy: Strategy,
                      split_attempt: str | None = None) -> tuple[Transaction, Update]:
        tx = tx_from_pb(result.update)
        member = self.node.members.get(result.node_id)
        if tx.sender != result.node_id or member is None:
            raise InvalidUpdate("the result is not a MODEL_UPDATE of the edge node that sent it")
        check_model_update(tx, job, round_number, member.public_key)
        if tx.payload["hash"] == sent_hash:
            raise InvalidUpdate("free rider: its update is the very model it was sent")
        received = self.node.models.get(tx.payload["hash"])
        if received is None or received.header.sender != result.node_id:
            raise InvalidUpdate("the update's bytes were never uploaded to this supernode")
        if tx.payload["size"] != len(received.data):
            raise InvalidUpdate(f"its MODEL_UPDATE claims {tx.payload['size']} bytes; it uploaded {len(received.data)}")
        # read only: checked and summed, never kept
        update = Update(state_views(received.data), tx.payload["samples"], tx.payload["hash"])
        if split_attempt is not None:  # the upper layers must be those trained here
            self.split.check_update(split_attempt, result.node_id, update.state)
        return tx, strategy.validate(reference, update)  # (clipped, when the job clips)


def _seconds_left(request: pb.RoundRequest) -> float:
    return max(0.5, seconds_left(request.order))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "missed the round deadline"
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, (InvalidUpdate, WireError)):
        return f"invalid update: {exc}"
    code, message = status_for(exc)
    return f"{code.name}: {message}"
