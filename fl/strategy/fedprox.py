"""FedProx's client side (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"):
each client minimises its loss plus ``mu/2 · ‖w − w_global‖²`` over the shared parameters, where
``w_global`` is what it loaded at the start of the round. The cheapest exact way is to add
``mu · (w − w_global)`` to those parameters' gradients before every optimiser step.

The settings reach the client only through ``Strategy.configure_train`` (on the network they are
signed into the round order), parsed by ``fl.strategy.client.TrainHook``, which adds this term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ProximalTerm:
    """Adds ``mu · (w − w_global)`` to the gradients of ``params`` (``w_global``: their values
    when this object was made)."""

    def __init__(self, params: Sequence[nn.Parameter], mu: float) -> None:
        self.params = list(params)
        self.mu = mu
        self.anchors = [p.detach().clone() for p in self.params]
        self.scratch = [torch.empty_like(a) for a in self.anchors]

    @torch.no_grad()
    def __call__(self) -> None:
        for param, anchor, diff in zip(self.params, self.anchors, self.scratch):
            if param.grad is None:
                continue
            torch.sub(param, anchor, out=diff)
            param.grad.add_(diff, alpha=self.mu)
