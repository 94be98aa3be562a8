"""Federated strategies: one abstract :class:`Strategy`, one file per aggregation rule.

Modelled on Flower's server-app strategies, fitted to a hierarchy. A job makes two independent
choices plus a client hook:

- sharing (config key ``strategy``): ``fedper`` shares the base layers (each client keeps its
  head), ``fedavg`` everything, ``local`` nothing;
- aggregation (config key ``aggregation``): ``mean`` (sample-weighted FedAvg), ``fedavgm``
  (server momentum), ``fedadam`` (adaptive server optimiser), ``median``, ``trimmed_mean`` and
  ``krum`` (Byzantine-robust rules);
- ``proximal_mu`` > 0: FedProx's proximal term on the clients (``client.TrainHook``);
- ``dp``: differential privacy as a wrapper around the rule (``dp.DifferentialPrivacy``).

The simulation and the network nodes call only these verbs: ``configure_train``, ``validate``,
``accumulator`` (decomposable rules: ``ExactSum.add``/``merge``), ``finalize``, or ``aggregate``
for all of them at once; ``can_run`` (may the round run: a privacy budget), ``round_record`` and
``round_models`` (what the round's record holds beyond the model) and ``replay`` (an auditor's
finalize from the recorded inputs). Results are deterministic and exact (see ``exact.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fl.names import AGGREGATION_OPTIONS, COMMON_OPTIONS
from fl.options import check_options, fit_problem, options_of
from fl.strategy.base import (MAX_ABS, MAX_SAMPLES, MAX_TOTAL, InvalidUpdate, StateDict, Strategy, Update,
                              check_update, sort_updates)
from fl.privacy import PrivacySpec
from fl.strategy.dp import DifferentialPrivacy
from fl.strategy.exact import ExactSum
from fl.strategy.fedadam import FedAdam
from fl.strategy.fedavgm import FedAvgM
from fl.strategy.client import TrainHook
from fl.strategy.krum import Krum
from fl.strategy.mean import Mean
from fl.strategy.median import Median
from fl.strategy.sharing import SHARINGS, shared_keys
from fl.strategy.trimmed_mean import TrimmedMean

AGGREGATIONS: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Mean, FedAvgM, FedAdam, Median, TrimmedMean, Krum)
}
assert tuple(AGGREGATIONS) == tuple(AGGREGATION_OPTIONS)  # fl/names.py lists the same rules


def build_strategy(sharing: str = "fedper", aggregation: str = "mean", **options: Any) -> Strategy:
    """The strategy for ``sharing`` and ``aggregation``; ``options`` are the rule's options and
    ``proximal_mu``. An unknown rule, an option that does not apply or a value out of range is a
    ValueError naming it."""
    try:
        cls = AGGREGATIONS[aggregation]
    except KeyError:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}") from None
    return cls(sharing, **options)


def strategy_for_job(job: Any, min_samples: int = 0) -> Strategy:
    """The strategy of a ``fl.federation.JobSpec`` (its fields hold every option; only those of
    its rule and the client options are used), wrapped in :class:`DifferentialPrivacy` when the
    job sets ``dp``. ``min_samples``: the fewest training samples of a participant (accounts
    DP-SGD; 0 when unknown, as on a supernode, which does not account)."""
    keys = options_of(job.aggregation) | set(COMMON_OPTIONS)
    strategy = build_strategy(job.strategy, job.aggregation, **{k: getattr(job, k) for k in sorted(keys)})
    if getattr(job, "dp", "off") == "off":
        return strategy
    spec = PrivacySpec(job.dp, job.dp_clip, job.dp_noise, job.dp_epsilon, job.dp_delta, job.dp_clipping,
                       job.dp_target_quantile, job.dp_clip_lr, job.dp_count_noise)
    return DifferentialPrivacy(strategy, spec, job.rounds, clients=job.num_clients, min_samples=min_samples,
                               batch_size=job.batch_size, local_epochs=job.local_epochs)


def check_fits(strategy: Strategy, num_clients: int) -> None:
    """ValueError when ``strategy``'s rule cannot work with ``num_clients`` clients."""
    strategy.check_fits(num_clients)


def check_given_options(aggregation: str, given: Iterable[str]) -> None:
    """ValueError naming an explicitly given option that does not apply to ``aggregation``."""
    check_options(aggregation, given)


__all__ = [
    "AGGREGATIONS", "MAX_ABS", "MAX_SAMPLES", "MAX_TOTAL", "SHARINGS", "DifferentialPrivacy", "ExactSum", "FedAdam", "FedAvgM",
    "InvalidUpdate", "Krum", "Mean", "Median", "StateDict", "Strategy", "TrainHook", "TrimmedMean", "Update",
    "build_strategy", "check_fits", "check_given_options", "check_options", "check_update", "fit_problem",
    "options_of", "shared_keys", "sort_updates", "strategy_for_job",
]
