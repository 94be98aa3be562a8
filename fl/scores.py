"""Contribution scores of a round's updates, the same in the simulation and on the entry node.

Three things per participant and round, from the round's updates alone (and, for the marginal
score, a validation set the scorer holds):

- **flags** for free riders: ``unchanged`` (its update is the model it was sent), ``copy of X``
  (its update equals another's of the round, X the one with the smaller hash), ``negligible``
  (its delta is under 10⁻³ of the round's median delta norm: it weighs next to nothing);
- **FLB's score**, for the users of FLB: (uploads × update size in MiB + training samples) ×
  the round's accuracy improvement coefficient, where uploads counts the updates the node has
  sent in the job so far (this one included) and the coefficient is 1 + (U(all) − U_prev(all)),
  the change of the aggregate's validation accuracy over the round (1 when there is no validation
  set). A flagged update scores 0;
- a **marginal contribution**: leave-one-out (``loo``: U(all) − U(all without i), n + 1
  evaluations) or GTG-Shapley (``gtg``, Liu et al. 2022, "GTG-Shapley: Efficient and Accurate
  Participant Contribution Evaluation in Federated Learning": a within-round Monte-Carlo Shapley
  value over permutations that each start with a different participant, truncated once the
  remaining gain is under 1 % of the whole, until no estimate moves more than 1 % of the whole
  in a pass of n permutations, at most 3 passes).

U(S) is the validation accuracy of the model the job's own strategy makes from the updates in S
(a fresh copy of it: server state untouched). When the job shares the whole model (``fedavg``)
the model is evaluated as it is; when it shares only the base (``fedper``), the base's features
(the input of the first head layer) are scored by a linear probe: a ridge regression to one-hot
labels fit on the first half of the validation set, accuracy on the second half, so a base is
judged by what a head can make of it. U(∅) is the round's starting model.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fl.names import SCORE_METHODS as METHODS
from fl.strategy import Strategy, Update, sort_updates
from fl.strategy.base import delta_norm, float_keys

NEGLIGIBLE = 1e-3  # a delta under this share of the round's median delta norm is flagged
GTG_TRUNCATION = 0.01  # stop a permutation once the remaining gain is under this share of U(all) − U(∅)
GTG_TOLERANCE = 0.01  # ... and the passes once no estimate moves more than this share of U(all) − U(∅)
GTG_MAX_PASSES = 3  # passes of n permutations at most
RIDGE = 1e-3  # the linear probe's ridge (times the features' mean square)
VALIDATION_SAMPLES = 1000  # the scorer's validation set: at most this many of the clients' test samples
SCORE_SEED_CLIENT = 2**31 - 1  # (job seed, round, this): the seed of a round's GTG-Shapley permutations

Utility = Callable[[Mapping[str, torch.Tensor]], float]


@dataclass
class Score:
    """One participant's scores in one round (``marginal``: None when not computed)."""

    samples: int
    size: int  # bytes of its update on the wire
    uploads: int  # updates it has sent in the job so far, this one included
    flb: float = 0.0
    marginal: float | None = None
    flags: list[str] = field(default_factory=list)
    coefficient: float = 1.0  # FLB's accuracy improvement coefficient this round


def free_rider_flags(reference: Mapping[str, torch.Tensor], updates: Mapping[str, Update]) -> dict[str, list[str]]:
    """The flags of each participant's update (see the module docstring)."""
    keys = float_keys(reference)
    flags: dict[str, list[str]] = {node: [] for node in updates}
    norms = {}
    for node, update in updates.items():
        norms[node] = delta_norm(update.state, reference, keys)
        if norms[node] == 0.0:
            flags[node].append("unchanged")
    seen: dict[str, str] = {}
    for node in sorted(updates, key=lambda n: (updates[n].model_hash, n)):
        digest = updates[node].model_hash or repr([updates[node].state[k].sum().item() for k in keys])
        if digest in seen and "unchanged" not in flags[node]:
            flags[node].append(f"copy of {seen[digest]}")
        seen.setdefault(digest, node)
    median = sorted(norms.values())[len(norms) // 2] if norms else 0.0
    for node, norm in norms.items():
        if 0.0 < norm < NEGLIGIBLE * median:
            flags[node].append("negligible")
    return flags


def flb_score(samples: int, size: int, uploads: int, coefficient: float) -> float:
    """FLB's reward: (uploads × size in MiB + samples) × the accuracy improvement coefficient."""
    return (uploads * size / 2**20 + samples) * coefficient


class SubsetAggregates:
    """The global shared state the job's strategy makes of any subset of the round's (checked)
    updates, from a copy of it (its server state is left alone). A rule that decomposes sums each
    subset from every update's exact sum, made once; another rule gets the subset's updates."""

    def __init__(self, strategy: Strategy, reference: Mapping[str, torch.Tensor], updates: Mapping[str, Update]) -> None:
        self.strategy, self.reference, self.updates = strategy, reference, updates
        self.sums = {}
        if strategy.decomposable:
            for node, update in updates.items():
                self.sums[node] = strategy.accumulator(reference)
                self.sums[node].add(update, checked=True)

    def __call__(self, members: Sequence[str]) -> dict[str, torch.Tensor]:
        if not members:
            return dict(self.reference)
        strategy = copy.deepcopy(self.strategy)
        if not strategy.decomposable:
            return strategy.finalize(self.reference, sort_updates([self.updates[n] for n in members]))
        total = strategy.accumulator(self.reference)
        for node in members:
            total.merge(self.sums[node])
        return strategy.finalize(self.reference, total)


def leave_one_out(utility: Callable[[Sequence[str]], float], nodes: Sequence[str]) -> dict[str, float]:
    """U(all) − U(all without i) for every i."""
    everyone = utility(nodes)
    return {node: everyone - utility([n for n in nodes if n != node]) for node in nodes}


def gtg_shapley(utility: Callable[[Sequence[str]], float], nodes: Sequence[str], seed: int) -> dict[str, float]:
    """GTG-Shapley's within-round estimate (see the module docstring); ``seed`` fixes the
    permutations, so the same round scores the same everywhere."""
    rng = random.Random(seed)
    cache: dict[frozenset[str], float] = {}

    def u(members: Sequence[str]) -> float:
        key = frozenset(members)
        if key not in cache:
            cache[key] = utility(sorted(key))
        return cache[key]

    nothing, everyone = u([]), u(nodes)
    if abs(everyone - nothing) <= GTG_TRUNCATION * max(abs(everyone), 1e-12):  # the round moved nothing
        return {node: 0.0 for node in nodes}
    totals = {node: 0.0 for node in nodes}
    count = 0
    previous: dict[str, float] | None = None
    for _ in range(GTG_MAX_PASSES):
        for first in nodes:  # guided: each participant leads one permutation per pass
            rest = [n for n in nodes if n != first]
            rng.shuffle(rest)
            members: list[str] = []
            before = nothing
            for node in [first, *rest]:
                if abs(everyone - before) < GTG_TRUNCATION * abs(everyone - nothing):
                    break  # truncated: the rest add (almost) nothing
                members.append(node)
                after = u(members)
                totals[node] += after - before
                before = after
            count += 1
        estimate = {node: totals[node] / count for node in nodes}
        gain = abs(everyone - nothing)
        if previous is not None and all(abs(estimate[n] - previous[n]) <= GTG_TOLERANCE * gain for n in nodes):
            return estimate
        previous = estimate
    return estimate


class ValidationUtility:
    """Accuracy of a shared state on a validation set (see the module docstring: the model as it
    is when it is all shared, a linear probe on the base's features otherwise)."""

    def __init__(self, model: torch.nn.Module, shared_keys: Sequence[str], head_keys: Sequence[str],
                 head_layer: str, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        self.model, self.x, self.y, self.num_classes = model.eval(), x, y, num_classes
        self.shared_keys = list(shared_keys)
        self.probe = not set(head_keys) <= set(shared_keys)
        self._features: list[torch.Tensor] = []
        if self.probe:
            getattr(model, head_layer).register_forward_pre_hook(lambda _m, args: self._features.append(args[0]))

    @torch.no_grad()
    def __call__(self, shared: Mapping[str, torch.Tensor]) -> float:
        self.model.load_part(shared, self.shared_keys)
        if not self.probe:
            return float((self.model(self.x).argmax(1) == self.y).double().mean())
        self._features.clear()
        self.model(self.x)
        features = self._features.pop().flatten(1).double()
        features = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)  # a bias
        half = len(features) // 2
        fit, target = features[:half], torch.nn.functional.one_hot(self.y[:half], self.num_classes).double()
        gram = fit.T @ fit
        gram += torch.eye(len(gram), dtype=torch.float64) * RIDGE * max(float(gram.diagonal().mean()), 1e-12)
        weights = torch.linalg.solve(gram, fit.T @ target)
        return float(((features[half:] @ weights).argmax(1) == self.y[half:]).double().mean())


def has_utility(job: Any) -> bool:
    """Whether ``job``'s aggregates can be scored on a validation set: a model whose shared layers
    are parameters of one classifier (not outputs, not a split model's halves, not LoRA adapters),
    and no DP (scoring subsets would spend budget the accountant does not see). Otherwise only
    FLB's formula and the flags are scored."""
    return job.dp == "off" and job.strategy in ("fedper", "fedavg") and job.model != "lora"


def validation_utility(job: Any, dataset: Any, splits: Sequence[Any], shared_keys: Sequence[str]) -> ValidationUtility:
    """The scorer's utility for ``job`` (a ``JobSpec``): at most ``VALIDATION_SAMPLES`` of the
    clients' test samples (``splits``: their indices into ``dataset``), drawn by the job's seed, the
    same in the simulation and on the entry node."""
    import numpy as np

    pool = np.concatenate([s.test for s in splits])
    chosen = torch.from_numpy(np.random.default_rng(job.seed).permutation(pool)[:VALIDATION_SAMPLES])
    model = job.build_model(dataset.num_classes)
    return ValidationUtility(model, shared_keys, model.head_keys(), model.head_names[0], dataset.x[chosen],
                             dataset.y[chosen], dataset.num_classes)


def score_round(strategy: Strategy, reference: Mapping[str, torch.Tensor], updates: Mapping[str, Update],
                sizes: Mapping[str, int], samples: Mapping[str, int], uploads: Mapping[str, int], method: str,
                utility: Utility | None, previous: float | None, seed: int) -> tuple[dict[str, Score], float | None]:
    """Every participant's :class:`Score` for one round, and U(all) (None without a utility),
    which the next round's FLB coefficient starts from. ``updates``: the validated updates by
    participant; ``previous``: U(all) of the round before (None: U of ``reference``)."""
    if method not in METHODS or method == "off":
        raise ValueError(f"scores: {method!r} is not a scoring method; choose one of {', '.join(METHODS[1:])}")
    flags = free_rider_flags(reference, updates)
    nodes = sorted(updates)
    subsets: dict[frozenset[str], float] = {}

    aggregate = SubsetAggregates(strategy, reference, updates) if utility is not None else None

    def u(members: Sequence[str]) -> float:
        key = frozenset(members)
        if key not in subsets:
            assert utility is not None and aggregate is not None
            subsets[key] = utility(aggregate(sorted(key)))
        return subsets[key]

    everyone = u(nodes) if utility is not None else None
    if utility is not None and previous is None:
        previous = u([])
    coefficient = 1.0 + (everyone - previous) if everyone is not None and previous is not None else 1.0
    marginal: dict[str, float] = {}
    if utility is not None and method == "loo":
        marginal = leave_one_out(u, nodes)
    elif utility is not None and method == "gtg":
        marginal = gtg_shapley(u, nodes, seed)
    scores = {}
    for node in nodes:
        score = Score(samples[node], sizes[node], uploads[node], flags=flags[node], marginal=marginal.get(node),
                      coefficient=coefficient)
        score.flb = 0.0 if score.flags else flb_score(score.samples, score.size, score.uploads, coefficient)
        scores[node] = score
    return scores, everyone


class RoundScorer:
    """A job's scores round after round (the simulation, the entry node and an auditor alike):
    each participant's uploads so far and the last round's U(all) carry into the next round once
    it counts (``commit``)."""

    def __init__(self, method: str, utility: Utility | None, job: Any) -> None:
        self.method, self.utility, self.job = method, utility, job  # job: a JobSpec (its round seeds)
        self.uploads: dict[str, int] = {}
        self.previous: float | None = None  # U(all) of the last round that counted

    def score(self, round_number: int, strategy: Strategy, reference: Mapping[str, torch.Tensor],
              updates: Mapping[str, tuple[Update, int, int]]) -> tuple[dict[str, Score], float | None]:
        """The round's scores and U(all), from each participant's checked update, its size on the
        wire and its sample count; call before ``strategy.finalize`` (subsets are aggregated
        from the round's starting state)."""
        return score_round(strategy, reference, {n: u for n, (u, _, _) in updates.items()},
                           {n: size for n, (_, size, _) in updates.items()},
                           {n: samples for n, (_, _, samples) in updates.items()},
                           {n: self.uploads.get(n, 0) + 1 for n in updates}, self.method, self.utility, self.previous,
                           self.job.round_seed(round_number, SCORE_SEED_CLIENT))

    def commit(self, scores: Mapping[str, Score], validation: float | None) -> None:
        """The round counts: its uploads and U(all) carry into the next."""
        self.uploads.update({node: score.uploads for node, score in scores.items()})
        if validation is not None:
            self.previous = validation


def job_totals(rounds: Sequence[Mapping[str, Score]]) -> dict[str, Score]:
    """Each participant's scores over the job: samples as last reported, ``uploads`` the rounds
    it contributed to, FLB and marginal scores summed (marginal: None if never computed), and
    every flag it earned with the number of rounds (``unchanged ×3``)."""
    totals: dict[str, Score] = {}
    counts: dict[str, dict[str, int]] = {}
    for scores in rounds:
        for node, score in scores.items():
            total = totals.setdefault(node, Score(score.samples, 0, 0))
            total.samples, total.size = score.samples, score.size
            total.uploads += 1
            total.flb += score.flb
            if score.marginal is not None:
                total.marginal = (total.marginal or 0.0) + score.marginal
            for flag in score.flags:
                kind = flag.split(" of ")[0] if flag.startswith("copy of") else flag
                counts.setdefault(node, {})[kind] = counts.get(node, {}).get(kind, 0) + 1
    for node, flags in counts.items():
        totals[node].flags = [f"{kind} ×{count}" for kind, count in sorted(flags.items())]
    return totals
