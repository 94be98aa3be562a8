"""What a job shares: FedPer the base layers (each client keeps its head), FedAvg every layer,
Local nothing (each client trains alone: the baseline that shows what sharing buys), Distill the
clients' outputs on the public set (``fl.distill``: each client keeps its whole model)."""

from __future__ import annotations

from collections.abc import Sequence

from fl.names import STRATEGIES as SHARINGS  # fedper, fedavg, local (config key ``strategy``)


def shared_keys(sharing: str, base_keys: Sequence[str], head_keys: Sequence[str]) -> list[str]:
    """The state keys clients send under ``sharing``."""
    if sharing == "fedper":
        return list(base_keys)
    if sharing == "fedavg":
        return [*base_keys, *head_keys]
    if sharing == "local":
        return []
    if sharing == "distill":
        from fl.distill import PUBLIC_LOGITS

        return [PUBLIC_LOGITS]
    raise ValueError(f"unknown sharing {sharing!r}; choose one of {', '.join(SHARINGS)}")
