"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent").

With n updates of which at most f = ``krum_f`` may be attackers, each update's score is the sum
of its squared Euclidean distances (over all shared float tensors) to its n − f − 2 nearest
other updates (at least 1). Krum (``krum_m`` = 1) takes the update with the lowest score as the
next global state; Multi-Krum (m > 1) the exact sample-weighted mean (``exact.ExactSum``) of the
m lowest-scoring updates. Integer tensors take the elementwise max over the selected updates.
The guarantee needs n ≥ 2f + 3 (``check_fits``).

Distances are float64 and deterministic: every squared difference is one IEEE operation and
each update pair's sum is a fixed pairwise tree of elementwise additions over fixed-width blocks,
then a fixed left-to-right sum over blocks and keys (sorted), so no BLAS, thread count or SIMD
width changes a bit. The selection is therefore deterministic up to exact float ties between
scores, which are broken by model_hash (lowest first).

Cost: n(n−1)/2 pairwise distances over the model, i.e. O(n²·P) elementwise work (P parameters);
memory stays bounded (``columns.CHUNK_ELEMENTS`` stacked values at a time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fl.strategy.base import StateDict, Strategy, Update, float_keys
from fl.strategy.columns import CHUNK_ELEMENTS, column_blocks
from fl.strategy.exact import ExactSum


class Krum(Strategy):
    name = "krum"
    decomposable = False

    def __init__(self, sharing: str = "fedper", **options: object) -> None:
        super().__init__(sharing, **options)
        self.f: int = self.options["krum_f"]
        self.m: int = self.options["krum_m"]

    def finalize(self, global_shared: Mapping[str, torch.Tensor],
                 combined: ExactSum | Sequence[Update]) -> StateDict:
        updates = self.update_list(combined)
        chosen = self.select(updates, float_keys(global_shared))
        if len(chosen) == 1:  # Krum: the selected update itself
            update = updates[chosen[0]]
            return {k: update.state[k].cpu().clone() for k in global_shared}
        total = ExactSum(global_shared)
        for index in chosen:
            total.add(updates[index], checked=True)
        mean = total.mean({k: v.dtype for k, v in global_shared.items()})
        return {k: mean[k] for k in global_shared}

    def scores(self, updates: Sequence[Update], keys: Sequence[str]) -> list[float]:
        """Each update's Krum score (see the module docstring)."""
        n = len(updates)
        distances = pairwise_squared_distances(updates, keys)
        nearest = max(1, n - self.f - 2)
        return [sum(sorted(distances[i][j] for j in range(n) if j != i)[:nearest]) for i in range(n)]

    def select(self, updates: Sequence[Update], keys: Sequence[str]) -> list[int]:
        """Indices (into ``updates``) of the min(m, n) lowest scores; ties by model_hash."""
        if len(updates) == 1:
            return [0]
        scores = self.scores(updates, keys)
        order = sorted(range(len(updates)), key=lambda i: (scores[i], updates[i].model_hash))
        return sorted(order[: min(self.m, len(updates))])


def pairwise_squared_distances(updates: Sequence[Update], keys: Sequence[str]) -> list[list[float]]:
    """Squared Euclidean distances between every two updates over ``keys``, float64, computed
    the same way on every machine (see the module docstring)."""
    n = len(updates)
    distances = [[0.0] * n for _ in range(n)]
    if n < 2:
        return distances
    width = _power_of_two_at_most(max(1, CHUNK_ELEMENTS // (2 * n)))
    widened = torch.empty(n * width, dtype=torch.float64)
    diffs = torch.empty((n - 1) * width, dtype=torch.float64)
    for key in sorted(keys):
        for start, stop, block in column_blocks(updates, key, width=width):
            w = stop - start
            x = widened[: n * w].view(n, w)
            x.copy_(block)
            span = _power_of_two_at_least(w)
            for i in range(n - 1):
                rows = n - 1 - i
                d = diffs[: rows * span].view(rows, span)
                torch.sub(x[i + 1 :], x[i], out=d[:, :w])
                d[:, w:].zero_()  # padding to a power of two: adding zeros changes nothing
                d[:, :w].mul_(d[:, :w])
                sums = _tree_sum(d)
                for j, value in enumerate(sums.tolist(), start=i + 1):
                    distances[i][j] += value
                    distances[j][i] += value
    return distances


def _tree_sum(d: torch.Tensor) -> torch.Tensor:
    """Row sums of ``d`` (width a power of two) by halving: elementwise additions only, in an
    order that depends on the width alone."""
    span = d.shape[1]
    while span > 1:
        span //= 2
        d[:, :span].add_(d[:, span : 2 * span])
    return d[:, 0]


def _power_of_two_at_most(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _power_of_two_at_least(n: int) -> int:
    return 1 << (n - 1).bit_length()
