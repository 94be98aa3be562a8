"""Split learning over the network: the edge node's link to its supernode's server half, and the
supernode's side of that bidirectional stream (``Training.SplitTrain``; the learning is
``fl.split``'s, the same as in the simulation).

A round's attempt (its signed ROUND, named by hash) is served to the edge nodes the supernode
asked to train in it, once it asked them, from that attempt's global model; an attempt that
overlaps the one it replaces has records of its own. The edge node's first message names the
job, round, attempt and global model. Then, per batch: activations (and labels, unless
U-shaped) up, the gradient (U-shaped: the outputs, then the gradient at the cut) down.
``finish`` ends it: the supernode sends its trained upper layers and keeps a copy, so that the
update the edge node uploads must hold exactly those layers (checked before it is summed).

What the supernode bounds: tensors arrive as safetensors (never pickle), activations must have
the cut's shape and at most the job's batch size, gradients the shape of what they answer,
values must be finite, labels within the classes; an edge node holds one stream at a time, and
its streams of an attempt together send at most its share of the job's epochs in batches, none
after its finish; a stream whose attempt is over is ABORTED at its next message.
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import torch

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from fl.federation import ClientWorker, JobSpec
from fl.names import SPLIT_STRATEGIES
from fl.serialize import state_from_bytes, state_to_bytes, state_views
from fl.split import ServerLink
from fl.strategy import InvalidUpdate
from fl.strategy.base import check_layout, check_values
from node.net.channels import MAX_MESSAGE_BYTES
from node.net.errors import refuse
from node.net.guard import require_caller
from node.net.streams import ReceivedModel
from node.roles.jobs import NUM_CLASSES, Job

if TYPE_CHECKING:
    from node.roles.supernode import Supernode

log = logging.getLogger(__name__)

MESSAGE_SLACK = 64 << 10  # a split message's bytes beside its tensors' data (headers, labels, framing)


class StreamLink(ServerLink):
    """The edge node's side: each call one message up and its answer down, in lockstep. Answers
    are checked before they touch the model: the tensor asked for, finite, of the shape that
    fits (a gradient shaped as what it answers, outputs of the cut's shape, the upper layers of
    ``upper``'s layout); anything else is a ValueError naming it."""

    def __init__(self, stub: rpc_pb.TrainingStub, opening: pb.SplitMessage, timeout: float,
                 output_shape: tuple[int, ...], upper: Mapping[str, torch.Tensor]) -> None:
        self._output_shape, self._upper = output_shape, upper
        self._sent: tuple[int, ...] = ()  # the shape of the last activations sent up
        self._outbox: queue.Queue[pb.SplitMessage | None] = queue.Queue()
        self._outbox.put(opening)  # who, and which job, round, attempt and model
        self._replies = stub.SplitTrain(iter(self._outbox.get, None), timeout=timeout)

    def _call(self, message: pb.SplitMessage) -> pb.SplitMessage:
        self._outbox.put(message)
        try:
            return next(self._replies)
        except StopIteration:
            raise ValueError("the supernode ended the split stream without answering") from None

    def _exchange(self, answer: str, shape: tuple[int, ...], **tensors: torch.Tensor) -> tuple[torch.Tensor, float]:
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        reply = self._call(pb.SplitMessage(tensors=state_to_bytes(data)))
        try:
            received = state_from_bytes(reply.tensors)
        except Exception as exc:  # noqa: BLE001 - whatever safetensors makes of bad bytes
            raise ValueError(f"the supernode's answer does not parse: {exc}") from None
        value = received.get(answer)
        if set(received) != {answer} or value.dtype != torch.float32 or tuple(value.shape) != shape:
            raise ValueError(f"the supernode answered {sorted(received)} where {answer} of shape {shape} was due")
        _finite(answer, value)
        if not math.isfinite(reply.loss):
            raise ValueError("the supernode's loss is not finite")
        return value, reply.loss

    def step(self, activations: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        return self._exchange("grad", tuple(activations.shape), activations=activations, labels=labels)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        self._sent = tuple(activations.shape)
        return self._exchange("outputs", (activations.shape[0], *self._output_shape), activations=activations)[0]

    def backward(self, grad_outputs: torch.Tensor) -> torch.Tensor:
        return self._exchange("grad", self._sent, grad=grad_outputs)[0]

    def finish(self) -> dict[str, torch.Tensor]:
        reply = self._call(pb.SplitMessage(finish=True))
        self.close()
        try:
            upper = state_from_bytes(reply.tensors)
            check_layout(self._upper, upper)
        except InvalidUpdate as exc:
            raise ValueError(f"the supernode's upper layers do not fit the job's: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever safetensors makes of bad bytes
            raise ValueError(f"the supernode's upper layers do not parse: {exc}") from None
        for key, value in upper.items():
            _finite(key, value)
        return upper

    def close(self) -> None:
        """End the stream (after ``finish``, or to abandon it when training failed)."""
        self._outbox.put(None)
        self._replies.cancel()


@dataclass
class _Edge:
    """One edge node's part in an attempt of a split round on this supernode: whether it was
    asked yet, the batches it may still send, whether a stream of it is open, and the upper layers
    it finished with."""

    batches: int
    asked: bool = False
    streaming: bool = False
    trained: dict[str, torch.Tensor] | None = None


@dataclass
class _Attempt:
    job: Job
    round: int
    model: ReceivedModel
    edges: dict[str, _Edge]


class SplitServer:
    """The supernode's side: the attempts of split rounds in progress (by the hash of their
    signed ROUND) and each edge node's part in them."""

    def __init__(self, node: Supernode) -> None:
        self.node = node
        self._attempts: dict[str, _Attempt] = {}
        self._templates: dict[str, tuple[ClientWorker, tuple[int, ...]]] = {}  # per job: worker, activation shape
        self._lock = threading.Lock()

    @contextmanager
    def attempt(self, attempt: str, job: Job, round_number: int, model: ReceivedModel,
                edges: list[str]) -> Iterator[None]:
        """Serve the attempt ``attempt`` of ``job``'s round ``round_number`` to ``edges`` while the
        block runs, each from when it is asked (:meth:`ask`)."""
        parts = {edge: _Edge(_batch_budget(job, edge)) for edge in edges}
        with self._lock:
            self._attempts[attempt] = _Attempt(job, round_number, model, parts)
        try:
            yield
        finally:
            with self._lock:
                del self._attempts[attempt]

    def ask(self, attempt: str, edge_id: str) -> None:
        """``edge_id`` is being asked to train in ``attempt`` now: its stream may open."""
        with self._lock:
            self._attempts[attempt].edges[edge_id].asked = True

    def check_update(self, attempt: str, edge_id: str, state: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`InvalidUpdate` unless ``state`` holds exactly the upper layers this
        supernode trained with ``edge_id`` in ``attempt``."""
        with self._lock:
            current = self._attempts.get(attempt)
            part = current.edges.get(edge_id) if current is not None else None
            trained = part.trained if part is not None else None
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
        job, model, part = self._open(first)
        try:
            worker, shape = self._template(job)
            half = worker.server_half(state_views(model.data), copy.deepcopy(worker.model))
            for message in messages:
                self._still_running(first, part)
                if message.finish:
                    trained = half.state()
                    with self._lock:
                        part.trained, part.batches = trained, 0  # (no more batches after its finish)
                    yield pb.SplitMessage(tensors=state_to_bytes(trained))
                    return
                tensors = _read(message.tensors)
                if "grad" in tensors:
                    grad = _run(half.backward, tensors["grad"])
                    yield pb.SplitMessage(tensors=state_to_bytes({"grad": grad.contiguous()}))
                    continue
                with self._lock:
                    part.batches -= 1
                    spent = part.batches < 0
                if spent:
                    raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more batches than {job.spec.local_epochs} "
                                 f"epoch(s) of {edge_id}'s samples in batches of {job.spec.batch_size}")
                activations = _activations(tensors, job, shape)
                if "labels" in tensors:
                    grad, loss = _run(half.step, activations, _labels(tensors["labels"], activations))
                    yield pb.SplitMessage(tensors=state_to_bytes({"grad": grad.contiguous()}), loss=loss)
                else:
                    outputs = _run(half.forward, activations)
                    yield pb.SplitMessage(tensors=state_to_bytes({"outputs": outputs.contiguous()}))
        finally:
            with self._lock:
                part.streaming = False

    def _open(self, first: pb.SplitMessage) -> tuple[Job, ReceivedModel, _Edge]:
        """The attempt and the edge node's part in it, marked streaming (one stream at a time)."""
        with self._lock:
            current = self._attempts.get(first.attempt)
            if current is None or (current.job.job_id, current.round) != (first.job_id, first.round):
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"no attempt {first.attempt[:16]}… of split round "
                             f"{first.round} of job {first.job_id!r} is in progress on this supernode")
            part = current.edges.get(first.node_id)
            if part is None or not part.asked:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                             f"{first.node_id} was not asked to train round {first.round} of {first.job_id} here")
            if first.model_hash != current.model.header.model_hash:
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"round {first.round} trains from model "
                             f"{current.model.header.model_hash[:16]}…, not {first.model_hash[:16]}…")
            if part.streaming or part.trained is not None:
                raise refuse(grpc.StatusCode.ALREADY_EXISTS, f"{first.node_id} already has a split stream for "
                             f"round {first.round} here (one at a time, none after it finished)")
            part.streaming = True
            return current.job, current.model, part

    def _still_running(self, first: pb.SplitMessage, part: _Edge) -> None:
        with self._lock:
            current = self._attempts.get(first.attempt)
            if current is None or current.edges.get(first.node_id) is not part:
                raise refuse(grpc.StatusCode.ABORTED, f"round {first.round} of {first.job_id} (this attempt) is "
                             f"over on this supernode")

    def _template(self, job: Job) -> tuple[ClientWorker, tuple[int, ...]]:
        """The job's worker (its cut and a model to copy for each stream) and the activations'
        shape at the cut, built once per job (outside the lock: it runs the model)."""
        with self._lock:
            template = self._templates.get(job.job_id)
        if template is None:
            worker = ClientWorker(job.spec, NUM_CLASSES, torch.device("cpu"))
            template = (worker, worker.split_shapes[0])
            with self._lock:
                self._templates = {job.job_id: template}
        return template


def check_split_fits(spec: JobSpec) -> None:
    """ValueError when a split job cannot run over the wire: a cut that leaves a side without a
    layer, or batches whose activations (or U-shaped outputs) at the cut exceed one message."""
    if spec.strategy not in SPLIT_STRATEGIES:
        return
    activations, outputs = ClientWorker(spec, NUM_CLASSES, torch.device("cpu")).split_shapes
    per_sample = 4 * max(math.prod(activations), math.prod(outputs))  # float32
    most = (MAX_MESSAGE_BYTES - MESSAGE_SLACK) // per_sample
    if spec.batch_size > most:
        raise ValueError(f"batch_size={spec.batch_size}: at the cut after {spec.split_layers} layer(s) a sample "
                         f"takes {per_sample:,} bytes and one message carries at most {MAX_MESSAGE_BYTES >> 20} MiB; "
                         f"use batches of at most {most}, or cut later (split_layers)")


def _finite(key: str, value: torch.Tensor) -> None:
    try:
        check_values(key, value)
    except InvalidUpdate as exc:
        raise ValueError(f"the supernode's answer: {exc}") from None


def _batch_budget(job: Job, edge_id: str) -> int:
    """The batches ``edge_id`` may send in a round: the job's epochs over its samples (its shard's
    count; in an own-data job the most it may claim: the job's cap, and its enrolment's)."""
    caps = [n for n in (job.max_samples, (job.sample_caps or {}).get(edge_id)) if n]
    samples = (job.samples or {}).get(edge_id) or min(caps, default=0)
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


def _activations(tensors: Mapping[str, torch.Tensor], job: Job, shape: tuple[int, ...]) -> torch.Tensor:
    activations = tensors.get("activations")
    if activations is None or activations.dtype != torch.float32 or tuple(activations.shape[1:]) != shape:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"a split batch needs float32 activations of shape "
                     f"(batch, {', '.join(map(str, shape))}) at this job's cut")
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
