"""``verify(recompute=True)``: re-derive every round's aggregates from the recorded updates.

The chain records, for every round of every job, the signed ROUND order (the global model the
round started from), each edge node's MODEL_UPDATE (the hash of its update and its sample
count), each supernode's AGGREGATE (the updates it checked and, when the job's rule decomposes,
the hash of its exact partial sum) and the entry node's GLOBAL_MODEL. Aggregation is
deterministic and exact (``fl.strategy``: integer partial sums, a fixed order), so anyone holding
the updates can run the job's strategy again and must get the same bytes, hence the same hashes.

This walks every job from its initial model (rebuilt from the JOB's seed), round by round,
replaying the strategy on a fresh instance (server optimisers rebuild their state), and reports
OK with counts, or the first round and node whose record does not follow from its inputs: a
supernode whose partial sum is not the sum of the updates it lists, or an entry node whose
global model is not what the strategy makes of them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from fl.federation import ClientWorker, split_state
from fl.serialize import model_hash, state_to_bytes, state_views
from fl.strategy import ExactSum, InvalidUpdate, Strategy, Update
from node.chain.rules import Transaction, TxKind
from node.roles.jobs import Job

# (model hash, the node that should hold it) -> the model's bytes, checked against the hash; or None
FetchModel = Callable[[str, str], "bytes | None"]


@dataclass(frozen=True)
class RecomputeReport:
    ok: bool
    jobs: int = 0
    rounds: int = 0
    updates: int = 0
    job_id: str = ""
    bad_round: int = -1
    bad_node: str = ""
    reason: str = ""
    seconds: float = 0.0
    missing: bool = False  # not a mismatch: an update could not be found, so its round was not checked

    def __str__(self) -> str:
        if self.ok:
            return (f"OK: recomputed {self.rounds} rounds of {self.jobs} jobs from {self.updates} recorded updates "
                    f"({self.seconds:.2f} s)")
        verdict = "CANNOT CHECK" if self.missing else "MISMATCH in"
        return f"{verdict} {self.job_id} round {self.bad_round}, node {self.bad_node}: {self.reason}"


class _Mismatch(Exception):
    def __init__(self, round_number: int, node: str, reason: str, missing: bool = False) -> None:
        super().__init__(reason)
        self.round, self.node, self.reason, self.missing = round_number, node, reason, missing


def recompute_chain(transactions: Iterable[Transaction], fetch: FetchModel) -> RecomputeReport:
    """Recompute every job in ``transactions`` (the chain's, in chain order)."""
    started = time.perf_counter()
    by_job: dict[str, list[Transaction]] = defaultdict(list)
    jobs: list[Transaction] = []
    for tx in transactions:
        if tx.kind == TxKind.JOB:
            jobs.append(tx)
        elif tx.kind in (TxKind.ROUND, TxKind.MODEL_UPDATE, TxKind.AGGREGATE, TxKind.GLOBAL_MODEL):
            by_job[tx.payload["job_id"]].append(tx)
    rounds = updates = 0
    for job_tx in jobs:
        job = Job.from_tx(job_tx)
        replay = _JobReplay(job, by_job.get(job.job_id, []), fetch)
        try:
            replay.run()
        except _Mismatch as bad:
            return RecomputeReport(False, len(jobs), rounds + replay.rounds, updates + replay.updates, job.job_id,
                                   bad.round, bad.node, bad.reason, time.perf_counter() - started, bad.missing)
        rounds, updates = rounds + replay.rounds, updates + replay.updates
    return RecomputeReport(True, len(jobs), rounds, updates, seconds=time.perf_counter() - started)


class _JobReplay:
    """One job, round by round, on a fresh instance of its strategy."""

    def __init__(self, job: Job, txs: list[Transaction], fetch: FetchModel) -> None:
        self.job, self.fetch = job, fetch
        self.strategy: Strategy = job.strategy()
        self.entry = job.tx.sender
        self.orders = {t.payload["round"]: t for t in txs if t.kind == TxKind.ROUND}
        self.globals = {t.payload["round"]: t for t in txs if t.kind == TxKind.GLOBAL_MODEL}
        self.aggregates: dict[int, list[Transaction]] = defaultdict(list)
        for t in txs:
            if t.kind == TxKind.AGGREGATE:
                self.aggregates[t.payload["round"]].append(t)
        self.model_updates = {(t.payload["round"], t.payload["hash"]): t for t in txs if t.kind == TxKind.MODEL_UPDATE}
        self.rounds = self.updates = 0

    def run(self) -> None:
        current = self._initial_model()
        for round_number in sorted(self.globals):  # rounds that finished; one under way is not judged yet
            order = self.orders.get(round_number)
            if order is None or order.payload["global_hash"] != model_hash(current):
                raise _Mismatch(round_number, self.entry, "the ROUND order does not name the global model the "
                                "previous round made (or the job's initial model)")
            reference = state_views(current)
            combined = self._combine(round_number, reference)
            try:
                current = state_to_bytes(self.strategy.finalize(reference, combined))
            except (InvalidUpdate, ValueError) as exc:
                raise _Mismatch(round_number, self.entry, f"the recorded updates cannot be aggregated: {exc}") from None
            recorded = self.globals[round_number].payload["hash"]
            if model_hash(current) != recorded:
                raise _Mismatch(round_number, self.entry, f"the GLOBAL_MODEL {recorded[:16]}… is not what the "
                                f"{self.strategy.name} rule makes of the recorded updates ({model_hash(current)[:16]}…)")
            self.rounds += 1

    def _initial_model(self) -> bytes:
        worker = ClientWorker(self.job.spec, 10, torch.device("cpu"))
        return state_to_bytes(split_state(worker.model.full_state(), worker.shared_keys))

    def _combine(self, round_number: int, reference: dict[str, torch.Tensor]) -> ExactSum | list[Update]:
        aggregates = sorted(self.aggregates.get(round_number, []), key=lambda t: t.sender)
        if not aggregates:
            raise _Mismatch(round_number, self.entry, "a GLOBAL_MODEL with no AGGREGATE behind it")
        merged = self.strategy.accumulator(reference) if self.strategy.decomposable else None
        updates: list[Update] = []
        for aggregate in aggregates:
            sn, listed = aggregate.sender, aggregate.payload["updates"]
            mine = [self._update(round_number, sn, h, reference) for h in listed]
            if sum(u.num_samples for u in mine) != aggregate.payload["samples"]:
                raise _Mismatch(round_number, sn, f"the AGGREGATE weighs {aggregate.payload['samples']} samples; "
                                f"its updates hold {sum(u.num_samples for u in mine)}")
            if merged is None:
                updates.extend(mine)
                continue
            partial = self.strategy.accumulator(reference)
            for update in mine:
                partial.add(update, checked=True)
            recomputed = model_hash(state_to_bytes(partial.to_state()))
            if aggregate.payload.get("hash") != recomputed:
                raise _Mismatch(round_number, sn, f"its partial sum {str(aggregate.payload.get('hash'))[:16]}… is "
                                f"not the sum of the {len(mine)} updates it lists ({recomputed[:16]}…)")
            merged.merge(partial)
        return merged if merged is not None else updates

    def _update(self, round_number: int, sn: str, update_hash: str, reference: dict[str, torch.Tensor]) -> Update:
        tx = self.model_updates.get((round_number, update_hash))
        if tx is None:
            raise _Mismatch(round_number, sn, f"it lists update {update_hash[:16]}…, which no MODEL_UPDATE of "
                            f"round {round_number} records")
        data = self.fetch(update_hash, sn)
        if data is None:
            raise _Mismatch(round_number, sn, f"update {update_hash[:16]}… (edge node {tx.sender}) cannot be "
                            "found: neither this node nor the supernode that checked it holds it", missing=True)
        update = Update(state_views(data), tx.payload["samples"], update_hash)
        try:
            self.strategy.validate(reference, update)
        except InvalidUpdate as exc:
            raise _Mismatch(round_number, sn, f"it accepted update {update_hash[:16]}…, which is invalid: {exc}") from None
        self.updates += 1
        return update
