"""What the explorer's pages show, read from one supernode: its copy of the chain (the store),
its view of the network (membership) and, on the entry node, the evaluations its checkpoint
keeps. Nothing here writes; each function returns plain values a template renders."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from base_package import data_pb2 as pb
from node.chain.audit import VerifyReport, verify_chain
from node.chain.rules import Transaction, TxKind
from node.roles.reports import privacy_report, score_report
from node.roles.supernode import Supernode

PAGE = 25  # rows per page of blocks and models
NODE_TRANSACTIONS = 50  # a node's latest transactions shown on its page


@dataclass
class VerifyStatus:
    """The last ``verify`` the explorer ran (one at a time: a long chain takes a while)."""

    report: VerifyReport | None = None
    finished_ms: int = 0
    seconds: float = 0.0
    running: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ExplorerData:
    """The read model over ``node`` that every page uses."""

    def __init__(self, node: Supernode) -> None:
        self.node = node
        self.store = node.ledger.store
        self.verified = VerifyStatus()

    # --- chain -----------------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        node = self.node
        edges = node.list_nodes(pb.EN).nodes
        return {"node_id": node.node_id, "address": node.address, "entry": node.is_entry,
                "head": node.ledger.head(), "final_height": node.final_height(), "pending": node.pending_count(),
                "blocks": self.store.latest_blocks(limit=10), "jobs": self.jobs()[-5:][::-1],
                "supernodes": len(node.supernodes_pb().nodes), "edge_nodes": len(edges),
                "alive_edge_nodes": sum(e.alive for e in edges), "verified": self.verified}

    def blocks(self, below: int | None) -> tuple[list[Any], int | None]:
        """A page of block headers, newest first, and the height the next page starts below."""
        rows = self.store.latest_blocks(below=below, limit=PAGE)
        return rows, (rows[-1].height if len(rows) == PAGE and rows[-1].height > 0 else None)

    def block(self, height: int) -> dict[str, Any] | None:
        stored = self.store.stored_blocks_from(height, limit=1)
        if not stored or stored[0].block.height != height:
            return None
        head = self.node.ledger.head()
        return {"block": stored[0].block, "hash": stored[0].stored_hash,
                "has_next": head is not None and head.height > height}

    def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        found = self.store.transaction(tx_hash)
        if found is None:
            return None
        height, position, tx = found
        return {"tx": tx, "height": height, "position": position, "hash": tx_hash,
                "model": self.store.model_record(tx.payload["hash"]) if isinstance(tx.payload.get("hash"), str) else None}

    def find(self, text: str) -> list[tuple[str, str]]:
        return self.store.find(text) if text.strip() else []

    def verify(self) -> VerifyStatus:
        """Run ``verify`` now unless one is running (then its result comes when it ends)."""
        status = self.verified
        if not status.lock.acquire(blocking=False):
            return status
        try:
            status.running = True
            started = time.perf_counter()
            status.report = verify_chain(self.store, genesis_hash=self.node.genesis_hash)
            status.seconds = time.perf_counter() - started
            status.finished_ms = int(time.time() * 1000)
        finally:
            status.running = False
            status.lock.release()
        return status

    # --- models ----------------------------------------------------------------------------------
    def models(self, job_id: str | None, kind: str | None, page: int) -> tuple[list[Any], bool]:
        """A page of model records (newest first) and whether there are more."""
        records = self.store.model_records(job_id=job_id or None, kind=kind or None)[::-1]
        start = page * PAGE
        return records[start:start + PAGE], len(records) > start + PAGE

    def model(self, model_hash: str) -> dict[str, Any] | None:
        """A model's records, whether this node holds its bytes, what made it and what it made."""
        records = self.store.model_records(model_hash=model_hash)
        if not records:
            return None
        made_from: list[dict[str, Any]] = []
        made_into: list[Any] = []
        for record in records:
            found = self.store.transaction(record.tx_hash)
            if found is None:
                continue
            tx = found[2]
            if tx.kind == TxKind.GLOBAL_MODEL:
                made_from += [self._aggregate(h) for h in self._aggregates_of(tx)]
            elif tx.kind == TxKind.AGGREGATE:
                made_from.append(self._aggregate(tx.hash))
            elif tx.kind == TxKind.MODEL_UPDATE:
                made_into += [t for _, t in self.store.transactions(kind=TxKind.AGGREGATE, job_id=record.job_id,
                                                                       round=record.round)
                              if tx.hash in t.payload["updates"]]
        started = [t for _, t in self.store.transactions(kind=TxKind.ROUND, job_id=records[0].job_id)
                   if t.payload["global_hash"] == model_hash]
        held = self.node.models.get(model_hash)
        return {"hash": model_hash, "records": records, "held_size": None if held is None else held.size,
                "made_from": [m for m in made_from if m is not None], "made_into": made_into, "started": started}

    def model_bytes(self, model_hash: str) -> bytes | None:
        held = self.node.models.get(model_hash)
        return None if held is None else held.data

    def _aggregates_of(self, global_tx: Transaction) -> list[str]:
        named = global_tx.payload.get("aggregates")
        if isinstance(named, list):
            return [str(h) for h in named]
        return [t.hash for _, t in self.store.transactions(kind=TxKind.AGGREGATE, job_id=global_tx.payload["job_id"],
                                                            round=global_tx.payload["round"])]

    def _aggregate(self, tx_hash: str) -> dict[str, Any] | None:
        found = self.store.transaction(tx_hash)
        if found is None:
            return None
        tx = found[2]
        updates = [self.store.transaction(h) for h in tx.payload["updates"]]
        return {"tx": tx, "updates": [u[2] for u in updates if u is not None]}

    # --- jobs ------------------------------------------------------------------------------------
    def jobs(self) -> list[dict[str, Any]]:
        running = self._running()
        return [self._summary(job, running) for job in self.store.jobs()]

    def job_ids(self) -> list[str]:
        return [job["job_id"] for job in self.store.jobs()]

    def job(self, job_id: str) -> dict[str, Any] | None:
        job = self._find(job_id)
        if job is None:
            return None
        rounds, evaluated = self._round_rows(job_id)
        privacy = next((j for j in privacy_report(self.store).jobs if j.job_id == job_id), None)
        scores = next((j for j in score_report(self.store).jobs if j.job_id == job_id), None)
        failed = [tx for _, tx in self.store.transactions(kind=TxKind.ROUND_FAILED, job_id=job_id)]
        return {**job, "round_rows": rounds, "edges": _last_edges(evaluated), "evaluated": bool(evaluated),
                "privacy": privacy, "scores": scores, "failed": failed, "entry": self.node.is_entry}

    def curves(self, job_id: str) -> tuple[list[Any], list[float]] | None:
        """The job's rounds as the chart draws them, and each edge node's final accuracy."""
        if self._find(job_id) is None:
            return None
        rounds, evaluated = self._round_rows(job_id)
        return _curve(rounds), [e["accuracy"] for e in _last_edges(evaluated)]

    def compared(self) -> dict[str, list[Any]]:
        """Every job with a finished round, by "job (strategy, rule)", for one chart comparing them."""
        out = {}
        for job in self.jobs():
            if job["rounds_done"]:
                spec = job["spec"]
                out[f"{job['job_id']} ({spec.get('strategy')}, {spec.get('aggregation')})"] = \
                    _curve(self._round_rows(job["job_id"])[0])
        return out

    def _find(self, job_id: str) -> dict[str, Any] | None:
        job = next((j for j in self.store.jobs() if j["job_id"] == job_id), None)
        return None if job is None else self._summary(job, self._running())

    def _summary(self, job: dict[str, Any], running: tuple[str, str]) -> dict[str, Any]:
        finished = [r for r in self.store.rounds(job["job_id"]) if r["global_hash"]]
        return {**job, "rounds_done": len(finished), "rounds": job["spec"].get("rounds"),
                "state": running[1] if running[0] == job["job_id"] else ""}

    def _running(self) -> tuple[str, str]:
        """(job id, state) of the entry node's current job; empty elsewhere."""
        coordinator = self.node.coordinator
        if coordinator is None:
            return "", ""
        status = coordinator.status()
        return status.job_id, status.state

    def _round_rows(self, job_id: str) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
        """Each round of the job (the chain's records with the entry node's evaluations), and the
        evaluations by round."""
        evaluated = {int(row["round"]): row for row in self._evaluations(job_id)}
        excluded: dict[int, list[Transaction]] = {}
        for _, tx in self.store.transactions(kind=TxKind.EXCLUDED, job_id=job_id):
            excluded.setdefault(tx.payload["round"], []).append(tx)
        globals_ = {tx.payload["round"]: tx for _, tx in self.store.transactions(kind=TxKind.GLOBAL_MODEL, job_id=job_id)}
        rounds = []
        for r in self.store.rounds(job_id):
            metrics = globals_[r["round"]].payload.get("metrics", {}) if r["round"] in globals_ else {}
            ev = evaluated.get(r["round"], {})
            rounds.append({**r, "train_loss": _number(metrics.get("train_loss")),
                           "updates": int(_number(metrics.get("updates"), 0)),
                           "accuracy": _number(ev.get("acc_weighted")), "acc_min": _number(ev.get("acc_min")),
                           "acc_max": _number(ev.get("acc_max")), "loss": _number(ev.get("loss")),
                           "excluded": excluded.get(r["round"], [])})
        return rounds, evaluated

    def _evaluations(self, job_id: str) -> list[dict[str, Any]]:
        coordinator = self.node.coordinator
        return coordinator.evaluations(job_id) if coordinator is not None else []

    # --- network ---------------------------------------------------------------------------------
    def network(self) -> dict[str, Any]:
        supernodes = list(self.node.supernodes_pb().nodes)
        edges = list(self.node.list_nodes(pb.EN).nodes)
        by_supernode: dict[str, list[Any]] = {}
        for edge in edges:
            by_supernode.setdefault(edge.supernode, []).append(edge)
        return {"supernodes": supernodes, "edges": by_supernode, "registered": self.store.nodes(),
                "enrolments": {r["node_id"]: r for r in self.store.enrolment_records()},
                "this": self.node.node_id, "entry_address": self.node.entry_address}

    def node_page(self, node_id: str) -> dict[str, Any] | None:
        registered = next((n for n in self.store.nodes() if n.node_id == node_id), None)
        enrolment = next((r for r in self.store.enrolment_records() if r["node_id"] == node_id), None)
        live = next((n for n in [*self.node.supernodes_pb().nodes, *self.node.list_nodes(pb.EN).nodes]
                     if n.node_id == node_id), None)
        if registered is None and enrolment is None and live is None:
            return None
        return {"node_id": node_id, "registered": registered, "enrolment": enrolment, "live": live,
                "transactions": self.store.transactions_by(node_id, NODE_TRANSACTIONS)}


@dataclass(frozen=True)
class _CurvePoint:
    """One round as ``fl.plot.accuracy_figure`` reads it (NaN where not evaluated)."""

    round: int
    acc_weighted: float
    acc_min: float
    acc_max: float
    loss: float
    train_loss: float


def _curve(rounds: list[dict[str, Any]]) -> list[_CurvePoint]:
    return [_CurvePoint(r["round"], r["accuracy"], r["acc_min"], r["acc_max"], r["loss"], r["train_loss"])
            for r in rounds if r["global_hash"]]


def _last_edges(evaluated: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each edge node's evaluation in the last evaluated round that kept them, by node id."""
    last = next((row["edges"] for _, row in sorted(evaluated.items(), reverse=True) if row.get("edges")), [])
    return sorted(last, key=lambda e: e["node_id"])


def _number(value: Any, default: float = math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default
