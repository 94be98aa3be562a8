"""Differential privacy as a wrapper around a strategy, not a fork of it (as Flower's DP wrappers),
fitted to the hierarchy: clipping where an update is checked, noise once where the whole aggregate
is formed. The mechanisms, their accounting and the noise are in :mod:`fl.privacy`.

The wrapped rule must average (``mean``, ``fedavgm``, ``fedadam``): the Gaussian mechanism's
analysis is for a sum whose every term is bounded; a median or Krum has no such analysis here and
is refused. Per round, with C the clip norm and z the noise multiplier:

- ``configure_train`` adds to the clients' options what their side needs (the clip norm, the
  local noise, DP-SGD's settings): on the network, signed into the round order, so every round's
  settings are on the chain;
- ``validate`` (a supernode, for each update) gives the update equal weight and, for ``central``,
  clips its delta to C (deterministically: any supernode recomputing gets the same bytes); for
  ``central_client`` refuses an update beyond C; for ``local`` refuses one whose size the
  recorded noise cannot explain;
- ``finalize`` (the entry node) forms the exact mean, adds N(0, (zC/n)²) for the central
  mechanisms, and lets the wrapped rule take its step from the noised mean (FedAvgM's momentum
  sees only noised data);
- with ``dp_clipping=adaptive`` (``central`` only; Andrew et al. 2021, "Differentially Private
  Learning with Adaptive Clipping"), C follows a quantile γ of the update norms: each checked
  update also counts whether its norm was within C (an extra entry of the exact sum, so the count
  composes across supernodes exactly), the entry node adds N(0, σ_b²) to the count b and sets
  C ← C·exp(−η(b̃/n − γ)) for the next round; the count's noise spends part of the budget, so the
  update's noise multiplier is z_Δ = (z⁻² − σ_b⁻²)^(−1/2) (the 0/1 count has sensitivity 1) and
  the accountant sees z; only the noised count is recorded. The
  round's C travels in the signed round order (``validate_config``), so its history is on the
  chain, and the supernodes clip with it;
- ``can_run`` says why a round must not run (it would spend more than the job's target ε) and
  ``round_record`` what the round's GLOBAL_MODEL records: mechanism, z, C, sampling rate, steps,
  δ, ε spent so far, the noise's standard deviation and n. ``round_models`` gives the noised mean,
  kept and named by hash, so an auditor holding the updates can check the noise's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fl.privacy import (Accounting, PrivacySpec, accounting, add_noise, calibrate, clip_delta, epsilon, noise_fits,
                        secret_generator)
from fl.strategy.base import InvalidUpdate, StateDict, Strategy, Update, delta_norm, float_keys
from fl.strategy.exact import ExactSum

LOCAL_NORM_SLACK = 10.0  # a local-DP update's delta may be C + zC·(√D + this) long (the noise's norm is ≈ zC·√D ± zC)
UNCLIPPED = "dp.unclipped"  # adaptive clipping: 1.0 in an update whose norm was within C (summed with the model)
COUNT_NOISE_LIMIT = 6.0  # a recorded noised count further than this many σ_b from the true one is refused


class DifferentialPrivacy(Strategy):
    """``inner`` (a decomposable strategy) under ``spec``'s mechanism for a job of ``rounds``
    rounds and ``clients`` participants; ``min_samples``, ``batch_size`` and ``local_epochs``
    account DP-SGD (the edge node with the fewest samples spends the most)."""

    decomposable = True

    def __init__(self, inner: Strategy, spec: PrivacySpec, rounds: int, *, clients: int = 0, min_samples: int = 0,
                 batch_size: int = 0, local_epochs: int = 1) -> None:  # noqa: D107 - no Strategy.__init__: the inner's options
        if not spec.enabled:
            raise ValueError("DifferentialPrivacy needs a mechanism other than 'off'")
        if not inner.decomposable:
            raise ValueError(f"dp={spec.mechanism} needs a rule that averages (mean, fedavgm, fedadam), "
                             f"not aggregation={inner.name!r}")
        if spec.mechanism == "dpsgd" and inner.proximal_mu > 0:
            raise ValueError("dp=dpsgd trains with Opacus's optimizer, which takes no proximal term: use "
                             "proximal_mu=0 or another mechanism")
        self.inner, self.spec, self.rounds, self.clients = inner, spec, rounds, clients
        self.name, self.sharing, self.options = inner.name, inner.sharing, inner.options
        self.proximal_mu = inner.proximal_mu
        self.state_names = (*inner.state_names, "clip_norm") if spec.adaptive else inner.state_names
        self._population = (min_samples, batch_size, local_epochs)
        self._noise: float | None = None
        self.clip_norm = spec.clip_norm  # this round's C (adaptive clipping moves it after each round)
        self.round = 0  # the round being configured (configure_train)
        self._record: dict[str, Any] = {}
        self._noised: StateDict | None = None

    def __repr__(self) -> str:
        return f"DifferentialPrivacy({self.inner!r}, {self.spec!r})"

    # --- the budget ----------------------------------------------------------------------------
    @property
    def noise_multiplier(self) -> float:
        """z: as given, or calibrated to the target ε over the job's rounds (once)."""
        if self._noise is None:
            self._noise = calibrate(self.spec, self.rounds, *self._population)
        return self._noise

    @property
    def count_noise(self) -> float:
        """σ_b (adaptive clipping): as given, else max(n/20, 2z) (Andrew et al. suggest n/20; at
        least 2z keeps the update's share of the budget, z_Δ, within 1.16 z)."""
        return self.spec.count_noise or max(self.clients / 20, 2 * self.noise_multiplier)

    @property
    def update_noise_multiplier(self) -> float:
        """z_Δ: the noise multiplier of the update's mean; z itself unless the clip count takes its
        share of the budget (adaptive clipping)."""
        z = self.noise_multiplier
        if not self.spec.adaptive:
            return z
        if self.count_noise <= z:
            raise ValueError(f"dp_count_noise {self.count_noise:g} is too small for noise multiplier {z:g}: "
                             f"adaptive clipping needs dp_count_noise > z")
        return (z ** -2 - self.count_noise ** -2) ** -0.5  # the count (0/1 per update) has sensitivity 1

    @property
    def per_round(self) -> Accounting:
        return accounting(self.spec, self.noise_multiplier, *self._population)

    def epsilon_after(self, rounds: int) -> float:
        """ε spent after ``rounds`` rounds (for the job's δ)."""
        return epsilon(self.per_round, rounds, self.spec.delta)

    def can_run(self, round_number: int) -> str | None:
        target = self.spec.target_epsilon
        if target > 0 and (spent := self.epsilon_after(round_number)) > target * (1 + 1e-9):
            return (f"the privacy budget is spent: round {round_number} would bring ε to {spent:.4g}, beyond the "
                    f"job's ε = {target:g} (δ = {self.spec.delta:g})")
        return None

    # --- the client side -----------------------------------------------------------------------
    def shared_keys(self, base_keys: Sequence[str], head_keys: Sequence[str]) -> list[str]:
        return self.inner.shared_keys(base_keys, head_keys)

    def check_fits(self, num_clients: int) -> None:
        self.inner.check_fits(num_clients)
        if self.spec.mechanism != "dpsgd" or self._population[0] > 0:  # (DP-SGD's needs the sample counts)
            self.update_noise_multiplier  # noqa: B018 - a target or a count noise that cannot work is said now

    def configure_train(self, round_number: int) -> dict[str, str]:
        self.round = round_number
        config = dict(self.inner.configure_train(round_number))
        clip, noise = repr(float(self.clip_norm)), repr(float(self.noise_multiplier))
        if self.spec.mechanism == "central_client":
            config["dp_clip"] = clip
        elif self.spec.mechanism == "local":
            config.update(dp_clip=clip, dp_noise=noise)
        elif self.spec.mechanism == "dpsgd":
            config.update(dpsgd_clip=clip, dpsgd_noise=noise)
        return config

    # --- the checkers' side ------------------------------------------------------------------
    def validate_config(self, round_number: int) -> dict[str, str]:
        return {"dp_clip": repr(float(self.clip_norm))} if self.spec.adaptive else {}

    def set_validate_config(self, config: Mapping[str, str]) -> None:
        if not self.spec.adaptive:
            super().set_validate_config(config)
            return
        try:
            clip = float(config["dp_clip"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the round's order does not give adaptive clipping's clip norm: {dict(config)!r}") from None
        if not (math.isfinite(clip) and clip > 0) or set(config) != {"dp_clip"}:
            raise ValueError(f"the round's clip norm options are not valid: {dict(config)!r}")
        self.clip_norm = clip

    def sum_layout(self, reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        layout = self.inner.sum_layout(reference)
        if self.spec.adaptive:
            layout[UNCLIPPED] = torch.zeros(1)
        return layout

    def validate(self, reference: Mapping[str, torch.Tensor], update: Update) -> Update:
        checked = self.inner.validate(reference, update)
        keys, clip = float_keys(reference), self.clip_norm
        state = checked.state
        if self.spec.mechanism == "dpsgd":  # the guarantee lives on the edge node: nothing to clip here
            pass
        elif self.spec.mechanism == "central":
            state, within = clip_delta(state, reference, keys, clip)
            if self.spec.adaptive:
                state[UNCLIPPED] = torch.tensor([1.0 if within else 0.0])
        else:
            norm = delta_norm(state, reference, keys)
            limit = clip * (1 + 1e-6)
            if self.spec.mechanism == "local":
                size = sum(reference[k].numel() for k in keys)
                limit = clip + self.noise_multiplier * clip * (math.sqrt(size) + LOCAL_NORM_SLACK)
            if norm > limit:
                raise InvalidUpdate(f"the update's delta has norm {norm:.6g}, beyond the {limit:.6g} that "
                                    f"dp={self.spec.mechanism} with clip norm {clip:g} allows")
        return Update(state, self.weight(checked.num_samples), checked.model_hash)

    def weight(self, samples: int) -> int:
        """Every update alike: a weight must not depend on private data, and one node's influence
        on the mean is then at most C/n (the sensitivity the noise is scaled to)."""
        return 1

    # --- the entry node's side ---------------------------------------------------------------------
    def finalize(self, global_shared: Mapping[str, torch.Tensor],
                 combined: ExactSum | Sequence[Update]) -> StateDict:
        total, mean, unclipped = self._clean_mean(global_shared, combined)
        count = total.total
        self._noised = None
        if self.spec.central:
            self._noised = add_noise(mean, float_keys(global_shared), self._stddev(count))
            result = self.inner.finalize(global_shared, _single(global_shared, self._noised))
        else:
            result = self.inner.finalize(global_shared, total)
        noised_count = None
        if self.spec.adaptive:
            draw = torch.randn((), generator=secret_generator(), dtype=torch.float64)
            noised_count = unclipped + float(draw) * self.count_noise
        self._record = {"privacy": self._privacy_record(count, unclipped, noised_count)}
        self._move_clip(count, noised_count)
        return result

    def replay(self, global_shared: Mapping[str, torch.Tensor], combined: ExactSum | Sequence[Update],
               record: Mapping[str, Any], models: Mapping[str, StateDict]) -> StateDict:
        """Everything about the round that does not reveal the noise: its recorded settings and
        ε against the job's (ε recomputed by the accountant), the mean of the clipped updates and
        the count of unclipped ones (recomputed), that the recorded noised mean differs from the
        mean by noise of the recorded standard deviation (mean and spread, statistically) and the
        noised count from the count by at most 6 σ_b; then the wrapped rule's step from the noised
        mean, which must give the recorded model bit for bit, and the next clip norm from the
        recorded noised count."""
        total, mean, unclipped = self._clean_mean(global_shared, combined)
        count = total.total
        given = record.get("privacy")
        if not isinstance(given, Mapping):
            raise ValueError("the round's record holds no privacy section, though the job sets dp")
        noised_count = None
        if self.spec.adaptive:
            try:
                noised_count = float(given["unclipped_noised"])
            except (KeyError, TypeError, ValueError):
                raise ValueError("the round's privacy record lacks the noised count of unclipped updates") from None
            if not abs(noised_count - unclipped) <= COUNT_NOISE_LIMIT * self.count_noise:
                raise ValueError(f"the recorded noised count {noised_count:.4g} is more than {COUNT_NOISE_LIMIT:g} σ_b "
                                 f"from the {unclipped} unclipped updates")
        for key, value in self._privacy_record(count, unclipped, noised_count).items():
            if given.get(key) != value:
                raise ValueError(f"the recorded privacy {key} is {given.get(key)!r}; the job's settings and "
                                 f"the recorded updates give {value!r}")
        if not self.spec.central:
            result = self.inner.finalize(global_shared, total)
        else:
            noised = models.get("noised")
            if noised is None:
                raise ValueError("the noised mean the round names is not available")
            keys = float_keys(global_shared)
            if set(noised) != set(global_shared) or any(not torch.equal(noised[k], mean[k]) for k in global_shared
                                                        if k not in keys):
                raise ValueError("the noised mean does not fit the model (keys, or values that take no noise)")
            problem = noise_fits([noised[k].double() - mean[k].double() for k in keys], self._stddev(count))
            if problem is not None:
                raise ValueError(f"the noised mean is not the mean plus the recorded noise: {problem}")
            result = self.inner.finalize(global_shared, _single(global_shared, noised))
        self._move_clip(count, noised_count)
        return result

    def _clean_mean(self, global_shared: Mapping[str, torch.Tensor],
                    combined: ExactSum | Sequence[Update]) -> tuple[ExactSum, StateDict, int]:
        """The exact sum of the (clipped) updates (its ``total``: how many), their mean in the
        model's dtypes, and how many were within the clip norm (adaptive clipping; else 0)."""
        total = self.inner.combined_sum(self.sum_layout(global_shared), combined)
        mean = total.mean({**{k: v.dtype for k, v in global_shared.items()}, UNCLIPPED: torch.float64})
        share = float(mean.pop(UNCLIPPED, torch.zeros(1))[0])
        unclipped = round(share * total.total)
        if not (0 <= unclipped <= total.total and abs(share * total.total - unclipped) < 1e-6):
            raise ValueError(f"the count of unclipped updates ({share * total.total:g} of {total.total}) is not a "
                             f"whole number within the updates summed")
        return total, {k: mean[k] for k in global_shared}, unclipped

    def _move_clip(self, count: int, noised_count: float | None) -> None:
        """Adaptive clipping's step: C ← C·exp(−η(b̃/n − γ))."""
        if noised_count is not None:
            self.clip_norm = self.clip_norm * math.exp(-self.spec.clip_lr * (noised_count / count
                                                                              - self.spec.target_quantile))

    def _stddev(self, count: int) -> float:
        """The noise's standard deviation on the mean of ``count`` clipped updates (central DP)."""
        return self.update_noise_multiplier * self.clip_norm / count if self.spec.central else 0.0

    def _privacy_record(self, count: int, unclipped: int, noised_count: float | None) -> dict[str, str]:
        shape = self.per_round
        record = {"mechanism": self.spec.mechanism, "noise_multiplier": repr(float(self.noise_multiplier)),
                  "clip_norm": repr(float(self.clip_norm)), "sample_rate": repr(shape.sample_rate),
                  "steps": str(shape.steps), "delta": repr(float(self.spec.delta)),
                  "epsilon": f"{self.epsilon_after(self.round):.6g}", "noise_stddev": repr(self._stddev(count)),
                  "updates": str(count)}
        if self.spec.target_epsilon > 0:
            record["target_epsilon"] = repr(float(self.spec.target_epsilon))
        if noised_count is not None:
            step = math.exp(-self.spec.clip_lr * (noised_count / count - self.spec.target_quantile))
            record.update(clipping="adaptive", unclipped_noised=repr(noised_count),  # (the exact count: never)
                          count_noise=repr(float(self.count_noise)), next_clip_norm=repr(self.clip_norm * step))
        return record

    def round_record(self) -> dict[str, Any]:
        return dict(self._record)

    def round_models(self) -> dict[str, StateDict]:
        return {"noised": self._noised} if self._noised is not None else {}

    # --- server state ----------------------------------------------------------------------------
    def state_dict(self) -> StateDict:
        state = self.inner.state_dict()
        if self.spec.adaptive:
            state["clip_norm.value"] = torch.tensor([self.clip_norm], dtype=torch.float64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.inner.load_state_dict({k: v for k, v in state.items() if not k.startswith("clip_norm.")})
        if self.spec.adaptive and "clip_norm.value" in state:
            self.clip_norm = float(state["clip_norm.value"][0])



def _single(global_shared: Mapping[str, torch.Tensor], state: StateDict) -> ExactSum:
    """``state`` as an exact sum of one update (what the wrapped rule's ``finalize`` takes)."""
    total = ExactSum(global_shared)
    total.add(Update(state, 1))
    return total
