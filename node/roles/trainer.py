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
"""

from __future__ import annotations

import logging
import os
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
from fl.datasets import load_dataset
from fl.federation import ClientWorker, client_data, job_data, split_state
from fl.partition import client_split
from fl.serialize import state_from_bytes, state_to_bytes, state_views
from fl.train import ClientData, EvalResult, resolve_device
from node.chain.rules import Transaction, TxKind, fixed
from node.roles.jobs import Job, OrderLog, read_orders
from node.net.errors import refuse
from node.net.streams import chunks, make_header
from node.net.wire import tx_to_pb

if TYPE_CHECKING:
    from node.roles.edgenode import EdgeNode

log = logging.getLogger(__name__)


@dataclass
class _JobState:
    job: Job
    index: int
    data: ClientData
    worker: ClientWorker
    personal: dict[str, torch.Tensor]
    personal_path: Path
    last_round: int = 0  # orders for rounds up to here are replays


class EdgeTrainer:
    def __init__(self, node: EdgeNode, home: Path, conf: dict[str, Any]) -> None:
        self.node = node
        self.home = Path(home)
        self.data_dir = conf["data_dir"]
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
        model = node.models.get(model_hash)
        if model is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                         f"this edge node does not hold the global model {model_hash[:16]}…; distribute it first")
        with self._lock:
            if self.device.type == "cpu":
                # per thread: OpenMP keeps the thread count per calling thread, and each gRPC call
                # may run on another one (else training here would use every core, and spin)
                torch.set_num_threads(self.threads)
            state = self._job_state(job)
            shared = state_views(model.data)  # copied into the model, never written
            if orders.evaluate_only:
                ev = state.worker.evaluate(state.data, shared, state.personal)
                return pb.EdgeResult(node_id=node.node_id, seconds=time.perf_counter() - started,
                                     eval=_eval_metrics(ev))
            if orders.seconds_left() < 0:
                raise refuse(grpc.StatusCode.DEADLINE_EXCEEDED, f"round {round_number} is already past its deadline")
            before = state.worker.evaluate(state.data, shared, state.personal) if orders.order.evaluate_first else None
            if round_number <= state.last_round:
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                             f"round {round_number} of {job.job_id} was already trained here (a replayed order?)")
            config = orders.authority.payload.get("config", {})  # the strategy's options, signed in the order
            if not isinstance(config, dict) or not all(isinstance(v, str) for v in config.values()):
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the round order's config is not a map of strings")
            try:
                result = state.worker.train_round(state.index, state.data, round_number, shared, state.personal,
                                                  config=config)
            except ValueError as exc:  # an option this client does not know, or a value out of range
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"round {round_number}'s training options: {exc}") from None
            state.last_round = round_number
            state.personal = result.personal
            _save_atomically(state.personal_path, state_to_bytes(result.personal))
            update = state_to_bytes(result.shared)  # only the shared layers ever leave this node
            header = make_header(node.identity, update, job.job_id, round_number, result.stats.num_samples)
        sn = node.supernode
        if sn is None:
            raise refuse(grpc.StatusCode.UNAVAILABLE, "this edge node lost its supernode during the round")
        rpc_pb.TrainingStub(node.channels.get(sn.address, sn.node_id)).UploadUpdate(
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

    def _job_state(self, job: Job) -> _JobState:
        state = self._jobs.get(job.job_id)
        if state is not None:
            return state
        if self.node.node_id not in job.participants:
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"this edge node is not a participant of {job.job_id}")
        index = job.participants.index(self.node.node_id)
        data, num_classes = self._load_data(job, index)
        worker = ClientWorker(job.spec, num_classes, self.device)
        path = self.home / "jobs" / job.job_id / "personal.safetensors"
        if path.exists():  # a restart: the head trained so far is still ours
            personal = state_from_bytes(path.read_bytes())
            log.info("job %s: resumed personal layers from %s", job.job_id, path)
        else:
            personal = split_state(worker.model.full_state(), worker.personal_keys)
        self._jobs = {job.job_id: _JobState(job, index, data, worker, personal, path)}  # one job at a time
        return self._jobs[job.job_id]

    def _load_data(self, job: Job, index: int) -> tuple[ClientData, int]:
        if job.own_data:
            dataset = load_dataset(job.spec.dataset, self.data_dir)
            split = client_split(np.arange(len(dataset)), job.spec.train_fraction, job.spec.seed, index)
        else:
            try:
                dataset, splits = job_data(job.spec, self.data_dir)
            except ValueError as exc:  # a PFLlib split of another size, a missing file …
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"this edge node cannot load its data: {exc}") from None
            split = splits[index]
        log.info("job %s: edge node %d of %d, %d training and %d test samples of %s", job.job_id, index,
                 len(job.participants), len(split.train), len(split.test), job.spec.dataset)
        return client_data(dataset, split, self.device), dataset.num_classes


def _eval_metrics(ev: EvalResult) -> pb.EvalMetrics:
    return pb.EvalMetrics(correct=ev.correct, num_samples=ev.num_samples, loss_sum=ev.loss_sum)


def _save_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
