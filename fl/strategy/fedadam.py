"""FedAdam: an adaptive server optimiser over the mean update (Reddi et al. 2021, "Adaptive
Federated Optimization", Algorithm 2 with the Adam update).

With x the global shared state and x̄ the clients' sample-weighted mean::

    Δ = x̄ − x
    m = β₁ · m + (1 − β₁) · Δ          (m starts at 0)
    v = β₂ · v + (1 − β₂) · Δ²         (v starts at τ², the paper's v₋₁ ≥ τ²)
    x ← x + η · m / (√v + τ)

with η = adam_lr, β₁ = adam_beta1, β₂ = adam_beta2, τ = adam_tau, and, as in the paper, no bias
correction. The moments live in this instance, in float64; each step is one elementwise IEEE
operation (no fused multiply-add; √ is correctly rounded), so replaying the rounds in order on a
fresh instance gives the same bytes on any machine.
"""

from __future__ import annotations

import torch

from fl.strategy.base import ServerOptimizer, StateDict


class FedAdam(ServerOptimizer):
    name = "fedadam"
    state_names = ("m", "v")

    def __init__(self, sharing: str = "fedper", **options: object) -> None:
        super().__init__(sharing, **options)
        self.lr: float = self.options["adam_lr"]
        self.beta1: float = self.options["adam_beta1"]
        self.beta2: float = self.options["adam_beta2"]
        self.tau: float = self.options["adam_tau"]
        self.m: StateDict = {}
        self.v: StateDict = {}

    def step(self, key: str, x: torch.Tensor, mean: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        delta = torch.sub(mean, x)
        m = self.server_state(self.m, key, like)
        v = self.server_state(self.v, key, like, fill=self.tau * self.tau)
        m.mul_(self.beta1)
        m.add_(torch.mul(delta, 1.0 - self.beta1))
        delta.mul_(delta)
        delta.mul_(1.0 - self.beta2)
        v.mul_(self.beta2)
        v.add_(delta)
        step = torch.sqrt(v)
        step.add_(self.tau)
        step = torch.div(torch.mul(m, self.lr), step)
        return x.add_(step)
