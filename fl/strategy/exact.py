"""An exactly associative, sample-weighted sum of updates (the decomposable rules' accumulator).

Floating values are put on a fixed grid of 2⁻³² (``q = round(v · 2³²)``, half to even, an int64:
|v| ≤ 2²⁰ gives |q| ≤ 2⁵²), split ``q = hi·2²⁴ + lo`` with ``lo`` in [0, 2²⁴) (arithmetic shift
and mask), and ``count·hi`` and ``count·lo`` are added into two int64 tensors per key. Integer
additions give the same result in any order and any grouping, so partial sums made on different
supernodes and merged give the very bytes a flat sum gives. Integer tensors (BatchNorm's
``num_batches_tracked``) combine by elementwise max, which is as order-free.

Overflow is impossible within the bounds every update is checked against: |v| ≤ 2²⁰, 1 ≤ count ≤
2³¹−1 and a total below 2³⁵ samples keep |HI| ≤ total·2²⁸ < 2⁶³ and 0 ≤ LO ≤ total·(2²⁴−1) < 2⁵⁹.
A partial received from elsewhere (``from_state``) is refused unless its limbs are within what its
claimed total could produce, so merging can never overflow either.

The mean is ``(HI·2²⁴ + LO) / (total·2³²)`` in float64, elementwise: a function of the integer
sums alone, hence the same bytes on every machine.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch

from fl.strategy.base import (MAX_ABS, MAX_TOTAL, InvalidUpdate, StateDict, Update, check_layout, check_samples,
                              check_values)

GRID_BITS = 32  # values live on a grid of 2**-32
LIMB_BITS = 24  # q = hi * 2**24 + lo
LIMB_MASK = (1 << LIMB_BITS) - 1
HI_MAX = MAX_ABS << (GRID_BITS - LIMB_BITS)  # |hi| <= 2**28 for |v| <= 2**20
BLOCK = 1 << 18  # elements quantised at a time: the scratch buffers stay small and in cache
_SCALE = float(2**GRID_BITS)


def scratch_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where ``v · 2³²`` is exact and rounds exactly: float64 stays, narrower floats widen to
    float32 (float16 would overflow)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def quantize(value: torch.Tensor, fscratch: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``round(value · 2³²)`` as int64 into ``q`` (1-D blocks of equal length; ``fscratch`` of
    ``scratch_dtype(value.dtype)``). Multiplying by a power of two is exact and the rounded
    value is an integer the float holds exactly, so the conversion to int64 is exact too."""
    if value.dtype == fscratch.dtype:
        torch.mul(value, _SCALE, out=fscratch)
    else:
        fscratch.copy_(value)
        fscratch.mul_(_SCALE)
    fscratch.round_()
    q.copy_(fscratch)
    return q


def limbs_to_float64(hi: torch.Tensor, lo: torch.Tensor, count: int) -> torch.Tensor:
    """``(hi·2²⁴ + lo) / (count·2³²)`` in float64, elementwise (deterministic)."""
    out = hi.to(torch.float64)
    out.mul_(float(1 << LIMB_BITS))  # exact: a power of two
    out.add_(lo.to(torch.float64))
    out.div_(float(count) * _SCALE)  # count·2**32 is exact in float64 for count < 2**35
    return out


class ExactSum:
    """A sample-weighted sum of updates whose result does not depend on the order or grouping in
    which updates were added or partial sums merged (see the module docstring).

    ``reference``: the global shared state (keys, shapes and dtypes; values unused); without it
    the first update added sets the layout. ``reuse``: a finished sum whose buffers (same layout)
    are zeroed and filled again instead of new pages (a supernode sums every round); the finished
    sum must not be used afterwards. Not thread-safe: one thread adds at a time."""

    def __init__(self, reference: Mapping[str, torch.Tensor] | None = None, *,
                 reuse: "ExactSum | None" = None) -> None:
        self.total = 0
        self._layout: StateDict | None = None  # key -> a meta tensor of the shape and dtype
        self._hi: StateDict = {}
        self._lo: StateDict = {}
        self._max: StateDict = {}
        self._scratch: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if reference is not None:
            self._set_layout(reference, reuse)

    # --- layout -----------------------------------------------------------------------------------
    def _set_layout(self, reference: Mapping[str, torch.Tensor], reuse: "ExactSum | None" = None) -> None:
        self._layout = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in sorted(reference.items())}
        spare = reuse if reuse is not None and reuse._layout is not None and _same_layout(reuse._layout,
                                                                                           self._layout) else None
        for key, ref in self._layout.items():
            if ref.is_floating_point():
                if spare is not None:
                    self._hi[key], self._lo[key] = spare._hi[key].zero_(), spare._lo[key].zero_()
                else:
                    self._hi[key] = torch.zeros(ref.shape, dtype=torch.int64)
                    self._lo[key] = torch.zeros(ref.shape, dtype=torch.int64)
            else:
                self._max[key] = (spare._max[key] if spare is not None else torch.empty(ref.shape, dtype=ref.dtype))
                self._max[key].fill_(_lowest(ref.dtype))
        if spare is not None:
            self._scratch = spare._scratch
            spare._layout, spare._hi, spare._lo, spare._max, spare._scratch = None, {}, {}, {}, {}
            spare.total = 0

    @property
    def keys(self) -> list[str]:
        return list(self._layout or ())

    def layout(self) -> StateDict:
        """Key → a meta tensor with the key's shape and dtype (no data): what this sum is of."""
        return dict(self._layout or {})

    def _buffers(self, dtype: torch.dtype, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scratch of at least ``size`` elements, kept across adds (fresh pages cost more than the
        arithmetic): a float buffer and two int64 ones."""
        fdtype = scratch_dtype(dtype)
        buffers = self._scratch.get(fdtype)
        if buffers is None or buffers[0].numel() < size:
            size = max(size, buffers[0].numel() if buffers is not None else 0)
            buffers = (torch.empty(size, dtype=fdtype), torch.empty(size, dtype=torch.int64),
                       torch.empty(size, dtype=torch.int64))
            self._scratch[fdtype] = buffers
        return buffers

    # --- adding -----------------------------------------------------------------------------------
    def add(self, update: Update, *, checked: bool = False) -> None:
        """Fold one update in. Its keys, shapes, dtypes, values (finite, |v| ≤ 2²⁰) and sample
        count are checked here unless ``checked`` says ``Strategy.validate`` already did against
        the same reference; the total must stay below 2³⁵ samples."""
        count = check_samples(update.num_samples)
        if self.total + count >= MAX_TOTAL:
            raise InvalidUpdate(f"the sum would reach {self.total + count} samples; at most {MAX_TOTAL - 1}")
        if self._layout is None:
            check_layout(update.state, update.state)  # tensors, at least
            reference: Mapping[str, torch.Tensor] = update.state
        else:
            reference = self._layout
        if not checked:
            check_layout(reference, update.state)
            for key, value in update.state.items():
                check_values(key, value)
        if self._layout is None:
            self._set_layout(update.state)
        for key in self._hi:
            self._add_key(key, update.state[key], count)
        for key, high in self._max.items():
            torch.maximum(high, update.state[key].cpu(), out=high)
        self.total += count

    def _add_key(self, key: str, value: torch.Tensor, count: int) -> None:
        value = value.reshape(-1).cpu()  # sums live on the CPU (a no-op for CPU tensors)
        hi_sum, lo_sum = self._hi[key].view(-1), self._lo[key].view(-1)
        n = value.numel()
        fscratch, q, part = self._buffers(value.dtype, min(n, BLOCK))
        for start in range(0, n, BLOCK):
            stop = min(n, start + BLOCK)
            width = stop - start
            qq, pp = quantize(value[start:stop], fscratch[:width], q[:width]), part[:width]
            torch.bitwise_and(qq, LIMB_MASK, out=pp)  # lo in [0, 2**24)
            lo_sum[start:stop].add_(pp, alpha=count)
            qq.bitwise_right_shift_(LIMB_BITS)  # hi: an arithmetic shift (floor division)
            hi_sum[start:stop].add_(qq, alpha=count)

    def merge(self, other: "ExactSum") -> None:
        """Add another sum (a supernode's partial) into this one."""
        if other.total == 0:
            return
        if self.total + other.total >= MAX_TOTAL:
            raise InvalidUpdate(f"merged sums would reach {self.total + other.total} samples; "
                                f"at most {MAX_TOTAL - 1}")
        assert other._layout is not None
        if self._layout is None:
            self._set_layout(other._layout)
        elif not _same_layout(self._layout, other._layout):
            raise InvalidUpdate("partial sums of different layouts cannot be merged: "
                                f"{_describe(self._layout)} vs {_describe(other._layout)}")
        for key in self._hi:
            self._hi[key].add_(other._hi[key])
            self._lo[key].add_(other._lo[key])
        for key, high in self._max.items():
            torch.maximum(high, other._max[key], out=high)
        self.total += other.total

    # --- results ----------------------------------------------------------------------------------
    def mean(self, dtypes: Mapping[str, torch.dtype] | None = None) -> StateDict:
        """The sample-weighted mean: float keys in ``dtypes[key]`` (float64 without ``dtypes``),
        integer keys their elementwise max. Deterministic: a function of the integer sums."""
        if self.total == 0 or self._layout is None:
            raise ValueError("nothing to aggregate: no updates")
        out: StateDict = {}
        for key, ref in self._layout.items():
            if key in self._hi:
                mean = limbs_to_float64(self._hi[key], self._lo[key], self.total)
                dtype = dtypes[key] if dtypes is not None else torch.float64
                out[key] = mean if dtype == torch.float64 else mean.to(dtype)
            else:
                out[key] = self._max[key].clone()
        return out

    def to_state(self) -> StateDict:
        """The sum as tensors for safetensors: ``<key>/hi`` and ``<key>/lo`` (int64) for float
        keys, ``<key>/max`` for integer ones. The total travels beside it. These are this sum's
        own tensors, not copies: serialise them before adding more."""
        state: StateDict = {}
        for key in self._hi:
            state[f"{key}/hi"], state[f"{key}/lo"] = self._hi[key], self._lo[key]
        for key, high in self._max.items():
            state[f"{key}/max"] = high
        return dict(sorted(state.items()))

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], total: int,
                   reference: Mapping[str, torch.Tensor]) -> "ExactSum":
        """A partial sum received from elsewhere, checked against ``reference`` (keys, shapes,
        dtypes) and against what ``total`` samples within the bounds could produce:
        1 ≤ total < 2³⁵, |HI| ≤ total·2²⁸, 0 ≤ LO ≤ total·(2²⁴−1). Anything else is
        :class:`InvalidUpdate`; the tensors are copied (``state`` may be read-only views)."""
        if isinstance(total, bool) or not isinstance(total, numbers.Integral) or not 1 <= total < MAX_TOTAL:
            raise InvalidUpdate(f"a partial sum's total must be an integer in [1, {MAX_TOTAL - 1}], got {total!r}")
        total = int(total)
        expected: dict[str, tuple[torch.Size, torch.dtype, int, int]] = {}
        for key, ref in reference.items():
            if ref.is_floating_point():
                expected[f"{key}/hi"] = (ref.shape, torch.int64, -total * HI_MAX, total * HI_MAX)
                expected[f"{key}/lo"] = (ref.shape, torch.int64, 0, total * LIMB_MASK)
            else:
                expected[f"{key}/max"] = (ref.shape, ref.dtype, 0, 0)
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise InvalidUpdate(f"partial sum keys differ from the model: missing {missing}, unexpected {extra}")
        for name, (shape, dtype, low, high) in expected.items():
            value = state[name]
            if not isinstance(value, torch.Tensor):
                raise InvalidUpdate(f"{name}: expected a tensor, got {type(value).__name__}")
            if value.shape != shape:
                raise InvalidUpdate(f"{name}: shape {tuple(value.shape)}, expected {tuple(shape)}")
            if value.dtype != dtype:
                raise InvalidUpdate(f"{name}: dtype {value.dtype}, expected {dtype}")
            if not name.endswith("/max") and value.numel():
                vmin, vmax = (int(x) for x in torch.aminmax(value))
                if vmin < low or vmax > high:
                    raise InvalidUpdate(f"{name}: limbs in [{vmin}, {vmax}] exceed what {total} samples "
                                        f"can sum to ([{low}, {high}])")
        out = cls(reference)
        for key in out._hi:
            out._hi[key].copy_(state[f"{key}/hi"])
            out._lo[key].copy_(state[f"{key}/lo"])
        for key, high in out._max.items():
            high.copy_(state[f"{key}/max"])
        out.total = total
        return out


def _lowest(dtype: torch.dtype) -> Any:
    return False if dtype == torch.bool else torch.iinfo(dtype).min


def _same_layout(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)


def _describe(layout: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}{tuple(v.shape)}:{v.dtype}" for k, v in layout.items())
