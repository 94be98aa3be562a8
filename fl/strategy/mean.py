"""FedAvg's rule: the sample-weighted mean of the shared tensors (McMahan et al. 2017)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fl.strategy.base import StateDict, Strategy, Update
from fl.strategy.exact import ExactSum


class Mean(Strategy):
    """The next global state is the exact sample-weighted mean of the updates."""

    name = "mean"
    decomposable = True

    def finalize(self, global_shared: Mapping[str, torch.Tensor],
                 combined: ExactSum | Sequence[Update]) -> StateDict:
        mean = self.combined_sum(global_shared, combined).mean({k: v.dtype for k, v in global_shared.items()})
        return {k: mean[k] for k in global_shared}
