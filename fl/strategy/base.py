"""The one abstract strategy, the update it combines, and the checks every update passes.

A round with any strategy: ``configure_train`` gives the options clients train with (signed into
the round order on the network); clients send back their shared tensors; ``validate`` checks each
update; a decomposable rule folds updates into an exact ``accumulator`` (on every supernode, the
partials merged on the entry node), another rule gets the list of validated updates; ``finalize``
makes the next global shared state. ``aggregate`` does all of it in one call.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fl.options import check_options, check_value, fit_problem, options_of
from fl.names import COMMON_OPTIONS, OPTION_DEFAULTS
from fl.strategy.sharing import SHARINGS, shared_keys

if TYPE_CHECKING:
    from fl.strategy.exact import ExactSum

StateDict = dict[str, torch.Tensor]

MAX_ABS = 2**20  # the largest |value| an update may hold (keeps exact sums from overflowing)
MAX_SAMPLES = 2**31 - 1  # the most samples one update may claim
MAX_TOTAL = 2**35  # an exact sum refuses to reach this many samples


class InvalidUpdate(ValueError):
    """An update does not fit the model: wrong keys, shapes or dtypes, values that are not
    finite or exceed the bounds, or an impossible sample count."""


@dataclass(frozen=True)
class Update:
    """One client's contribution: its shared tensors and how many samples it trained on."""

    state: Mapping[str, torch.Tensor]  # the shared tensors only
    num_samples: int
    model_hash: str = ""  # SHA-256 hex of the update's safetensors bytes: canonical order, tie-breaks


def check_samples(count: Any) -> int:
    """``count`` as an int if it is a possible sample count (1 ≤ count ≤ 2³¹−1)."""
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or not 1 <= count <= MAX_SAMPLES:
        raise InvalidUpdate(f"sample counts must be integers in [1, {MAX_SAMPLES}], got {count!r}")
    return int(count)


def check_layout(reference: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidUpdate` unless ``state`` has exactly the reference's keys, and
    tensors of the reference's shapes and dtypes."""
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


def check_values(key: str, value: torch.Tensor) -> None:
    """Finite and within ±2²⁰, checked in one pass (``aminmax``: a NaN anywhere makes both NaN)."""
    if not value.is_floating_point() or value.numel() == 0:
        return
    low, high = (float(x) for x in torch.aminmax(value))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidUpdate(f"{key}: contains NaN or infinite values")
    if low < -MAX_ABS or high > MAX_ABS:
        raise InvalidUpdate(f"{key}: values up to {max(-low, high):.6g} exceed the bound 2**20 = {MAX_ABS}")


def check_update(reference: Mapping[str, torch.Tensor], update: Update) -> None:
    """Everything an update must satisfy before any rule combines it: the reference's keys,
    shapes and dtypes, finite values within ±2²⁰, a sample count in [1, 2³¹−1]."""
    check_samples(update.num_samples)
    check_layout(reference, update.state)
    for key, value in update.state.items():
        check_values(key, value)


def float_keys(reference: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted(k for k, v in reference.items() if v.is_floating_point())


CLIP_GRID = 2**24  # clip factors are rounded down to multiples of 2**-24 (see bound_update)


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """The L2 norm of ``tensors`` together, summed in float64 key by key in a fixed order."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t.double()) ** 2) for t in tensors))


def delta_norm(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], keys: Sequence[str]) -> float:
    """‖state − reference‖₂ over ``keys``, in float64, key by key in a fixed order."""
    return _norm([state[k].double() - reference[k].double() for k in keys])


def bound_update(reference: Mapping[str, torch.Tensor], update: Update, bound: float, clip: bool) -> Update:
    """``update`` if its distance from ``reference`` (the global model), ‖u − g‖₂ over the float
    tensors, is at most ``bound`` × ‖g‖₂; beyond it, :class:`InvalidUpdate` or (``clip``) the
    update scaled back towards ``reference``: g + (u − g)·s with s = bound·‖g‖/‖u − g‖.

    Deterministic for anyone recomputing an aggregate: s is rounded down to a multiple of 2⁻²⁴,
    so a last-bit difference in a norm (another BLAS, another CPU) cannot change the result
    unless it crosses a grid line (about one chance in 10⁸), and the scaling is elementwise
    float64 arithmetic, the same bits everywhere."""
    keys = float_keys(reference)
    limit = bound * _norm([reference[k] for k in keys])
    distance = delta_norm(update.state, reference, keys)
    if distance <= limit:
        return update
    if not clip:
        raise InvalidUpdate(f"the update is {distance:.6g} away from the global model; the job allows at most "
                            f"{bound:g} × its norm = {limit:.6g} (update_norm_bound)")
    return Update(scale_delta(update.state, reference, keys, math.floor(limit / distance * CLIP_GRID) / CLIP_GRID),
                  update.num_samples, update.model_hash)


def scale_delta(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], keys: Sequence[str],
                scale: float) -> dict[str, torch.Tensor]:
    """``state`` with its delta from ``reference`` over ``keys`` multiplied by ``scale``:
    r + (s − r)·scale, elementwise in float64 (the same bits everywhere), in ``state``'s dtypes."""
    out = dict(state)
    for key in keys:
        ref = reference[key].double()
        out[key] = (ref + (state[key].double() - ref) * scale).to(state[key].dtype)
    return out


def int_maximum(updates: Sequence[Update], key: str) -> torch.Tensor:
    """Integer tensors (BatchNorm's ``num_batches_tracked`` …) combine by elementwise max."""
    out = updates[0].state[key].cpu().clone()
    for update in updates[1:]:
        torch.maximum(out, update.state[key].cpu(), out=out)
    return out


class Strategy(ABC):
    """One aggregation rule over one sharing choice (see the module docstring for a round)."""

    name: ClassVar[str]  # the aggregation rule's name
    decomposable: ClassVar[bool]  # True: supernodes fold updates into partials (an ExactSum)
    state_names: ClassVar[tuple[str, ...]] = ()  # attributes holding server state (dicts of tensors)

    def __init__(self, sharing: str = "fedper", **options: Any) -> None:
        if sharing not in SHARINGS:
            raise ValueError(f"unknown sharing {sharing!r}; choose one of {', '.join(SHARINGS)}")
        check_options(self.name, options)  # an unknown or foreign option is named
        self.sharing = sharing
        self.options: dict[str, Any] = {
            key: check_value(key, options.get(key, OPTION_DEFAULTS[key]))
            for key in sorted(options_of(self.name) | set(COMMON_OPTIONS))
        }
        self.proximal_mu: float = self.options["proximal_mu"]
        self.update_norm_bound: float = self.options["update_norm_bound"]
        self.update_norm_clip: bool = self.options["update_norm_clip"] == 1

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}(sharing={self.sharing!r}, {opts})"

    # --- what is shared ---------------------------------------------------------------------------
    def shared_keys(self, base_keys: Sequence[str], head_keys: Sequence[str]) -> list[str]:
        """The keys clients send and the server combines (by the sharing choice)."""
        return shared_keys(self.sharing, base_keys, head_keys)

    def check_fits(self, num_clients: int) -> None:
        """ValueError when this rule cannot work with ``num_clients`` clients (Krum needs
        n ≥ 2f+3, the trimmed mean must cut something and leave something)."""
        problem = fit_problem(self.name, num_clients, self.options)
        if problem is not None:
            raise ValueError(problem)

    # --- the client side --------------------------------------------------------------------------
    def configure_train(self, round_number: int) -> dict[str, str]:
        """Options for the clients' training this round, as canonical strings (floats by
        ``repr``); {} when clients train plainly. Parsed on the client by ``TrainHook``.
        Distillation's term is asked for from round 2 (round 1's consensus is all zeros)."""
        config = {"proximal_mu": repr(self.proximal_mu)} if self.proximal_mu > 0 else {}
        alpha = self.options["distill_alpha"]
        if self.sharing == "distill" and round_number > 1 and alpha > 0:
            config |= {"distill_alpha": repr(float(alpha)), "distill_l2": repr(float(self.options["distill_l2"]))}
        return config

    # --- the server side --------------------------------------------------------------------------
    def validate(self, reference: Mapping[str, torch.Tensor], update: Update) -> Update:
        """The update to combine: ``update`` once it fits ``reference`` (the global shared state)
        and the bounds every rule relies on, else :class:`InvalidUpdate`; with ``update_norm_bound``
        its distance from ``reference`` is bounded too (refused, or clipped: see ``bound_update``)."""
        check_update(reference, update)
        if self.update_norm_bound > 0:
            return bound_update(reference, update, self.update_norm_bound, self.update_norm_clip)
        return update

    def accumulator(self, reference: Mapping[str, torch.Tensor] | None = None) -> "ExactSum":
        """An empty exact sum to fold validated updates into (decomposable rules only), laid out as
        ``sum_layout`` says."""
        if not self.decomposable:
            raise TypeError(f"aggregation {self.name!r} does not decompose: it needs the list of updates")
        from fl.strategy.exact import ExactSum

        return ExactSum(self.sum_layout(reference) if reference is not None else None)

    def combined_sum(self, global_shared: Mapping[str, torch.Tensor],
                     combined: "ExactSum | Sequence[Update]") -> "ExactSum":
        """``combined`` as a non-empty exact sum that fits ``global_shared`` (a list of updates is
        validated and folded in)."""
        from fl.strategy.exact import ExactSum

        if isinstance(combined, ExactSum):
            if combined.total == 0:
                raise ValueError(f"{self.name}: nothing to aggregate, the sum holds no update")
            check_layout(global_shared, combined.layout())
            return combined
        if not combined:
            raise ValueError(f"{self.name}: nothing to aggregate, no client returned an update")
        total = ExactSum(global_shared)
        for update in combined:
            total.add(self.validate(global_shared, update), checked=True)
        return total

    def update_list(self, combined: "ExactSum | Sequence[Update]") -> list[Update]:
        """``combined`` as the non-empty list of updates in canonical order (by model_hash)."""
        if not isinstance(combined, Sequence):
            raise TypeError(f"aggregation {self.name!r} does not decompose: finalize takes the list of updates")
        if not combined:
            raise ValueError(f"{self.name}: nothing to aggregate, no client returned an update")
        return sort_updates(combined)

    def state_dict(self) -> StateDict:
        """The server state a restarted entry node needs to go on exactly (``name.key`` tensors;
        empty for rules without state)."""
        return {f"{name}.{key}": value for name in self.state_names for key, value in getattr(self, name).items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take back what :meth:`state_dict` gave (on a fresh instance of the same job's rule)."""
        for name in self.state_names:
            setattr(self, name, {key.split(".", 1)[1]: value.clone() for key, value in state.items()
                                 if key.split(".", 1)[0] == name})

    @staticmethod
    def server_state(store: StateDict, key: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """A server optimiser's float64 state for ``key`` (created at ``fill`` in the first round)."""
        state = store.get(key)
        if state is None:
            state = store[key] = torch.full(like.shape, fill, dtype=torch.float64)
        elif state.shape != like.shape:
            raise ValueError(f"{key}: shape {tuple(like.shape)} differs from the optimiser state's "
                             f"{tuple(state.shape)}; a strategy instance serves one job")
        return state

    def validate_config(self, round_number: int) -> dict[str, str]:
        """Options the checkers of updates (supernodes, the entry node, an auditor) need this
        round, as canonical strings: on the network signed into the round order (``validate``)
        beside the clients' ``configure_train``; {} for rules whose checks never change."""
        return {}

    def set_validate_config(self, config: Mapping[str, str]) -> None:
        """Take the round's ``validate_config`` on a checker; anything unexpected is a ValueError."""
        if config:
            raise ValueError(f"{self.name} takes no per-round options for checking updates, got {dict(config)!r}")

    def sum_layout(self, reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the exact sum holds: the shared tensors of ``reference``, plus any statistic the
        rule counts alongside them (adaptive clipping's unclipped count)."""
        return dict(reference)

    def weight(self, samples: int) -> int:
        """The weight an update of ``samples`` training samples gets in the sum (``validate`` sets
        it): its sample count, as FedAvg weighs; a rule may weigh every update alike."""
        return samples

    # --- the round's record ---------------------------------------------------------------------
    def can_run(self, round_number: int) -> str | None:
        """Why round ``round_number`` must not run (a privacy budget it would exceed), or None."""
        return None

    def round_record(self) -> dict[str, Any]:
        """What the last ``finalize`` did beyond the model: sections for the round's record
        (the GLOBAL_MODEL's payload on the network; values are strings, ints and dicts of them)."""
        return {}

    def round_models(self) -> dict[str, StateDict]:
        """States the last ``finalize`` made that the record names by hash (kept for audits)."""
        return {}

    def replay(self, global_shared: Mapping[str, torch.Tensor], combined: "ExactSum | Sequence[Update]",
               record: Mapping[str, Any], models: Mapping[str, StateDict]) -> StateDict:
        """An auditor's ``finalize``: the next global state from the recorded inputs (``record``:
        the round's record, ``round_record``'s sections included), raising ValueError where the
        record does not follow from them. A deterministic rule just finalizes again (the same
        bytes); a rule with secret randomness checks what it can and uses the recorded values it
        cannot recompute (``models``: by the names ``round_models`` gave, fetched and checked
        against the record's hashes)."""
        return self.finalize(global_shared, combined)

    @abstractmethod
    def finalize(self, global_shared: Mapping[str, torch.Tensor],
                 combined: "ExactSum | Sequence[Update]") -> StateDict:
        """The next global shared state (same keys and dtypes as ``global_shared``) from the
        merged accumulator (decomposable rules) or the validated updates sorted by model_hash.
        Server optimisers keep their state in the instance: one call per round, in order."""

    def aggregate(self, global_shared: Mapping[str, torch.Tensor], updates: Sequence[Update]) -> StateDict:
        """Validate each update, order them by model_hash, combine, finalize. Decomposable rules
        give the very bytes that folding any grouping of the updates into accumulators, merging
        them and calling ``finalize`` gives."""
        if not updates:
            raise ValueError(f"{self.name}: nothing to aggregate, no client returned an update")
        checked = []
        for index, update in enumerate(updates):
            try:
                checked.append(self.validate(global_shared, update))
            except InvalidUpdate as exc:
                raise InvalidUpdate(f"update {index}: {exc}") from None
        updates = checked
        if self.decomposable:
            total = self.accumulator(global_shared)
            for update in updates:  # integer sums: the order does not matter
                total.add(update, checked=True)
            return self.finalize(global_shared, total)
        return self.finalize(global_shared, sort_updates(updates))


def sort_updates(updates: Sequence[Update]) -> list[Update]:
    """Updates in canonical order (by model_hash; a missing hash is computed from the bytes)."""
    from fl.serialize import model_hash, state_to_bytes

    hashed = [u if u.model_hash else Update(u.state, u.num_samples, model_hash(state_to_bytes(u.state)))
              for u in updates]
    return sorted(hashed, key=lambda u: u.model_hash)


class ServerOptimizer(Strategy):
    """A server-side optimiser over the clients' exact mean (FedAvgM, FedAdam): decomposable, and
    stateful. ``step`` moves one float key of the global state, in float64; integer keys take the
    mean's (their elementwise max). One call of ``finalize`` per round, in order."""

    decomposable = True

    def __init__(self, sharing: str = "fedper", **options: Any) -> None:
        super().__init__(sharing, **options)
        self.rounds = 0  # rounds this instance's state has seen

    def finalize(self, global_shared: Mapping[str, torch.Tensor],
                 combined: "ExactSum | Sequence[Update]") -> StateDict:
        mean = self.combined_sum(global_shared, combined).mean()  # float64 for float keys
        out: StateDict = {}
        for key, current in global_shared.items():
            if not current.is_floating_point():
                out[key] = mean[key]
                continue
            x = current.to("cpu", torch.float64)
            out[key] = self.step(key, x, mean[key], current).to(current.dtype)
        self.rounds += 1
        return out

    @abstractmethod
    def step(self, key: str, x: torch.Tensor, mean: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The next value of ``key`` from ``x`` (the current global value, float64, a copy this may
        change) and ``mean`` (the clients' mean, float64); ``like`` gives the state's shape."""
