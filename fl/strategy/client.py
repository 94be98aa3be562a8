"""The client's side of a round beyond the job's settings: what ``Strategy.configure_train`` asked
for (on the network, signed into the round order), parsed once and applied by the one client
code path (``fl.federation.ClientWorker``) in the simulation and on edge nodes alike:

- ``proximal_mu``: FedProx's proximal term on the gradients (``fedprox.ProximalTerm``);
- ``dp_clip`` (and ``dp_noise``): the update's delta from the round's global model clipped to that
  L2 norm before it leaves (and Gaussian noise of ``dp_noise`` × ``dp_clip`` added: local DP);
- ``dpsgd_clip`` and ``dpsgd_noise``: local training is DP-SGD (Opacus; ``fl.privacy.train_private``);
- ``distill_alpha`` (and ``distill_l2``): distillation's term, α × the distance of the client's
  outputs on the public set from the consensus (``fl.distill.DistillTerm``; 1: squared error of the
  logits, 0: KL divergence).

An unknown key or a value out of range is a ValueError: a client never trains under settings it
does not understand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from fl.privacy import add_noise, clip_delta
from fl.strategy.fedprox import ProximalTerm

# option -> (lowest allowed value, whether the lowest itself is allowed)
_RANGES = {"proximal_mu": (0.0, True), "dp_clip": (0.0, False), "dp_noise": (0.0, True),
           "dpsgd_clip": (0.0, False), "dpsgd_noise": (0.0, True), "distill_alpha": (0.0, True),
           "distill_l2": (0.0, True)}


@dataclass(frozen=True)
class TrainHook:
    """How a client trains this round, beyond the job's settings (0 / None: not asked for)."""

    proximal_mu: float = 0.0
    dp_clip: float | None = None
    dp_noise: float = 0.0
    dpsgd_clip: float | None = None
    dpsgd_noise: float = 0.0
    distill_alpha: float = 0.0
    distill_l2: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> "TrainHook":
        """Parse a round's training options; unknown keys or bad values are ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown} in the round's configuration; "
                             f"known: {sorted(known)}")
        values = {key: _number(key, text) for key, text in config.items()}
        if "dp_noise" in values and "dp_clip" not in values:
            raise ValueError("dp_noise needs dp_clip: local noise is scaled to the clip norm")
        if ("dpsgd_clip" in values) != ("dpsgd_noise" in values):
            raise ValueError("dpsgd_clip and dpsgd_noise go together")
        if values.get("distill_l2", 1.0) not in (0.0, 1.0):
            raise ValueError(f"distill_l2: expected 0 (KL divergence) or 1 (squared error), got {config['distill_l2']!r}")
        return cls(**values)

    @property
    def dpsgd(self) -> bool:
        return self.dpsgd_clip is not None

    def start(self, model: nn.Module, shared_keys: Sequence[str]) -> Callable[[], None] | None:
        """Call at the start of local training (after the global state is loaded); returns what
        to call after each ``backward()`` and before ``optimizer.step()``, or None when there is
        nothing to do (training is then exactly as without the hook)."""
        if self.proximal_mu <= 0:
            return None
        named = dict(model.named_parameters())
        params = [named[k] for k in shared_keys if k in named]  # buffers have no gradient
        return ProximalTerm(params, self.proximal_mu)

    def finish(self, shared: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The update to send: ``shared`` (the trained shared tensors) with its delta from
        ``anchor`` (the round's global model) clipped to ``dp_clip``, then local noise added."""
        if self.dp_clip is None:
            return dict(shared)
        keys = sorted(k for k, v in anchor.items() if v.is_floating_point())
        clipped, _ = clip_delta(shared, anchor, keys, self.dp_clip)
        if self.dp_noise > 0:
            clipped = add_noise(clipped, keys, self.dp_noise * self.dp_clip)
        return clipped


def _number(key: str, text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected a number, got {text!r}") from None
    low, inclusive = _RANGES[key]
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        raise ValueError(f"{key}: {text!r} is out of range, expected {'>=' if inclusive else '>'} {low:g}")
    return value
