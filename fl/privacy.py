"""Differential privacy of a federated job: the mechanisms, their noise, and the budget they spend.

A job picks one mechanism (config key ``dp``); every one clips each edge node's contribution to
an L2 norm ``dp_clip`` (C) and adds Gaussian noise of standard deviation ``dp_noise`` × C (z, the
noise multiplier) somewhere:

- ``central``: central DP with server-side clipping. Whoever checks an update (its supernode)
  clips its delta Δ = u − g to C; the entry node, where the whole aggregate is formed, averages
  the clipped updates with equal weights and adds N(0, (z·C/n)²) to the mean, once.
- ``central_client``: central DP with client-side clipping. Edge nodes clip Δ to C themselves
  (C travels in the signed round order); supernodes refuse an update beyond it; the entry node
  adds the noise as above.
- ``local``: local DP. Each edge node clips Δ to C and adds N(0, (z·C)²) before it sends it; nobody
  else adds noise.
- ``dpsgd``: DP-SGD on each edge node (Abadi et al. 2016) with Opacus: per-example gradients
  clipped to C and N(0, (z·C)²) added to each batch's sum, batches drawn by Poisson sampling.

Equal weights, not sample counts: a contribution's weight must not depend on private data, and
it bounds one edge node's influence on the mean (the sensitivity) to C/n.

**The budget is accounted, not guessed**: ε for the job's δ comes from Opacus's Rényi-DP
accountant (Mironov 2017; the sampled Gaussian mechanism of Mironov, Talwar and Zhang 2019),
never from a formula here. A round of ``central``/``central_client`` is one Gaussian mechanism
over the edge nodes with sampling rate 1 (every participant is asked every round; no
amplification is claimed): user-level DP, one edge node's data added or removed. ``local`` is the
same mechanism applied by each edge node to its own update, but between two datasets of one
node the clipped update can move by 2C (replacement), so it is accounted with z/2. ``dpsgd`` is
example-level DP on each edge node: per round ``local_epochs`` × ⌈n/B⌉ steps at sampling rate
B/n; the job's figure is the edge node with the fewest samples (the largest rate). A target ε
(``dp_epsilon``) instead of a noise multiplier has the noise calibrated (Opacus's search) so that
the job's rounds spend at most that.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fl.names import DP_MECHANISMS as MECHANISMS


@dataclass(frozen=True)
class PrivacySpec:
    """A job's privacy settings (``off``: none of the rest applies)."""

    mechanism: str = "off"
    clip_norm: float = 1.0  # C
    noise_multiplier: float = 0.0  # z; 0 with a target ε: calibrated to it
    target_epsilon: float = 0.0  # 0: no target (then z must be given)
    delta: float = 1e-5
    clipping: str = "fixed"  # or "adaptive" (dp=central): the clip norm follows a quantile of the norms
    target_quantile: float = 0.5  # γ: the share of updates left unclipped that the clip norm aims at
    clip_lr: float = 0.2  # η: C ← C·exp(−η(b̃ − γ)), b̃ the noised share of unclipped updates
    count_noise: float = 0.0  # σ_b: stddev of the noise on the unclipped count (0: max(n/20, 2z))

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"dp: unknown mechanism {self.mechanism!r}; choose one of {', '.join(MECHANISMS)}")
        if not self.enabled:
            return
        if self.clipping not in ("fixed", "adaptive"):
            raise ValueError(f"dp_clipping: {self.clipping!r} must be fixed or adaptive")
        if self.adaptive and self.mechanism != "central":
            raise ValueError(f"dp_clipping=adaptive needs dp=central (the supernode sees each update's norm before "
                             f"clipping it), not dp={self.mechanism}")
        if self.adaptive and not (0 < self.target_quantile < 1 and self.clip_lr > 0 and self.count_noise >= 0):
            raise ValueError("adaptive clipping needs 0 < dp_target_quantile < 1, dp_clip_lr > 0, dp_count_noise >= 0")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"dp_clip: {self.clip_norm!r} must be > 0")
        if not (0 < self.delta < 1):
            raise ValueError(f"dp_delta: {self.delta!r} must be in (0, 1)")
        if self.noise_multiplier <= 0 and self.target_epsilon <= 0:
            raise ValueError(f"dp={self.mechanism} needs dp_noise (a noise multiplier > 0) or dp_epsilon (a target ε > 0)")
        if not math.isfinite(self.noise_multiplier) or self.noise_multiplier < 0 \
                or not math.isfinite(self.target_epsilon) or self.target_epsilon < 0:
            raise ValueError("dp_noise and dp_epsilon must be finite and >= 0")

    @property
    def enabled(self) -> bool:
        return self.mechanism != "off"

    @property
    def adaptive(self) -> bool:
        return self.clipping == "adaptive"

    @property
    def central(self) -> bool:
        """The entry node adds the noise (central DP, server- or client-side clipping)."""
        return self.mechanism in ("central", "central_client")


@dataclass(frozen=True)
class Accounting:
    """How one round spends the budget: ``steps`` Gaussian mechanisms of noise multiplier
    ``noise_multiplier`` at sampling rate ``sample_rate`` (what the accountant is told)."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def accounting(spec: PrivacySpec, noise_multiplier: float, local_samples: int = 0, batch_size: int = 0,
               local_epochs: int = 1) -> Accounting:
    """Per round, for ``spec``'s mechanism (see the module docstring); ``local_samples``: the
    fewest training samples of an edge node of the job (``dpsgd`` only)."""
    if spec.mechanism == "local":
        return Accounting(noise_multiplier / 2, 1.0, 1)
    if spec.mechanism == "dpsgd":
        if local_samples <= 0 or batch_size <= 0:
            raise ValueError("dpsgd accounting needs the edge nodes' sample counts and the batch size")
        rate = min(1.0, batch_size / local_samples)
        return Accounting(noise_multiplier, rate, local_epochs * math.ceil(local_samples / batch_size))
    return Accounting(noise_multiplier, 1.0, 1)


def epsilon(per_round: Accounting, rounds: int, delta: float) -> float:
    """ε spent after ``rounds`` rounds, for ``delta`` (Opacus's RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if rounds <= 0:
        return 0.0
    if per_round.noise_multiplier <= 0:
        return math.inf
    accountant = RDPAccountant()
    accountant.history = [(per_round.noise_multiplier, per_round.sample_rate, per_round.steps * rounds)]
    return float(accountant.get_epsilon(delta))


def calibrate(spec: PrivacySpec, rounds: int, local_samples: int = 0, batch_size: int = 0,
              local_epochs: int = 1) -> float:
    """The noise multiplier z that spends at most ``spec.target_epsilon`` over ``rounds`` rounds
    (Opacus's search); ``spec.noise_multiplier`` when one is given (a target then only caps the
    budget: the job stops before a round that would exceed it)."""
    if spec.noise_multiplier > 0 or spec.target_epsilon <= 0:
        return spec.noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    shape = accounting(spec, 1.0, local_samples, batch_size, local_epochs)
    z = get_noise_multiplier(target_epsilon=spec.target_epsilon, target_delta=spec.delta,
                             sample_rate=shape.sample_rate, steps=shape.steps * rounds, accountant="rdp",
                             epsilon_tolerance=0.005)
    return 2 * z if spec.mechanism == "local" else float(z)  # (local DP is accounted with z/2)


# --- clipping and noise ------------------------------------------------------------------------------
def clip_delta(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], keys: Sequence[str],
               clip_norm: float) -> tuple[dict[str, torch.Tensor], bool]:
    """``state`` with its delta from ``reference`` over ``keys`` scaled to norm at most
    ``clip_norm``, and whether it was within it already. Deterministic for anyone recomputing:
    the factor is rounded down to a multiple of 2⁻²⁴ and applied elementwise in float64; should
    rounding to the tensors' own dtype leave the norm a hair above ``clip_norm``, the factor is
    lowered by that ratio again (the bound on one contribution is what DP's analysis relies on)."""
    from fl.strategy.base import CLIP_GRID, delta_norm, scale_delta  # (here: fl.strategy imports this module)

    norm = delta_norm(state, reference, keys)
    if norm <= clip_norm:
        return dict(state), True
    scale = math.floor(clip_norm / norm * CLIP_GRID) / CLIP_GRID
    while True:
        out = scale_delta(state, reference, keys, scale)
        after = delta_norm(out, reference, keys)
        if after <= clip_norm or scale <= 0:
            return out, False
        scale = max(0.0, math.floor(scale * clip_norm / after * CLIP_GRID - 1) / CLIP_GRID)


def secret_generator() -> torch.Generator:
    """A generator seeded from the operating system's CSPRNG and never recorded: the noise
    must not be reproducible by anyone, its operator's logs included."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def add_noise(state: Mapping[str, torch.Tensor], keys: Sequence[str], stddev: float,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``state`` with N(0, stddev²) added to every element of ``keys`` (drawn in float64)."""
    generator = generator or secret_generator()
    out = dict(state)
    for key in keys:
        value = state[key]
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float64) * stddev
        out[key] = (value.double() + noise).to(value.dtype)
    return out


def noise_fits(noise: Sequence[torch.Tensor], stddev: float, z_limit: float = 6.0) -> str | None:
    """None when ``noise`` (all elements together) looks drawn from N(0, stddev²): its mean and
    its sample standard deviation both within ``z_limit`` standard errors; else what is off.
    With N elements the standard error of the mean is stddev/√N and of the standard deviation
    about stddev/√(2N), so for a model of 10⁵ values the check resolves about 2%."""
    flat = torch.cat([t.reshape(-1).double() for t in noise])
    count = flat.numel()
    if stddev <= 0:
        return None if count == 0 or float(flat.abs().max()) == 0.0 else "noise where the record says none was added"
    if count < 2:
        return None
    mean, std = float(flat.mean()), float(flat.std())
    if abs(mean) > z_limit * stddev / math.sqrt(count):
        return f"the noise's mean is {mean:.3g}, {abs(mean) / (stddev / math.sqrt(count)):.1f} standard errors from 0"
    if abs(std - stddev) > z_limit * stddev / math.sqrt(2 * count):
        return f"the noise's standard deviation is {std:.6g}, not the {stddev:.6g} recorded"
    return None


# --- DP-SGD on the client ------------------------------------------------------------------------------
def train_private(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                  batch_size: int, momentum: float, seed: int, clip_norm: float, noise_multiplier: float) -> tuple[int, float]:
    """DP-SGD (Abadi et al. 2016) with Opacus's per-example gradients and DP optimizer: each of
    ``epochs`` × ⌈n/B⌉ steps draws a batch by Poisson sampling at rate B/n (the sampling the
    accountant assumes), clips every example's gradient to ``clip_norm`` and adds N(0, (z·C)²)
    to their sum. Which examples are drawn repeats with ``seed``; the noise never does.
    Returns (samples, mean training loss)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = int(y.shape[0])
    if n == 0:
        raise ValueError("no training samples")
    rate = min(1.0, batch_size / n)
    sampling = torch.Generator().manual_seed(seed)
    wrapped = GradSampleModule(model)
    try:
        optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum),
                                noise_multiplier=noise_multiplier, max_grad_norm=clip_norm,
                                expected_batch_size=max(1, round(rate * n)), generator=secret_generator())
        wrapped.train()
        loss_sum, seen = 0.0, 0
        for _ in range(epochs * math.ceil(n / batch_size)):
            batch = (torch.rand(n, generator=sampling) < rate).nonzero().squeeze(1).to(x.device)
            if batch.numel() == 0:  # an empty draw releases nothing: no step
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(wrapped(x[batch]), y[batch])
            with warnings.catch_warnings():  # Opacus's hooks on the first layer, whose input needs no gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            optimizer.step()
            loss_sum, seen = loss_sum + float(loss.detach()) * batch.numel(), seen + batch.numel()
    finally:
        wrapped._close()  # the model goes back as it was: no hooks, no per-example gradients
    return n, loss_sum / max(1, seen)
