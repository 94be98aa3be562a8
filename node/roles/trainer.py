"""An edge node's part of a federated job: its own data, its own head, one round at a time.

For each round the supernode sends the global shared layers (checked against the hash the
entry node signed), then asks the edge node to train: it loads the global layers plus its own
personal layers, trains on its own training split, keeps the personal layers (on disk, in its
home, so a restart loses nothing), uploads only the shared layers to its supernode, and returns
a MODEL_UPDATE transaction it signed. Evaluation is the same minus training.

The data shard follows from the job alone: the job's seed and partition, and this node's index
in the job's participant list, so every edge node computes only its own part. With
``own_data`` (a setting of the job) the node instead uses everything in its ``data_dir`` (its own
dataset).

A round the entry node orders again (a retry after a failed attempt, or after the entry node
restarted) is trained again from the head that round started from, so an attempt that did not
count leaves no trace in the head; an order for an older round is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import torch

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from fl.federation import ClientWorker, client_data, job_data, make_worker, own_dataset
from fl.names import SPLIT_STRATEGIES
from fl.partition import client_split
from fl.serialize import state_from_bytes, state_to_bytes, state_views
from fl.train import ClientData, EvalResult, resolve_device
from node.chain.rules import Transaction, TxKind, fixed
from node.roles.checkpoint import write_atomically
from node.roles.jobs import Job, OrderLog, Orders, kept_adapters_hash, read_orders
from node.roles.split import StreamLink
from node.net.errors import refuse
from node.net.streams import chunks, make_header
from node.net.wire import tx_to_pb

if TYPE_CHECKING:
    from node.roles.edgenode import EdgeNode

log = logging.getLogger(__name__)


@dataclass
class _JobState:
    """An edge node's part of a job, kept on disk in ``<home>/jobs/<job>/`` so a restart loses
    nothing: the head after the last round it trained and the head that round started from (a
    retried round starts from it again), and that round's number."""

    job: Job
    index: int
    data: ClientData
    worker: ClientWorker
    folder: Path
    personal: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor] | None = None  # the head the last trained round started from
    last_round: int = 0

    def head_for(self, round_number: int) -> dict[str, torch.Tensor]:
        """The head ``round_number`` starts from: the current one, or for a retry of the last
        trained round (a new order from the entry node) the one that round started from."""
        if round_number < self.last_round:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                         f"round {round_number} of {self.job.job_id} is behind this edge node (it trained round "
                         f"{self.last_round})")
        return self.before if round_number == self.last_round and self.before is not None else self.personal

    def trained(self, round_number: int, personal: dict[str, torch.Tensor]) -> None:
        if round_number > self.last_round:
            self.before = self.personal
        self.personal, self.last_round = personal, round_number
        if self.before is not None:
            write_atomically(self.folder / "personal-before.safetensors", state_to_bytes(self.before))
        write_atomically(self.folder / "personal.safetensors", state_to_bytes(self.personal))
        write_atomically(self.folder / "progress.json", json.dumps({"last_round": self.last_round}).encode())

    @classmethod
    def load(cls, job: Job, index: int, data: ClientData, worker: ClientWorker, folder: Path) -> "_JobState":
        """The job's state from ``folder`` (a restart), else a fresh head from the job's seed."""
        path, before = folder / "personal.safetensors", folder / "personal-before.safetensors"
        if not path.exists():
            return cls(job, index, data, worker, folder, worker.initial_personal(index))
        log.info("job %s: resumed personal layers from %s", job.job_id, path)
        try:
            last_round = int(json.loads((folder / "progress.json").read_text(encoding="utf-8"))["last_round"])
        except (OSError, ValueError, KeyError, TypeError):
            last_round = 0
        return cls(job, index, data, worker, folder, state_from_bytes(path.read_bytes()),
                   state_from_bytes(before.read_bytes()) if before.exists() else None, last_round)


class EdgeTrainer:
    def __init__(self, node: EdgeNode, home: Path, conf: dict[str, Any],
                 slots: AbstractContextManager[Any] | None = None, data: Callable[..., Any] | None = None) -> None:
        """``slots``: held while training (how many edge nodes of the host may train at once: they
        share its cores); ``data``: the job data a process's edge nodes share. None: this node alone."""
        self.node = node
        self.job_data = data if data is not None else job_data
        self.slots = slots if slots is not None else threading.Semaphore(1)
        self.home = Path(home)
        self.data_dir = conf["data_dir"]
        self.model_path = conf["model_path"]
        self.device = resolve_device(conf["device"])
        self.threads = conf["torch_threads"]
        self._jobs: dict[str, _JobState] = {}
        self._lock = threading.Lock()  # one round at a time on this node
        self.orders = OrderLog()  # each signed order is carried out once

    def handle(self, request: pb.RoundRequest) -> pb.EdgeResult:
        started = time.perf_counter()
        node = self.node
        if node.entry_key is None:
            raise refuse(grpc.StatusCode.UNAVAILABLE, "this edge node has not joined the network yet")
        orders = read_orders(request, node.entry_id, node.entry_key, self.orders)
        job, round_number, model_hash = orders.job, orders.round, orders.model_hash
        # the update goes to the supernode that ordered the round (its edge node as the round
        # started, which reports it), even if this node moves to another while it trains
        ordered_by = node.supernode
        if ordered_by is None:
            raise refuse(grpc.StatusCode.UNAVAILABLE, "this edge node has no supernode right now")
        model = node.model(model_hash)
        if model is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                         f"this edge node does not hold the global model {model_hash[:16]}…; distribute it first")
        with self._lock, self.slots:
            if self.device.type == "cpu":
                # per thread: OpenMP keeps the thread count per calling thread, and each gRPC call
                # may run on another one (else training here would use every core, and spin)
                torch.set_num_threads(self.threads)
            state = self._job_state(job)
            shared = state_views(model.data)  # copied into the model, never written
            if orders.evaluate_only:
                ev = state.worker.evaluate(state.index, state.data, shared, state.personal)
                return pb.EdgeResult(node_id=node.node_id, seconds=time.perf_counter() - started,
                                     eval=_eval_metrics(ev))
            if orders.seconds_left() < 0:
                raise refuse(grpc.StatusCode.DEADLINE_EXCEEDED, f"round {round_number} is already past its deadline")
            head = state.head_for(round_number)
            before = state.worker.evaluate(state.index, state.data, shared, head) if orders.order.evaluate_first else None
            config = orders.authority.payload.get("config", {})  # the strategy's options, signed in the order
            if not isinstance(config, dict) or not all(isinstance(v, str) for v in config.values()):
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the round order's config is not a map of strings")
            link = self._split_link(state, orders, shared)
            try:
                result = state.worker.train_round(state.index, state.data, round_number, shared, head, config=config,
                                                  link=link)
            except ValueError as exc:  # an option this client does not know, a value out of range, a bad answer
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"round {round_number} cannot be trained: {exc}") from None
            except grpc.RpcError as exc:  # the supernode's half of a split round refused or failed
                raise refuse(exc.code(), f"the supernode's half of split round {round_number}: {exc.details()}") from None
            finally:
                if link is not None:
                    link.close()
            state.trained(round_number, result.personal)
            update = state_to_bytes(result.shared)  # only the shared layers ever leave this node
            header = make_header(node.identity, update, job.job_id, round_number, result.stats.num_samples)
        rpc_pb.TrainingStub(node.channels.get(ordered_by.address, ordered_by.node_id)).UploadUpdate(
            chunks(header, update), timeout=max(1.0, orders.seconds_left()))
        node.upload_done()
        tx = Transaction.create(TxKind.MODEL_UPDATE, {
            "job_id": job.job_id, "round": round_number, "hash": header.model_hash,
            "samples": result.stats.num_samples, "size": len(update),
            "metrics": {"train_loss": fixed(result.stats.loss)}}, node.identity)
        reply = pb.EdgeResult(node_id=node.node_id, update=tx_to_pb(tx), train_loss=result.stats.loss,
                              seconds=time.perf_counter() - started)
        if before is not None:
            reply.eval.CopyFrom(_eval_metrics(before))
        return reply

    def _split_link(self, state: _JobState, orders: Orders, shared: Mapping[str, torch.Tensor]) -> StreamLink | None:
        """A split job's stream to this node's supernode, where the upper layers train."""
        job = orders.job
        if job.spec.strategy not in SPLIT_STRATEGIES:
            return None
        cut = state.worker.cut
        assert cut is not None
        sn = self.node.supernode
        if sn is None:
            raise refuse(grpc.StatusCode.UNAVAILABLE, "this edge node has no supernode to train the upper layers with")
        stub = rpc_pb.TrainingStub(self.node.channels.get(sn.address, sn.node_id))
        opening = pb.SplitMessage(node_id=self.node.node_id, job_id=job.job_id, round=orders.round,
                                  attempt=orders.authority.hash, model_hash=orders.model_hash)
        return StreamLink(stub, opening, max(1.0, orders.seconds_left()), state.worker.split_shapes[1],
                          {k: shared[k] for k in cut.server_keys(state.worker.model)})

    def _job_state(self, job: Job) -> _JobState:
        state = self._jobs.get(job.job_id)
        if state is not None:
            return state
        if self.node.node_id not in job.participants:
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"this edge node is not a participant of {job.job_id}")
        index = job.participants.index(self.node.node_id)
        data, num_classes = self._load_data(job, index)
        try:
            worker = make_worker(job.spec, num_classes, self.device, self.model_path)
        except (ValueError, OSError) as exc:  # model=lora without a usable base model here
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"this edge node cannot build the job's model: {exc}") from None
        if job.spec.lora_init and kept_adapters_hash(worker) != job.spec.lora_init:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"{job.job_id}'s adapters start from "
                         f"{job.spec.lora_init[:16]}…; this edge node's peft/torch draw others (install the pinned "
                         f"versions)")
        # one job at a time
        self._jobs = {job.job_id: _JobState.load(job, index, data, worker, self.home / "jobs" / job.job_id)}
        return self._jobs[job.job_id]

    def _check_base_model(self, job: Job) -> None:
        """A LoRA job fine-tunes one base model: this node's must be the one the JOB pins."""
        if job.spec.model != "lora":
            return
        if not job.spec.base_model:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"{job.job_id} fine-tunes a language model but its "
                         f"JOB pins none (base_model)")
        from fl.lm.base import held_base_model

        held = held_base_model(self.model_path)
        if held != job.spec.base_model:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"{job.job_id} fine-tunes the base model "
                         f"{job.spec.base_model[:16]}…; this edge node's --model-path holds {held[:40]}")

    def _load_data(self, job: Job, index: int) -> tuple[ClientData, int]:
        self._check_base_model(job)
        if job.own_data:
            try:
                dataset = own_dataset(job.spec, self.data_dir, self.model_path)
            except (ValueError, OSError) as exc:  # missing or unreadable files, no tokenizer …
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"this edge node cannot load its data: {exc}") from None
            split = client_split(np.arange(len(dataset)), job.spec.train_fraction, job.spec.seed, index)
        else:
            try:
                dataset, splits = self.job_data(job.spec, self.data_dir, self.model_path)
            except (ValueError, OSError) as exc:  # a PFLlib split of another size, a missing file …
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"this edge node cannot load its data: {exc}") from None
            split = splits[index]
        log.info("job %s: edge node %d of %d, %d training and %d test samples of %s", job.job_id, index,
                 len(job.participants), len(split.train), len(split.test), job.spec.dataset)
        return client_data(dataset, split, self.device), dataset.num_classes


def _eval_metrics(ev: EvalResult) -> pb.EvalMetrics:
    return pb.EvalMetrics(correct=ev.correct, num_samples=ev.num_samples, loss_sum=ev.loss_sum)


