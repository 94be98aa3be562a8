"""Aggregation strategies over plain state dicts: no I/O, no networking.

Modelled on Flower's ``Strategy``: a strategy takes the current global state and the clients'
updates and returns the next global state. Which keys a strategy averages is its only
difference: FedPer averages the base layers (heads stay on the clients), FedAvg averages
everything, Local averages nothing. A supernode's partial aggregate and the entry node's
combination of partials are the same sample-weighted average, so one function serves both.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

StateDict = dict[str, torch.Tensor]


class InvalidUpdate(ValueError):
    """An update does not fit the model: wrong keys, shapes or dtypes, or non-finite values."""


@dataclass(frozen=True)
class Update:
    """One client's (or one supernode's partial) contribution."""

    state: Mapping[str, torch.Tensor]
    num_samples: int


def validate_update(reference: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`InvalidUpdate` unless ``state`` has exactly the reference's keys, shapes
    and dtypes, and only finite values."""
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    if missing or extra:
        raise InvalidUpdate(f"update keys differ from the model: missing {missing}, unexpected {extra}")
    for key, ref in reference.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise InvalidUpdate(f"{key}: expected a tensor, got {type(value).__name__}")
        if value.shape != ref.shape:
            raise InvalidUpdate(f"{key}: shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        if value.dtype != ref.dtype:
            raise InvalidUpdate(f"{key}: dtype {value.dtype}, expected {ref.dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InvalidUpdate(f"{key}: contains NaN or infinite values")


def weighted_average(updates: Sequence[Update], keys: Iterable[str]) -> StateDict:
    """Sample-weighted mean of ``keys`` over ``updates`` (accumulated in float64)."""
    if not updates:
        raise ValueError("nothing to aggregate: no updates")
    counts = [u.num_samples for u in updates]
    if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c <= 0 for c in counts):
        raise InvalidUpdate(f"sample counts must be positive integers, got {counts}")
    total = sum(int(c) for c in counts)
    weights = [int(c) / total for c in counts]
    out: StateDict = {}
    for key in keys:
        first = updates[0].state[key]
        if not first.is_floating_point():  # counters and the like: keep the first
            out[key] = first.clone()
            continue
        acc = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
        for update, weight in zip(updates, weights):
            acc.add_(update.state[key].to(torch.float64), alpha=weight)
        out[key] = acc.to(first.dtype)
    return out


class Strategy(ABC):
    """Turns the global state and the round's updates into the next global state."""

    name: str = ""

    @abstractmethod
    def shared_keys(self, base_keys: Sequence[str], head_keys: Sequence[str]) -> list[str]:
        """The keys clients send and the server averages."""

    def aggregate(
        self,
        global_state: Mapping[str, torch.Tensor],
        updates: Sequence[Update],
        base_keys: Sequence[str],
        head_keys: Sequence[str],
    ) -> StateDict:
        """Validate every update against the shared part of ``global_state`` and average it.

        Keys the strategy does not share are carried over from ``global_state`` unchanged.
        """
        keys = self.shared_keys(base_keys, head_keys)
        if keys and not updates:
            raise ValueError(f"{self.name}: nothing to aggregate, no client returned an update")
        reference = {k: global_state[k] for k in keys}
        for index, update in enumerate(updates):
            try:
                validate_update(reference, update.state)
            except InvalidUpdate as exc:
                raise InvalidUpdate(f"update {index}: {exc}") from None
        new_state = {k: v.clone() for k, v in global_state.items()}
        if keys:
            new_state.update(weighted_average(updates, keys))
        return new_state


class FedPer(Strategy):
    """Average the base layers; every client keeps its own head."""

    name = "fedper"

    def shared_keys(self, base_keys: Sequence[str], head_keys: Sequence[str]) -> list[str]:
        return list(base_keys)


class FedAvg(Strategy):
    """Average every layer: one global model."""

    name = "fedavg"

    def shared_keys(self, base_keys: Sequence[str], head_keys: Sequence[str]) -> list[str]:
        return [*base_keys, *head_keys]


class Local(Strategy):
    """No federation: each client trains alone (the baseline that shows what sharing buys)."""

    name = "local"

    def shared_keys(self, base_keys: Sequence[str], head_keys: Sequence[str]) -> list[str]:
        return []


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (FedPer, FedAvg, Local)}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
