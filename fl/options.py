"""Which options each aggregation rule takes, their allowed ranges, and whether a rule can work
with a job's number of clients. Torch-free, so ``config.py`` checks them when it loads and the
strategies (``fl.strategy``) apply the very same rules."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fl.names import AGGREGATION_OPTIONS, AGGREGATIONS, COMMON_OPTIONS, OPTION_DEFAULTS


def _finite(check: Callable[[float], bool], text: str) -> Callable[[Any], str | None]:
    return lambda v: None if math.isfinite(v) and check(v) else text


# option -> a check that returns None when the value is allowed, else what is expected
OPTION_RULES: dict[str, Callable[[Any], str | None]] = {
    "proximal_mu": _finite(lambda v: v >= 0, ">= 0 (0 turns FedProx off)"),
    "update_norm_bound": _finite(lambda v: v >= 0, ">= 0 (a multiple of the global model's norm; 0: no bound)"),
    "update_norm_clip": lambda v: None if v in (0, 1) else "0 (refuse an update beyond the bound) or 1 (clip it)",
    "server_lr": _finite(lambda v: v > 0, "> 0"),
    "server_momentum": _finite(lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_lr": _finite(lambda v: v > 0, "> 0"),
    "adam_beta1": _finite(lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": _finite(lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_tau": _finite(lambda v: v > 0, "> 0"),
    "trim_beta": _finite(lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "krum_f": lambda v: None if v >= 0 else ">= 0",
    "krum_m": lambda v: None if v >= 1 else ">= 1",
    "distill_alpha": _finite(lambda v: v >= 0, ">= 0 (0: clients do not distil)"),
    "distill_l2": lambda v: None if v in (0, 1) else "0 (KL divergence) or 1 (squared error of the logits)",
}


def options_of(aggregation: str) -> set[str]:
    """The config keys the aggregation rule ``aggregation`` uses (the options that go with
    every rule, ``COMMON_OPTIONS``, are not among them)."""
    try:
        return set(AGGREGATION_OPTIONS[aggregation])
    except KeyError:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}") from None


def rule_of(option: str) -> str | None:
    """The aggregation rule an option belongs to (None for the options of every rule)."""
    return next((name for name, options in AGGREGATION_OPTIONS.items() if option in options), None)


def check_options(aggregation: str, given: Iterable[str]) -> None:
    """Raise ValueError naming the first of ``given`` (option keys a user set explicitly) that
    does not apply to ``aggregation``, e.g. ``krum_f applies to aggregation='krum', not 'median'``."""
    applies = options_of(aggregation) | set(COMMON_OPTIONS)
    for key in sorted(given):
        if key in applies:
            continue
        owner = rule_of(key)
        if owner is None:
            raise ValueError(f"unknown option {key!r} for aggregation {aggregation!r}; "
                             f"it takes: {', '.join(sorted(applies))}")
        raise ValueError(f"{key} applies to aggregation={owner!r}, not {aggregation!r}")


def check_value(key: str, value: Any) -> Any:
    """``value`` as the option's type (int or float) if it is allowed, else ValueError."""
    default = OPTION_DEFAULTS[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if isinstance(default, int):
        if not isinstance(value, numbers.Integral):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    problem = OPTION_RULES[key](value)
    if problem is not None:
        raise ValueError(f"{key}: {value!r} is out of range, expected {problem}")
    return value


def trim_count(trim_beta: float, n: int) -> int:
    """Updates the trimmed mean cuts at each end, per coordinate, of ``n``: ``int(beta * n)``."""
    return int(trim_beta * n)


def fit_problem(aggregation: str, num_clients: int, options: Mapping[str, Any]) -> str | None:
    """Why ``aggregation`` with ``options`` (missing ones take their defaults) cannot work with
    ``num_clients`` clients, or None when it can."""
    def opt(key: str) -> Any:
        return options.get(key, OPTION_DEFAULTS[key])

    n = num_clients
    if n < 1:
        return f"a job needs at least one client, got {n}"
    if aggregation == "krum":
        f, m = opt("krum_f"), opt("krum_m")
        if n < 2 * f + 3:
            return (f"krum with krum_f={f} needs at least 2*krum_f+3 = {2 * f + 3} clients, the job has {n}; "
                    f"use more clients or a smaller krum_f")
        if m > n - f:
            return (f"krum with krum_m={m} selects more updates than the n-krum_f = {n - f} that can be "
                    f"honest among {n} clients; use krum_m <= {n - f}")
    if aggregation == "trimmed_mean":
        beta = opt("trim_beta")
        cut = trim_count(beta, n)
        if 2 * cut >= n:
            return f"trimmed_mean with trim_beta={beta} cuts 2*{cut} of {n} updates, leaving none"
        if beta > 0 and cut == 0:
            return (f"trimmed_mean with trim_beta={beta} cuts int({beta}*{n}) = 0 updates per end with {n} "
                    f"clients (a plain mean); use trim_beta >= {1 / n:.3g} or more clients")
    return None
