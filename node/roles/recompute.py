"""``verify(recompute=True)``: re-derive every round's aggregates from the recorded updates.

The chain records, for every round of every job, the signed ROUND order (the global model the
round started from), each edge node's MODEL_UPDATE (the hash of its update and its sample
count), each supernode's AGGREGATE (the updates it checked and, when the job's rule decomposes,
the hash of its exact partial sum) and the entry node's GLOBAL_MODEL, which names the AGGREGATEs
it combined. Aggregation is
deterministic and exact (``fl.strategy``: integer partial sums, a fixed order), so anyone holding
the updates can run the job's strategy again and must get the same bytes, hence the same hashes.

This walks every job from its initial model (rebuilt from the JOB's seed), round by round,
replaying the strategy on a fresh instance (server optimisers rebuild their state), and reports
OK with counts, or the first round and node whose record does not follow from its inputs: a
supernode whose partial sum is not the sum of the updates it lists, or that lists an update of
another round, of a non-participant, or an edge node twice; or an entry node whose round order or
global model is not what the job's strategy makes of its inputs. An update that cannot be found
stops the recompute as CANNOT CHECK (``missing``), which is not a mismatch. A round with secret
randomness (a DP round's noise) is checked by ``Strategy.replay`` for everything but the noise's
values: its recorded settings and ε, the clipped mean, the noise's statistics, and the step the
rule took from the recorded noised mean, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from fl.serialize import model_hash, state_to_bytes, state_views
from fl.strategy import ExactSum, InvalidUpdate, Strategy, Update
from fl.scores import RoundScorer, Utility, flb_score, has_utility
from node.chain.rules import Transaction, TxKind
from node.roles.jobs import Job, initial_model

SCORE_TOLERANCE = 0.01  # recomputed accuracies and marginal scores may differ this much (float forward passes)

# (model hash, the node that should hold it) -> the model's bytes, checked against the hash; or None
FetchModel = Callable[[str, str], "bytes | None"]
# (rounds recomputed, rounds in all) -> None: how far a long recompute has got, for a progress bar
ProgressCallback = Callable[[int, int], None]


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
    skipped_jobs: int = 0  # recorded before aggregates were recomputable (their JOB names no aggregation)

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


def recompute_chain(transactions: Iterable[Transaction], fetch: FetchModel,
                    utility_for: Callable[[Job], Utility | None] | None = None,
                    model_path: str = "", progress: ProgressCallback | None = None) -> RecomputeReport:
    """Recompute every job in ``transactions`` (the chain's, in chain order). ``utility_for``: the
    scorer's validation utility for a job, where this node holds its data (scores' accuracies
    and marginal values are then recomputed too); ``model_path``: the base model of LoRA jobs
    (their initial adapters are rebuilt on it). ``progress(done, total)`` hears of every round
    recomputed (``total``: the finished rounds of every recomputable job), so a long recompute can
    show how far it has got; a chain with no such round is told ``(0, 0)`` once."""
    started = time.perf_counter()
    by_job: dict[str, list[Transaction]] = defaultdict(list)
    jobs: list[Transaction] = []
    for tx in transactions:
        if tx.kind == TxKind.JOB:
            jobs.append(tx)
        elif tx.kind in (TxKind.ROUND, TxKind.MODEL_UPDATE, TxKind.AGGREGATE, TxKind.GLOBAL_MODEL, TxKind.SCORE):
            by_job[tx.payload["job_id"]].append(tx)
    rounds = updates = skipped = 0
    total = _finished_rounds(jobs, by_job)
    for job_tx in jobs:
        if not _recomputable(job_tx):
            skipped += 1  # recorded before aggregates were exact and named: nothing to recompute against
            continue
        job = Job.from_tx(job_tx)
        replay = _JobReplay(job, by_job.get(job.job_id, []), fetch, utility_for, model_path)
        if progress is not None:
            replay.on_round = lambda here, before=rounds: progress(before + here, total)
        try:
            replay.run()
        except _Mismatch as bad:
            return RecomputeReport(False, len(jobs), rounds + replay.rounds, updates + replay.updates, job.job_id,
                                   bad.round, bad.node, bad.reason, time.perf_counter() - started, bad.missing,
                                   skipped)
        rounds, updates = rounds + replay.rounds, updates + replay.updates
    if progress is not None and total == 0:
        progress(0, 0)  # (otherwise the last round told ``done == total``)
    return RecomputeReport(True, len(jobs), rounds, updates, seconds=time.perf_counter() - started,
                           skipped_jobs=skipped)


def _recomputable(job_tx: Transaction) -> bool:
    """Whether the JOB names its aggregation: those recorded before aggregates were exact cannot be."""
    return "aggregation" in job_tx.payload.get("spec", {})


def _finished_rounds(jobs: list[Transaction], by_job: dict[str, list[Transaction]]) -> int:
    """The rounds the recompute will walk (one per GLOBAL_MODEL round of every recomputable job):
    the total a progress bar is drawn against."""
    return sum(len({t.payload["round"] for t in by_job.get(job_tx.payload.get("job_id", ""), [])
                    if t.kind == TxKind.GLOBAL_MODEL})
               for job_tx in jobs if _recomputable(job_tx))


class _JobReplay:
    """One job, round by round, on a fresh instance of its strategy."""

    def __init__(self, job: Job, txs: list[Transaction], fetch: FetchModel,
                 utility_for: Callable[[Job], Utility | None] | None = None, model_path: str = "") -> None:
        self.job, self.fetch, self.model_path = job, fetch, model_path
        self.strategy: Strategy = job.strategy()
        self.entry = job.tx.sender
        self.orders = {t.payload["round"]: t for t in txs if t.kind == TxKind.ROUND}
        self.globals = {t.payload["round"]: t for t in txs if t.kind == TxKind.GLOBAL_MODEL}
        self.aggregates = {t.hash: t for t in txs if t.kind == TxKind.AGGREGATE}
        self.model_updates = {t.hash: t for t in txs if t.kind == TxKind.MODEL_UPDATE}
        self.rounds = self.updates = 0
        self.on_round: Callable[[int], None] = lambda rounds: None  # told the rounds done after each (progress)
        self.scores: dict[int, dict[str, Transaction]] = defaultdict(dict)  # the entry node's, by round and node
        for t in txs:
            if t.kind == TxKind.SCORE and t.sender == self.entry and t.payload["round"] > 0:
                self.scores[t.payload["round"]][t.payload["node"]] = t
        scored = self.scores and job.scores != "off" and not job.own_data and has_utility(job.spec)
        self.scorer = RoundScorer(job.scores, utility_for(job) if scored and utility_for is not None else None, job.spec)
        self.round_updates: dict[str, tuple[Update, int, int]] = {}  # this round's, by edge node (scores)

    def run(self) -> None:
        spec = self.job.spec
        if spec.model == "lora":  # rebuilt only on the very base model the JOB pinned
            from fl.lm.base import held_base_model

            held = held_base_model(self.model_path)
            if held != spec.base_model:
                raise _Mismatch(0, self.entry, f"the job's base model {spec.base_model[:16]}… is not on this node "
                                f"(model_path holds {held[:40]})", missing=True)
        try:
            current = initial_model(self.job.spec, self.model_path)
        except (ValueError, OSError) as exc:  # a LoRA job whose base model is not on this node
            raise _Mismatch(0, self.entry, f"the job's initial model cannot be rebuilt here: {exc}", missing=True) from None
        for round_number in sorted(self.globals):  # rounds that finished; one under way is not judged yet
            recorded = self.globals[round_number]
            order = self.orders.get(round_number)
            if order is None or order.payload["global_hash"] != model_hash(current):
                raise _Mismatch(round_number, self.entry, "the ROUND order does not name the global model the "
                                "previous round made (or the job's initial model)")
            if order.payload.get("config", {}) != self.strategy.configure_train(round_number):
                raise _Mismatch(round_number, self.entry, "the ROUND order's training options are not the "
                                f"job's strategy's: {order.payload.get('config', {})!r}")
            if order.payload.get("validate", {}) != self.strategy.validate_config(round_number):
                raise _Mismatch(round_number, self.entry, "the ROUND order's options for checking updates are not "
                                f"the job's strategy's: {order.payload.get('validate', {})!r}")
            reference = state_views(current)
            self.round_updates = {}
            combined, samples = self._combine(round_number, recorded, reference)
            if self.job.scores != "off":
                self._check_scores(round_number, reference)
            if recorded.payload["samples"] != samples:
                raise _Mismatch(round_number, self.entry, f"the GLOBAL_MODEL weighs {recorded.payload['samples']} "
                                f"samples; the AGGREGATEs it names hold {samples}")
            try:
                models = self._recorded_models(round_number, recorded)
                current = state_to_bytes(self.strategy.replay(reference, combined, recorded.payload, models))
            except (InvalidUpdate, ValueError) as exc:
                raise _Mismatch(round_number, self.entry, f"the round does not follow from its records: {exc}") from None
            if model_hash(current) != recorded.payload["hash"]:
                raise _Mismatch(round_number, self.entry, f"the GLOBAL_MODEL {recorded.payload['hash'][:16]}… is not "
                                f"what the {self.strategy.name} rule makes of the recorded updates "
                                f"({model_hash(current)[:16]}…)")
            self.rounds += 1
            self.on_round(self.rounds)

    def _recorded_models(self, round_number: int, recorded: Transaction) -> dict[str, dict[str, torch.Tensor]]:
        """The states the GLOBAL_MODEL names beside the model (a DP round's noised mean), fetched
        from the entry node and checked against their hashes."""
        named = recorded.payload.get("models", {})
        if not isinstance(named, dict):
            raise _Mismatch(round_number, self.entry, "the GLOBAL_MODEL's models field is not a mapping")
        found = {}
        for name, state_hash in named.items():
            data = self.fetch(str(state_hash), self.entry)
            if data is None:
                raise _Mismatch(round_number, self.entry, f"the round's {name} state {str(state_hash)[:16]}… cannot be "
                                "found on the entry node", missing=True)
            found[name] = dict(state_views(data))
        return found

    def _combine(self, round_number: int, recorded: Transaction,
                 reference: dict[str, torch.Tensor]) -> tuple[ExactSum | list[Update], int]:
        """The AGGREGATEs the GLOBAL_MODEL names, each checked, combined as the entry node had to."""
        named = recorded.payload.get("aggregates", [])
        aggregates = []
        for tx_hash in named:
            aggregate = self.aggregates.get(tx_hash)
            if aggregate is None or aggregate.payload["round"] != round_number:
                raise _Mismatch(round_number, self.entry, f"the GLOBAL_MODEL names AGGREGATE {tx_hash[:16]}…, which "
                                f"is not an AGGREGATE of round {round_number} on the chain")
            aggregates.append(aggregate)
        if not aggregates:
            raise _Mismatch(round_number, self.entry, "a GLOBAL_MODEL that names no AGGREGATE")
        merged = self.strategy.accumulator(reference) if self.strategy.decomposable else None
        updates: list[Update] = []
        senders: set[str] = set()
        samples = 0
        for aggregate in sorted(aggregates, key=lambda t: t.sender):
            sn = aggregate.sender
            mine = [self._update(round_number, sn, h, reference, senders) for h in aggregate.payload["updates"]]
            claimed = sum(self.model_updates[h].payload["samples"] for h in aggregate.payload["updates"])
            if claimed != aggregate.payload["samples"]:
                raise _Mismatch(round_number, sn, f"the AGGREGATE weighs {aggregate.payload['samples']} samples; "
                                f"its updates hold {claimed}")
            samples += aggregate.payload["samples"]
            if merged is None:
                updates.extend(mine)
                continue
            try:
                partial = self.strategy.accumulator(reference)
                for update in mine:
                    partial.add(update, checked=True)
                recomputed = model_hash(state_to_bytes(partial.to_state()))
                merged.merge(partial)
            except (InvalidUpdate, ValueError) as exc:
                raise _Mismatch(round_number, sn, f"its updates cannot be summed: {exc}") from None
            if aggregate.payload.get("hash") != recomputed:
                raise _Mismatch(round_number, sn, f"its partial sum {str(aggregate.payload.get('hash'))[:16]}… is "
                                f"not the sum of the {len(mine)} updates it lists ({recomputed[:16]}…)")
        return (merged if merged is not None else updates), samples

    def _update(self, round_number: int, sn: str, tx_hash: str, reference: dict[str, torch.Tensor],
                senders: set[str]) -> Update:
        """A listed MODEL_UPDATE, checked: of this job and round, by a participant not seen before
        in the round; its bytes found (checked against their hash) and valid for the model."""
        tx = self.model_updates.get(tx_hash)
        if tx is None or tx.payload["round"] != round_number:
            raise _Mismatch(round_number, sn, f"it lists {tx_hash[:16]}…, which is no MODEL_UPDATE of round "
                            f"{round_number} on the chain")
        if tx.sender not in self.job.participants or tx.sender in senders:
            raise _Mismatch(round_number, sn, f"it lists an update of edge node {tx.sender}, which is not a "
                            "participant or was already counted this round")
        senders.add(tx.sender)
        update_hash = tx.payload["hash"]
        data = self.fetch(update_hash, sn)
        if data is None:
            raise _Mismatch(round_number, sn, f"update {update_hash[:16]}… (edge node {tx.sender}) cannot be "
                            "found: neither this node nor the supernode that checked it holds it", missing=True)
        try:
            update = self.strategy.validate(reference, Update(state_views(data), tx.payload["samples"], update_hash))
        except (InvalidUpdate, ValueError) as exc:
            raise _Mismatch(round_number, sn, f"it accepted update {update_hash[:16]}…, which is invalid: {exc}") from None
        self.updates += 1
        self.round_updates[tx.sender] = (update, tx.payload["size"], tx.payload["samples"])
        return update

    def _check_scores(self, round_number: int, reference: dict[str, torch.Tensor]) -> None:
        """The round's SCOREs against ``fl.scores`` run again on the round's updates: the flags,
        samples, sizes and uploads exactly, FLB's score from its coefficient; where this node holds
        the job's data, the coefficient, validation accuracy and marginal scores within
        ``SCORE_TOLERANCE`` (they come from float forward passes, which differ in the last bits
        between machines)."""
        recorded, updates = self.scores.get(round_number, {}), self.round_updates
        if set(recorded) != set(updates):
            raise _Mismatch(round_number, self.entry, f"the round's SCOREs name {len(recorded)} edge nodes; "
                            f"{len(updates)} updates were combined")
        scores, validation = self.scorer.score(round_number, self.strategy, reference, updates)
        for node, score in scores.items():
            p = recorded[node].payload
            exact = {"samples": score.samples, "size": score.size, "uploads": score.uploads, "flags": score.flags}
            for key, value in exact.items():
                if p.get(key) != value:
                    raise _Mismatch(round_number, self.entry, f"{node}'s SCORE says {key} {p.get(key)!r}; the round "
                                    f"gives {value!r}")
            coefficient = float(p.get("coefficient", "nan"))
            flb = 0.0 if score.flags else flb_score(score.samples, score.size, score.uploads, coefficient)
            if not math.isclose(float(p["score"]), flb, rel_tol=1e-5, abs_tol=1e-5):
                raise _Mismatch(round_number, self.entry, f"{node}'s FLB score {p['score']} is not the formula's {flb:.6f}")
            if self.scorer.utility is None:
                continue
            close = {"coefficient": (coefficient, score.coefficient),
                     "marginal": (float(p.get("marginal", "nan")), score.marginal if score.marginal is not None else 0.0),
                     "validation": (float(p.get("validation", "nan")), validation or 0.0)}
            for key, (given, again) in close.items():
                if key == "marginal" and score.marginal is None:
                    continue
                if not abs(given - again) <= SCORE_TOLERANCE:
                    raise _Mismatch(round_number, self.entry, f"{node}'s SCORE {key} {given:.6f} is not the "
                                    f"recomputed {again:.6f}")
        self.scorer.commit(scores, validation)
