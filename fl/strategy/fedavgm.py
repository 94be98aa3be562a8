"""FedAvgM: server momentum over the mean update (Hsu, Qi and Brown 2019, "Measuring the Effects
of Non-Identical Data Distribution for Federated Visual Classification").

With x the global shared state and x̄ the clients' sample-weighted mean::

    Δ = x − x̄                  (the pseudo-gradient)
    v = server_momentum · v + Δ (v starts at 0, so the first round's v is Δ)
    x ← x − server_lr · v

server_lr = 1 with server_momentum = 0 is plain FedAvg. The momentum lives in this instance, in
float64; each operation is one elementwise IEEE operation (no fused multiply-add), so replaying
the rounds in order on a fresh instance gives the same bytes on any machine.
"""

from __future__ import annotations

import torch

from fl.strategy.base import ServerOptimizer, StateDict


class FedAvgM(ServerOptimizer):
    name = "fedavgm"
    state_names = ("velocity",)

    def __init__(self, sharing: str = "fedper", **options: object) -> None:
        super().__init__(sharing, **options)
        self.server_lr: float = self.options["server_lr"]
        self.server_momentum: float = self.options["server_momentum"]
        self.velocity: StateDict = {}  # float64, per float key

    def step(self, key: str, x: torch.Tensor, mean: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        delta = torch.sub(x, mean)
        velocity = self.server_state(self.velocity, key, like)
        velocity.mul_(self.server_momentum)
        velocity.add_(delta)
        return x.sub_(torch.mul(velocity, self.server_lr))
