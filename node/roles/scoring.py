"""The entry node's contribution scores: ``fl.scores`` over each round's checked updates, as
SCORE transactions sealed with the round (per edge node and round), and once per job at its end
(round 0: the job's totals).

The scorer's validation set is the one the simulation uses (at most 1,000 of the participants'
test samples, drawn by the job's seed), rebuilt from the job's partition with the entry node's
``data_dir``; an own-data job, or a DP job (whose budget does not cover evaluating clean
aggregates), has none: its FLB coefficient is 1 and it has no marginal scores. Scoring needs every
update at the entry node, so a job with scores needs ``recompute_partials`` (the default) or a
rule that does not decompose. A restarted entry node counts each edge node's uploads and the last
validation accuracy back from the chain's SCOREs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from fl.federation import job_data
from fl.scores import RoundScorer, Score, ValidationUtility, has_utility, job_totals, validation_utility
from fl.strategy import Strategy, Update
from node.chain.identity import Identity
from node.chain.rules import Transaction, TxKind, fixed
from node.chain.store import BlockStore
from node.roles.jobs import Job


@dataclasses.dataclass(frozen=True)
class RoundScores:
    """A round's scores, until the round is sealed (then they count: uploads, U(all))."""

    scores: dict[str, Score]
    validation: float | None


class JobScorer:
    """One job's scores, round by round (``job.scores`` must not be ``off``)."""

    def __init__(self, job: Job, data_dir: str) -> None:
        self.job = job
        utility = None if job.own_data or not has_utility(job.spec) else scorer_utility(job, data_dir)
        self.scorer = RoundScorer(job.scores, utility, job.spec)
        self.rounds: list[dict[str, Score]] = []

    def score(self, round_number: int, strategy: Strategy, reference: Mapping[str, torch.Tensor],
              updates: Mapping[str, tuple[Update, int, int]]) -> RoundScores:
        """Score the round's checked ``updates`` (edge node -> (update, bytes on the wire, samples
        claimed)); call before ``strategy.finalize`` (subsets are aggregated from the round's start)."""
        return RoundScores(*self.scorer.score(round_number, strategy, reference, updates))

    def records(self, round_number: int, scored: RoundScores, identity: Identity) -> list[Transaction]:
        """A SCORE per edge node of the round."""
        return [self._record(round_number, node, score, identity, scored.validation)
                for node, score in sorted(scored.scores.items())]

    def sealed(self, scored: RoundScores) -> None:
        """The round counts: its uploads and validation accuracy carry into the next."""
        self.scorer.commit(scored.scores, scored.validation)
        self.rounds.append(scored.scores)

    def totals(self, identity: Identity) -> list[Transaction]:
        """The job's SCOREs (round 0): every edge node's totals."""
        return [self._record(0, node, score, identity, None) for node, score in sorted(job_totals(self.rounds).items())]

    def rebuild(self, store: BlockStore) -> None:
        """After a restart: the uploads, scores and last validation accuracy the chain holds."""
        rounds, validation = round_scores(store, self.job.job_id, self.job.tx.sender)
        self.rounds = [rounds[r] for r in sorted(rounds)]
        for scores in self.rounds:
            self.scorer.commit(scores, None)
        self.scorer.commit({}, validation)

    def _record(self, round_number: int, node: str, score: Score, identity: Identity,
                validation: float | None) -> Transaction:
        payload: dict[str, Any] = {"job_id": self.job.job_id, "round": round_number, "node": node,
                                   "score": fixed(score.flb), "method": self.job.scores, "samples": score.samples,
                                   "size": score.size, "uploads": score.uploads, "flags": list(score.flags)}
        if round_number:
            payload["coefficient"] = fixed(score.coefficient)
        if score.marginal is not None:
            payload["marginal"] = fixed(score.marginal)
        if validation is not None:
            payload["validation"] = fixed(validation)
        return Transaction.create(TxKind.SCORE, payload, identity)


def scorer_utility(job: Job, data_dir: str) -> ValidationUtility | None:
    """The scorer's validation set (see the module docstring), or None when the data is not here."""
    try:
        dataset, splits = job_data(job.spec, data_dir)
    except (ValueError, OSError):
        return None
    model = job.spec.build_model(dataset.num_classes)
    shared = job.strategy().shared_keys(model.base_keys(), model.head_keys())
    return validation_utility(job.spec, dataset, splits, shared)


def round_scores(store: BlockStore, job_id: str, scorer: str) -> tuple[dict[int, dict[str, Score]], float | None]:
    """A job's per-round SCOREs from ``scorer`` (its entry node) on the chain, by round and edge
    node, and the last validation accuracy recorded."""
    rounds: dict[int, dict[str, Score]] = {}
    validation = None
    for _, tx in store.transactions(kind=TxKind.SCORE, job_id=job_id):
        p = tx.payload
        if p["round"] == 0 or tx.sender != scorer:
            continue
        rounds.setdefault(p["round"], {})[p["node"]] = Score(
            int(p.get("samples", 0)), int(p.get("size", 0)), int(p.get("uploads", 0)), float(p["score"]),
            float(p["marginal"]) if "marginal" in p else None, [str(f) for f in p.get("flags", [])],
            float(p.get("coefficient", 1.0)))
        if "validation" in p:
            validation = float(p["validation"])
    return rounds, validation
