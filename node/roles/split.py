"""Split learning over the network: the edge node's link to its supernode's server half, and the
supernode's side of that bidirectional stream (``Training.SplitTrain``; the learning is
``fl.split``'s, the same as in the simulation).

One stream per edge node and round. The edge node's first message names the job, round and
global model; the supernode serves it only while that round is in progress here with that
edge node asked to train (the round's upload window), from that round's global model. Then,
per batch: activations (and labels, unless U-shaped) up, the gradient (U-shaped: the outputs,
then the gradient at the cut) down. ``finish`` ends it: the supernode sends its trained upper
layers and keeps a copy, so that the update the edge node uploads must hold exactly those
layers (checked before the update is summed).

What the supernode bounds: tensors arrive as safetensors (never pickle), their shapes must fit
the cut and the job's batch size, values must be finite, labels within the classes, and the
number of batches at most the edge node's share of the job's epochs; at most one trained half per
edge node and round waits for its update.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
import torch

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from fl.federation import ClientWorker
from fl.serialize import state_from_bytes, state_to_bytes, state_views
from fl.split import ServerLink
from fl.strategy import InvalidUpdate
from fl.strategy.base import check_values
from node.net.errors import refuse
from node.net.guard import require_caller
from node.net.streams import ReceivedModel
from node.roles.jobs import Job

if TYPE_CHECKING:
    from node.roles.supernode import Supernode

log = logging.getLogger(__name__)

NUM_CLASSES = 10  # every dataset a job may name has ten classes (as ``node.roles.jobs.initial_model``)


class StreamLink(ServerLink):
    """The edge node's side: each call one message up and its answer down, in lockstep."""

    def __init__(self, stub: rpc_pb.TrainingStub, node_id: str, job_id: str, round_number: int, model_hash: str,
                 timeout: float) -> None:
        self._outbox: queue.Queue[pb.SplitMessage | None] = queue.Queue()
        self._outbox.put(pb.SplitMessage(node_id=node_id, job_id=job_id, round=round_number, model_hash=model_hash))
        self._replies = stub.SplitTrain(iter(self._outbox.get, None), timeout=timeout)

    def _call(self, message: pb.SplitMessage) -> pb.SplitMessage:
        self._outbox.put(message)
        return next(self._replies)

    def _exchange(self, **tensors: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        reply = self._call(pb.SplitMessage(tensors=state_to_bytes(data)))
        return state_from_bytes(reply.tensors), reply.loss

    def step(self, activations: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        tensors, loss = self._exchange(activations=activations, labels=labels)
        return tensors["grad"], loss

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self._exchange(activations=activations)[0]["outputs"]

    def backward(self, grad_outputs: torch.Tensor) -> torch.Tensor:
        return self._exchange(grad=grad_outputs)[0]["grad"]

    def finish(self) -> dict[str, torch.Tensor]:
        reply = self._call(pb.SplitMessage(finish=True))
        self.close()
        return state_from_bytes(reply.tensors)

    def close(self) -> None:
        """End the stream (after ``finish``, or to abandon it when training failed)."""
        self._outbox.put(None)
        self._replies.cancel()


class SplitServer:
    """The supernode's side: the split rounds in progress and the halves trained in them."""

    def __init__(self, node: Supernode) -> None:
        self.node = node
        self._rounds: dict[tuple[str, int], tuple[Job, ReceivedModel]] = {}
        self._trained: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}
        self._workers: dict[str, ClientWorker] = {}
        self._lock = threading.Lock()

    @contextmanager
    def round(self, job: Job, round_number: int, model: ReceivedModel) -> Iterator[None]:
        """Serve ``job``'s round ``round_number`` (its edge nodes' streams) while the block runs."""
        key = (job.job_id, round_number)
        with self._lock:
            self._rounds[key] = (job, model)
        try:
            yield
        finally:
            with self._lock:
                self._rounds.pop(key, None)
                for trained in [k for k in self._trained if k[:2] == key]:
                    del self._trained[trained]

    def check_update(self, job_id: str, round_number: int, edge_id: str, state: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`InvalidUpdate` unless ``state`` holds exactly the upper layers this
        supernode trained with ``edge_id`` in this round."""
        with self._lock:
            trained = self._trained.pop((job_id, round_number, edge_id), None)
        if trained is None:
            raise InvalidUpdate("it trained no upper layers with this supernode in this round (split learning)")
        changed = [k for k, v in trained.items() if k not in state or not torch.equal(state[k], v)]
        if changed:
            raise InvalidUpdate(f"its update's upper layers {changed[:3]} differ from those this supernode trained")

    def serve(self, messages: Iterator[pb.SplitMessage]) -> Iterator[pb.SplitMessage]:
        """Answer one edge node's stream (its first message names it; its certificate must too)."""
        first = next(messages, None)
        if first is None:
            return
        require_caller(first.node_id, "a split learning stream")
        edge_id = first.node_id
        job, model = self._admit(first, edge_id)
        worker = self._worker(job)
        half = worker.server_half(state_views(model.data), job.spec.build_model(NUM_CLASSES))
        torch.set_num_threads(self.node.settings.torch_threads)
        batches = _batch_budget(job, edge_id)
        for message in messages:
            if message.finish:
                trained = half.state()
                with self._lock:
                    if (job.job_id, first.round) in self._rounds:
                        self._trained[(job.job_id, first.round, edge_id)] = trained
                yield pb.SplitMessage(tensors=state_to_bytes(trained))
                return
            tensors = _read(message.tensors)
            if "grad" in tensors:
                yield pb.SplitMessage(tensors=state_to_bytes({"grad": _run(half.backward, tensors["grad"]).contiguous()}))
                continue
            batches -= 1
            if batches < 0:
                raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more batches than {job.spec.local_epochs} epoch(s) of "
                             f"this edge node's samples in batches of {job.spec.batch_size}")
            activations = _activations(tensors, job)
            if "labels" in tensors:
                grad, loss = _run(half.step, activations, _labels(tensors["labels"], activations))
                yield pb.SplitMessage(tensors=state_to_bytes({"grad": grad.contiguous()}), loss=loss)
            else:
                yield pb.SplitMessage(tensors=state_to_bytes({"outputs": _run(half.forward, activations).contiguous()}))

    def _admit(self, first: pb.SplitMessage, edge_id: str) -> tuple[Job, ReceivedModel]:
        with self._lock:
            entry = self._rounds.get((first.job_id, first.round))
        if entry is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"no split round {first.round} of job {first.job_id!r} "
                         f"is in progress on this supernode")
        job, model = entry
        if not self.node.rounds.uploads.expects(edge_id, job.job_id, first.round):
            raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                         f"{edge_id} was not asked to train round {first.round} of {job.job_id} here")
        if first.model_hash != model.header.model_hash:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"round {first.round} trains from model "
                         f"{model.header.model_hash[:16]}…, not {first.model_hash[:16]}…")
        return job, model

    def _worker(self, job: Job) -> ClientWorker:
        with self._lock:
            if job.job_id not in self._workers:
                self._workers = {job.job_id: ClientWorker(job.spec, NUM_CLASSES, torch.device("cpu"))}
            return self._workers[job.job_id]


def _batch_budget(job: Job, edge_id: str) -> int:
    samples = (job.samples or {}).get(edge_id) or job.max_samples or 0
    return job.spec.local_epochs * math.ceil(samples / job.spec.batch_size)


def _read(data: bytes) -> dict[str, torch.Tensor]:
    try:
        tensors = state_from_bytes(data)
    except Exception as exc:  # noqa: BLE001 - whatever safetensors makes of bad bytes
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the split message's tensors do not parse: {exc}") from None
    known = {"activations", "labels", "grad"}
    if not tensors or not set(tensors) <= known or ("grad" in tensors and len(tensors) > 1):
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"a split message holds activations (with labels unless "
                     f"U-shaped) or a gradient, not {sorted(tensors)}")
    for key, value in tensors.items():
        if key != "labels":
            try:
                check_values(key, value)
            except InvalidUpdate as exc:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    return tensors


def _activations(tensors: Mapping[str, torch.Tensor], job: Job) -> torch.Tensor:
    activations = tensors.get("activations")
    if activations is None or activations.dtype != torch.float32 or activations.dim() < 2:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "a split batch needs float32 activations (batch first)")
    if not 1 <= activations.shape[0] <= job.spec.batch_size:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"a batch of {activations.shape[0]} samples; the job's batches "
                     f"hold at most {job.spec.batch_size}")
    return activations


def _labels(labels: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    if labels.dtype != torch.int64 or labels.shape != activations.shape[:1]:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "labels must be int64, one per sample of the batch")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < NUM_CLASSES):
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"labels must lie in [0, {NUM_CLASSES})")
    return labels


def _run(fn: Any, *args: torch.Tensor) -> Any:
    """``fn(*args)``; a shape that does not fit the upper layers is the caller's mistake."""
    try:
        return fn(*args)
    except (RuntimeError, ValueError) as exc:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the split batch does not fit this job's upper layers: "
                     f"{str(exc).splitlines()[0]}") from None
