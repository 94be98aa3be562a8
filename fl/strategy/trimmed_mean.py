"""The coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, cut the ``int(trim_beta·n)``
smallest and largest of the ``n`` values and take the unweighted mean of the rest. The kept
values are summed exactly (on the 2⁻³² grid, in int64 limbs, as ``exact.ExactSum`` does), so the
result does not depend on the order of the reduction. Exact over all updates and memory-bounded
(a block of columns at a time)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fl.options import trim_count
from fl.strategy.base import StateDict, Strategy, Update
from fl.strategy.columns import coordinatewise
from fl.strategy.exact import LIMB_BITS, LIMB_MASK, ExactSum, limbs_to_float64, quantize, scratch_dtype


class TrimmedMean(Strategy):
    name = "trimmed_mean"
    decomposable = False

    def __init__(self, sharing: str = "fedper", **options: object) -> None:
        super().__init__(sharing, **options)
        self.trim_beta: float = self.options["trim_beta"]

    def finalize(self, global_shared: Mapping[str, torch.Tensor],
                 combined: ExactSum | Sequence[Update]) -> StateDict:
        updates = self.update_list(combined)
        n = len(updates)
        cut = trim_count(self.trim_beta, n)
        kept = n - 2 * cut  # >= 1: trim_beta < 0.5

        def trimmed_mean(block: torch.Tensor) -> torch.Tensor:
            values = torch.sort(block, dim=0).values[cut : n - cut].reshape(-1) if cut else block.reshape(-1)
            width = block.shape[1]
            q = quantize(values, torch.empty(values.numel(), dtype=scratch_dtype(values.dtype)),
                         torch.empty(values.numel(), dtype=torch.int64)).view(kept, width)
            lo = torch.bitwise_and(q, LIMB_MASK).sum(0)
            hi = q.bitwise_right_shift_(LIMB_BITS).sum(0)
            return limbs_to_float64(hi, lo, kept)

        return coordinatewise(global_shared, updates, trimmed_mean)
