"""Stacking one key of many updates, a block of columns at a time: the rules that need every
update's value of a coordinate at once (median, trimmed mean, Krum's distances) never hold more
than ``CHUNK_ELEMENTS`` stacked values, however many updates there are."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from fl.strategy.base import Update, int_maximum

CHUNK_ELEMENTS = 1 << 22  # stacked values per block (16 MB of float32, 32 MB of float64)


def column_blocks(updates: Sequence[Update], key: str,
                  width: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, block)`` over the flattened ``key``: ``block[i]`` holds update ``i``'s
    values ``start:stop``. The block is one buffer reused for every step: use it before asking
    for the next."""
    n = len(updates)
    flats = [u.state[key].reshape(-1).cpu() for u in updates]
    numel = flats[0].numel()
    if numel == 0:
        return
    width = max(1, min(numel, width or CHUNK_ELEMENTS // n))
    buffer = torch.empty(n * width, dtype=flats[0].dtype)
    for start in range(0, numel, width):
        stop = min(numel, start + width)
        block = buffer[: n * (stop - start)].view(n, stop - start)
        torch.stack([f[start:stop] for f in flats], out=block)
        yield start, stop, block


def coordinatewise(global_shared: Mapping[str, torch.Tensor], updates: Sequence[Update],
                   reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """A rule applied per coordinate over every update: ``reduce`` turns a block (update ×
    column) into one value per column; integer keys take their elementwise max."""
    out: dict[str, torch.Tensor] = {}
    for key, ref in global_shared.items():
        if not ref.is_floating_point():
            out[key] = int_maximum(updates, key)
            continue
        result = torch.empty(ref.numel(), dtype=ref.dtype)
        for start, stop, block in column_blocks(updates, key):
            result[start:stop] = reduce(block)
        out[key] = result.view(ref.shape)
    return out
