"""The coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates"): unweighted, over all updates; with an even count the mean of the two
middle values. Exact (no median of medians), and memory-bounded: one key at a time, a block of
columns at a time (``columns.CHUNK_ELEMENTS``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fl.strategy.base import StateDict, Strategy, Update
from fl.strategy.columns import coordinatewise
from fl.strategy.exact import ExactSum


class Median(Strategy):
    name = "median"
    decomposable = False

    def finalize(self, global_shared: Mapping[str, torch.Tensor],
                 combined: ExactSum | Sequence[Update]) -> StateDict:
        updates = self.update_list(combined)
        n = len(updates)

        def median(block: torch.Tensor) -> torch.Tensor:
            if n % 2:
                middle = torch.kthvalue(block, n // 2 + 1, dim=0).values
            else:  # the mean of the two middle values, in float64, then the model's dtype
                ordered = torch.sort(block, dim=0).values  # one sort beats two selections
                middle = ordered[n // 2 - 1].to(torch.float64).add_(ordered[n // 2].to(torch.float64)).div_(2.0)
            return middle

        out = coordinatewise(global_shared, updates, median)
        for value in out.values():
            if value.is_floating_point():
                value.add_(0.0)  # -0.0 -> +0.0: equal values, one byte pattern
        return out
