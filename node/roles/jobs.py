"""Federated jobs on the chain: the JOB payload, and checking the entry node's signed orders.

A job's settings travel in its signed JOB transaction, so every edge node derives the same
model, partition and seeds from the chain alone. Floats are written with ``repr`` (the shortest
string that reads back to the same float), keeping the payload canonical.

Edge nodes and supernodes act only on orders the entry node signed: a ROUND transaction names
the global base to train from, a GLOBAL_MODEL transaction the one to evaluate. A model whose
hash differs from the signed one is refused before it is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import grpc

from fl.federation import JobSpec
from node.chain.rules import Transaction, TxKind
from node.chain.identity import verify_signature
from node.net.errors import refuse

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

    @classmethod
    def from_tx(cls, tx: Transaction) -> "Job":
        p = tx.payload
        options = p.get("options", {})
        participants = p.get("participants")
        if not isinstance(participants, list) or not all(isinstance(x, str) for x in participants):
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the JOB transaction lists no participants")
        return cls(p["job_id"], spec_from_payload(p["spec"]), tuple(participants),
                   bool(options.get("openEval", True)), float(options.get("round_timeout", "300")), tx)


def job_payload(job_id: str, spec: JobSpec, participants: list[str], conf: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": job_id, "spec": spec_to_payload(spec), "participants": sorted(participants),
            "options": {"openEval": conf["openEval"], "round_timeout": repr(float(conf["round_timeout"]))}}


def check_signed_by(tx: Transaction, kinds: tuple[TxKind, ...], entry_id: str, entry_key: bytes) -> None:
    """Refuse ``tx`` unless it is one of ``kinds`` and the entry node signed it."""
    if tx.kind not in kinds:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"expected a {' or '.join(kinds)} transaction, got {tx.kind}")
    if tx.sender != entry_id or not verify_signature(entry_key, tx.signature, bytes.fromhex(tx.hash)):
        raise refuse(grpc.StatusCode.UNAUTHENTICATED, f"the {tx.kind} transaction is not signed by the entry node")


def authorised_model(authority: Transaction, job_id: str) -> tuple[int, str]:
    """(round, model hash) that a verified ROUND or GLOBAL_MODEL transaction vouches for."""
    if authority.payload.get("job_id") != job_id:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the round's orders name another job")
    key = "global_hash" if authority.kind == TxKind.ROUND else "hash"
    return int(authority.payload["round"]), str(authority.payload[key])
