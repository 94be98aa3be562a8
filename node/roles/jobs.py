"""Federated jobs on the chain: the JOB payload, and checking the entry node's signed orders.

A job's settings travel in its signed JOB transaction, so every edge node derives the same
model, partition and seeds from the chain alone. Floats are written with ``repr`` (the shortest
string that reads back to the same float), keeping the payload canonical.

Edge nodes and supernodes act only on orders the entry node signed: a ROUND transaction names
the global base to train from, a GLOBAL_MODEL transaction the one to evaluate. A model whose
hash differs from the signed one is refused before it is loaded. With them comes a signed
``Order`` to act now: it carries the deadline, is refused after it, and is carried out at most
once on each node (``OrderLog``), so an order cannot be replayed or stretched on the way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from pathlib import Path
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from base_package import data_pb2 as pb

import torch

from fl.federation import JobSpec, make_worker
from fl.serialize import model_hash, state_to_bytes
from fl.strategy import InvalidUpdate, Strategy, strategy_for_job
from fl.names import SCORE_METHODS
from node.chain.identity import Identity, verify_signature
from node.chain.rules import InvalidTransaction, Transaction, TxKind, check_payload, now_ms
from node.net.errors import refuse
from node.net.wire import signed_fields, tx_from_pb

_FLOAT_FIELDS = {f.name for f in dataclasses.fields(JobSpec) if f.type in ("float", float)}


def spec_to_payload(spec: JobSpec) -> dict[str, Any]:
    return {k: repr(v) if k in _FLOAT_FIELDS else v for k, v in dataclasses.asdict(spec).items()}


def spec_from_payload(payload: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec(**{k: float(v) if k in _FLOAT_FIELDS else v for k, v in payload.items()})
    except (TypeError, ValueError) as exc:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the JOB transaction's settings are not a job: {exc}") from None


@dataclass(frozen=True)
class Job:
    """A job as read from its (verified) JOB transaction."""

    job_id: str
    spec: JobSpec
    participants: tuple[str, ...]  # edge node ids; an edge node's index is its position
    evaluate_every_round: bool
    round_timeout: float
    tx: Transaction
    samples: Mapping[str, int] | None = None  # each edge node's training samples, from the job's partition
    own_data: bool = False  # edge nodes train on their own data: their sample counts are only capped
    max_samples: int = 0  # that cap (0: none; jobs recorded before it existed)
    recompute_partials: bool = False  # the entry node re-sums every partial from the updates it lists
    round_attempts: int = 1  # attempts at a round before the job fails
    sample_caps: Mapping[str, int] | None = None  # own-data jobs: the operator's cap per edge node, from its ENROLL
    scores: str = "off"  # contribution scores (fl/scores.py): off, flb, loo or gtg

    def strategy(self) -> Strategy:
        """A fresh instance of the job's strategy (its rule, sharing and options from the JOB)."""
        try:  # (the fewest samples of a participant account DP-SGD; unknown in an own-data job)
            return strategy_for_job(self.spec, min(self.samples.values()) if self.samples else 0)
        except ValueError as exc:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the JOB's strategy cannot be used: {exc}") from None

    @classmethod
    def from_tx(cls, tx: Transaction) -> "Job":
        """The job a JOB transaction describes; INVALID_ARGUMENT when its payload is not one."""
        try:
            check_payload(tx)
            return cls._parse(tx)
        except (InvalidTransaction, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the JOB transaction is not a job: {exc!r}"[:500]) from None

    @classmethod
    def _parse(cls, tx: Transaction) -> "Job":
        p = tx.payload
        options = p.get("options", {})
        if not isinstance(options, Mapping):
            raise TypeError("its options are not a map")
        participants = p.get("participants")
        if not isinstance(participants, list) or not all(isinstance(x, str) for x in participants):
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the JOB transaction lists no participants")
        samples = p.get("samples")
        if samples is not None and (not isinstance(samples, Mapping) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in samples.values())):
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the JOB's sample counts are not positive integers")
        caps = p.get("sample_caps")
        if caps is not None and not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in caps.values()):
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the JOB's sample caps are not positive integers")
        return cls(p["job_id"], spec_from_payload(p["spec"]), tuple(participants),
                   bool(options.get("openEval", True)), float(options.get("round_timeout", "300")), tx,
                   samples, bool(options.get("own_data", False)), int(options.get("max_samples", 0)),
                   bool(options.get("recompute_partials", False)), int(options.get("round_attempts", 1)), caps,
                   _score_method(options.get("scores", "off")))

    def check_samples(self, node_id: str, claimed: int) -> None:
        """Refuse a sample count the job does not allow: in shard mode the count follows from the
        job's partition (recorded in the JOB); with own data it is capped by ``max_samples`` and by
        the cap the operator gave the edge node at enrolment (recorded in the JOB too)."""
        expected = None if self.samples is None else self.samples.get(node_id)
        if expected is not None and claimed != expected:
            raise InvalidUpdate(f"{node_id} claims {claimed} training samples; its shard of the job holds {expected}")
        if self.own_data and self.max_samples and claimed > self.max_samples:
            raise InvalidUpdate(f"{node_id} claims {claimed} training samples; the job allows at most "
                                f"{self.max_samples} per edge node (max_samples)")
        enrolled = (self.sample_caps or {}).get(node_id)
        if self.own_data and enrolled is not None and claimed > enrolled:
            raise InvalidUpdate(f"{node_id} claims {claimed} training samples; it was enrolled to bring at most "
                                f"{enrolled}")


NUM_CLASSES = 10  # every dataset a job may name has ten classes (a supernode builds models without the data)


def prepare_model(spec: JobSpec, model_path: str | Path = "") -> tuple[JobSpec, bytes]:
    """The job's spec as the JOB records it and its first global model: for model=lora the base
    model at ``model_path`` is pinned by its hash, and the adapters every client starts with and
    keeps to itself (FFA-LoRA's frozen A) by theirs, so that an edge node on another base model or
    another library's initialisation is refused instead of silently spoiling the average."""
    worker = make_worker(spec, NUM_CLASSES, torch.device("cpu"), model_path)
    if spec.model == "lora":
        from fl.lm.base import base_model_hash

        spec = dataclasses.replace(spec, base_model=base_model_hash(model_path), lora_init=kept_adapters_hash(worker))
    return spec, state_to_bytes(worker.initial_shared())


def kept_adapters_hash(worker: Any) -> str:
    """The SHA-256 of the adapters a LoRA job's clients start with and keep to themselves (FFA's
    frozen A; the same for every client), "" when they keep none."""
    kept = worker.initial_personal(0)
    return model_hash(state_to_bytes(kept)) if kept else ""


def initial_model(spec: JobSpec, model_path: str | Path = "") -> bytes:
    """The job's first global model (its shared layers as safetensors bytes), built from the job's
    seed alone (and for model=lora the base model at ``model_path``): the entry node starts the
    job with it and an auditor rebuilds it to recompute."""
    worker = make_worker(spec, NUM_CLASSES, torch.device("cpu"), model_path)
    return state_to_bytes(worker.initial_shared())


def check_model_update(tx: Transaction, job: Job, round_number: int, key: bytes) -> None:
    """Raise :class:`InvalidUpdate` unless ``tx`` is a well-formed MODEL_UPDATE of this job and
    round, signed with ``key`` (its sender's registered key), claiming the samples the job allows:
    what a supernode checks of each edge node's result, and the entry node again of each update a
    supernode reports."""
    job_id = job.job_id
    check_payload(tx)
    if tx.kind != TxKind.MODEL_UPDATE:
        raise InvalidUpdate(f"expected a MODEL_UPDATE transaction, got {tx.kind}")
    if not tx.signed_by(key):
        raise InvalidUpdate(f"the MODEL_UPDATE of {tx.sender} has a bad signature")
    if tx.payload["job_id"] != job_id or tx.payload["round"] != round_number:
        raise InvalidUpdate(f"the update is for {tx.payload['job_id']} round {tx.payload['round']}, "
                            f"not {job_id} round {round_number}")
    job.check_samples(tx.sender, tx.payload["samples"])


def job_payload(job_id: str, spec: JobSpec, participants: list[str], conf: dict[str, Any],
                samples: list[int] | None = None, sample_caps: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The JOB's payload. ``samples``: each participant's training samples (in the order of the
    sorted participants) when edge nodes train on the job's partition; ``sample_caps``: in an
    own-data job, the caps the operator gave participants at enrolment."""
    payload = {"job_id": job_id, "spec": spec_to_payload(spec), "participants": sorted(participants),
               "options": {"openEval": conf["openEval"], "round_timeout": repr(float(conf["round_timeout"])),
                           "own_data": bool(conf["own_data"]), "max_samples": int(conf["max_samples"]),
                           "recompute_partials": bool(conf["recompute_partials"]),
                           "round_attempts": int(conf["round_attempts"]), "scores": str(conf["scores"])}}
    if samples is not None:
        payload["samples"] = dict(zip(sorted(participants), samples))
    if sample_caps:
        payload["sample_caps"] = {n: int(sample_caps[n]) for n in sorted(participants) if n in sample_caps}
    return payload


def _score_method(method: Any) -> str:
    if method not in SCORE_METHODS:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the JOB's scores option {method!r} is not one of "
                     f"{', '.join(SCORE_METHODS)}")
    return str(method)


def check_signed_by(tx: Transaction, kinds: tuple[TxKind, ...], entry_id: str, entry_key: bytes) -> None:
    """Refuse ``tx`` unless it is one of ``kinds`` and the entry node signed it."""
    if tx.kind not in kinds:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"expected a {' or '.join(kinds)} transaction, got {tx.kind}")
    if tx.sender != entry_id or not tx.signed_by(entry_key):
        raise refuse(grpc.StatusCode.UNAUTHENTICATED, f"the {tx.kind} transaction is not signed by the entry node")


def authorised_model(authority: Transaction, job_id: str) -> tuple[int, str]:
    """(round, model hash) that a verified ROUND or GLOBAL_MODEL transaction vouches for."""
    if authority.payload.get("job_id") != job_id:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the round's orders name another job")
    key = "global_hash" if authority.kind == TxKind.ROUND else "hash"
    return int(authority.payload["round"]), str(authority.payload[key])


ORDER_SKEW_MS = 5_000  # how far the entry node's clock may run ahead of a receiver's
MAX_ORDER_MS = 24 * 3600 * 1000  # an order's deadline is at most this far after its issue
MAX_OPEN_ORDERS = 10_000  # orders a node remembers (until their deadlines) to refuse replays


def order_fields(order: pb.Order) -> bytes:
    """The bytes the entry node signs for an order."""
    return signed_fields({"message": "order", "action": order.action, "job_id": order.job_id, "round": order.round,
                          "authority": order.authority, "evaluate_first": order.evaluate_first,
                          "issued_ms": order.issued_ms, "deadline_ms": order.deadline_ms})


def sign_order(identity: Identity, job: Job, authority: Transaction, deadline_ms: int,
               evaluate_first: bool = False) -> pb.Order:
    """The entry node's one-time order to act on ``authority`` (a ROUND: train; a GLOBAL_MODEL:
    evaluate) before ``deadline_ms``."""
    round_number, _ = authorised_model(authority, job.job_id)
    order = pb.Order(action="evaluate" if authority.kind == TxKind.GLOBAL_MODEL else "train", job_id=job.job_id,
                     round=round_number, authority=authority.hash, evaluate_first=evaluate_first,
                     issued_ms=now_ms(), deadline_ms=deadline_ms)
    order.signature = identity.sign(order_fields(order))
    return order


class OrderLog:
    """The orders a node has acted on, each remembered until its deadline: a replayed order is
    refused while it is fresh, and an old one is refused by its deadline."""

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}  # signature -> deadline_ms
        self._lock = threading.Lock()

    def admit(self, order: pb.Order) -> None:
        now = now_ms()
        if order.issued_ms > now + ORDER_SKEW_MS:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"the order is issued {(order.issued_ms - now) / 1000:.1f} s in the future: check the clocks (NTP)")
        if now > order.deadline_ms:
            raise refuse(grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"the order for round {order.round} of {order.job_id} is past its deadline (an old or replayed order)")
        with self._lock:
            if order.signature in self._seen:
                raise refuse(grpc.StatusCode.ALREADY_EXISTS,
                             f"the order for round {order.round} of {order.job_id} was already carried out here (a replay)")
            if len(self._seen) >= MAX_OPEN_ORDERS:  # forget the orders past their deadlines
                self._seen = {s: d for s, d in self._seen.items() if d >= now}
            if len(self._seen) >= MAX_OPEN_ORDERS:
                raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_OPEN_ORDERS} orders are open here at once")
            self._seen[bytes(order.signature)] = order.deadline_ms


@dataclass(frozen=True)
class Orders:
    """What a round request carries, once checked: the job, the round and model the entry node's
    ROUND (train) or GLOBAL_MODEL (evaluate) transaction vouches for, and its signed order."""

    job: Job
    authority: Transaction
    round: int
    model_hash: str
    order: pb.Order

    @property
    def evaluate_only(self) -> bool:
        return self.authority.kind == TxKind.GLOBAL_MODEL

    @property
    def deadline_ms(self) -> int:
        return self.order.deadline_ms

    def seconds_left(self) -> float:
        return seconds_left(self.order)


def recorded_number(text: Any, default: float = math.nan) -> float:
    """A number recorded on the chain (a decimal string) as a float; ``default`` when it is
    absent or not a number."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def signed_train_loss(tx: Transaction) -> float:
    """The training loss an edge node signed in its MODEL_UPDATE (0 when it gave none or no
    finite number): what a round's records sum, never the loss relayed beside it."""
    metrics = tx.payload.get("metrics")
    value = recorded_number(metrics.get("train_loss") if isinstance(metrics, dict) else None, 0.0)
    return value if math.isfinite(value) else 0.0


def seconds_left(order: pb.Order) -> float:
    """Seconds until ``order``'s deadline (negative once it has passed)."""
    return (order.deadline_ms - now_ms()) / 1000


JOB_NEEDED = "this node does not hold the order's JOB"  # (the start of the refusal: send the JOB with the order)
HELD_JOBS = 8  # verified JOBs a process keeps, by entry node and job id
_held_jobs: dict[tuple[str, str], Job] = {}
_held_lock = threading.Lock()


def _hold(entry_id: str, job: Job) -> None:
    with _held_lock:
        _held_jobs.pop((entry_id, job.job_id), None)
        _held_jobs[(entry_id, job.job_id)] = job
        while len(_held_jobs) > HELD_JOBS:
            del _held_jobs[next(iter(_held_jobs))]


def held_job(entry_id: str, job_id: str) -> Job:
    """A JOB this process checked with an earlier order: an order may come without it (a
    supernode sends an edge node the JOB, which names every participant, with its first order of
    the job only, so a round costs each edge node O(1) bytes, not O(N))."""
    with _held_lock:
        job = _held_jobs.pop((entry_id, job_id), None)
        if job is not None:
            _held_jobs[(entry_id, job_id)] = job  # (the most recently used last: evicted last)
    if job is None:
        raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"{JOB_NEEDED} ({job_id[:64]}): send it with the order")
    return job


@functools.lru_cache(maxsize=8)
def verified_job(kind: str, sender: str, payload: bytes, timestamp: int, signature: bytes, entry_id: str,
                 entry_key: bytes) -> Job:
    """The JOB of a round order, checked (signed by the entry node) and read once per process: it
    comes with every order, and names every participant (75 KB at a thousand edge nodes), so the
    edge nodes of one process (``--count``) would each parse and check it every round. Keyed by
    the exact bytes received; a refusal is not kept."""
    job_tx = tx_from_pb(pb.Transaction(kind=kind, sender=sender, payload=payload, timestamp=timestamp,
                                       signature=signature))
    check_signed_by(job_tx, (TxKind.JOB,), entry_id, entry_key)
    return Job.from_tx(job_tx)


def read_orders(request: pb.RoundRequest, entry_id: str, entry_key: bytes, log: OrderLog) -> Orders:
    """Check that the entry node signed the JOB (sent with the order, or with an earlier one of the
    job: ``held_job``), the round's authority (a ROUND to train, a GLOBAL_MODEL to evaluate) and a
    fresh order to act on them now, that this node has not acted on that order before, and read
    them. Supernodes and edge nodes act on nothing else."""
    authority = tx_from_pb(request.authority)
    try:
        check_payload(authority)
    except InvalidTransaction as exc:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the round's {authority.kind} is malformed: {exc}") from None
    if request.HasField("job"):
        job = verified_job(request.job.kind, request.job.sender, request.job.payload, request.job.timestamp,
                           request.job.signature, entry_id, entry_key)
        _hold(entry_id, job)
    else:
        job = held_job(entry_id, request.order.job_id)
    check_signed_by(authority, (TxKind.ROUND, TxKind.GLOBAL_MODEL), entry_id, entry_key)
    round_number, model_hash = authorised_model(authority, job.job_id)
    order = request.order
    if not verify_signature(entry_key, order.signature, order_fields(order)):
        raise refuse(grpc.StatusCode.UNAUTHENTICATED, "the round's order is not signed by the entry node")
    action = "evaluate" if authority.kind == TxKind.GLOBAL_MODEL else "train"
    if (order.action, order.job_id, order.round, order.authority) != (action, job.job_id, round_number, authority.hash):
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                     f"the order ({order.action} round {order.round} of {order.job_id}) does not match the "
                     f"{authority.kind} it came with ({action} round {round_number} of {job.job_id})")
    if not 0 < order.deadline_ms - order.issued_ms <= MAX_ORDER_MS:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the order's deadline is not within a day after its issue")
    log.admit(order)
    return Orders(job, authority, round_number, model_hash, order)
