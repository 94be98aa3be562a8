"""FedProx's client side (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"):
each client minimises its loss plus ``mu/2 · ‖w − w_global‖²`` over the shared parameters, where
``w_global`` is what it loaded at the start of the round. The cheapest exact way is to add
``mu · (w − w_global)`` to those parameters' gradients before every optimiser step.

The settings reach the client only through ``Strategy.configure_train`` (on the network they are
signed into the round order): :meth:`TrainHook.from_config` parses that dict and refuses any key
or value it does not know.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrainHook:
    """How a client trains this round, beyond the job's settings (from ``configure_train``)."""

    proximal_mu: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> "TrainHook":
        """Parse a round's training options; unknown keys or bad values are ValueError."""
        known = {"proximal_mu"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown} in the round's configuration; "
                             f"known: {sorted(known)}")
        mu = 0.0
        if "proximal_mu" in config:
            text = config["proximal_mu"]
            try:
                mu = float(text)
            except (TypeError, ValueError):
                raise ValueError(f"proximal_mu: expected a number, got {text!r}") from None
            if not (math.isfinite(mu) and mu >= 0):
                raise ValueError(f"proximal_mu: {text!r} is out of range, expected >= 0")
        return cls(proximal_mu=mu)

    def start(self, model: nn.Module, shared_keys: Sequence[str]) -> Callable[[], None] | None:
        """Call at the start of local training (after the global state is loaded); returns what
        to call after each ``backward()`` and before ``optimizer.step()``, or None when there is
        nothing to do (mu = 0: training is exactly as without the hook)."""
        if self.proximal_mu <= 0:
            return None
        named = dict(model.named_parameters())
        params = [named[k] for k in shared_keys if k in named]  # buffers have no gradient
        return ProximalTerm(params, self.proximal_mu)


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
