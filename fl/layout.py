"""The layout of safetensors bytes (names, dtypes, shapes, byte ranges) read from the header
alone, without torch: a receiver checks a model as it arrives, and the console and the health
check stay light to import."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


class SerializationError(ValueError):
    """Bytes are not a valid safetensors model."""


# --- reading the layout without decoding ---------------------------------------------------------
# A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
# dtype, shape and byte range, then the raw data. Reading only the header lets a receiver check a
# model's keys and shapes as soon as it arrives, and decode (a full copy) only when it is used.
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}
_MAX_HEADER_BYTES = 100 << 20
@dataclass(frozen=True)
class TensorLayout:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte range within the data section
    end: int


def header_size(first8: bytes) -> int:
    """Bytes the layout header occupies (the 8-byte length included)."""
    if len(first8) < 8:
        raise SerializationError(f"not a valid safetensors model: only {len(first8)} bytes")
    n = int.from_bytes(first8[:8], "little")
    if n > _MAX_HEADER_BYTES:
        raise SerializationError(f"not a valid safetensors model: a {n}-byte header")
    return 8 + n


def read_layout(prefix: bytes, total_size: int) -> dict[str, TensorLayout]:
    """Tensor layouts from the first ``header_size`` bytes of a ``total_size``-byte model, checked
    as safetensors checks them: known dtypes, byte ranges that match the shapes, tile the data
    section exactly and fit in the file."""
    end_of_header = header_size(prefix)
    if len(prefix) < end_of_header or total_size < end_of_header:
        raise SerializationError("not a valid safetensors model: truncated header")
    try:
        header = json.loads(prefix[8:end_of_header])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # (JSON nested too deep)
        raise SerializationError(f"not a valid safetensors model: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SerializationError("not a valid safetensors model: header is not an object")
    header.pop("__metadata__", None)
    layouts: dict[str, TensorLayout] = {}
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if dtype not in _ITEM_BYTES or not all(_is_size(v) for v in (*shape, start, end)) \
                    or end - start != math.prod(shape) * _ITEM_BYTES[dtype] \
                    or math.prod(max(d, 1) for d in shape) * _ITEM_BYTES[dtype] >= 1 << 63:  # even if empty
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise SerializationError(f"not a valid safetensors model: bad entry for {name!r}") from None
        layouts[name] = TensorLayout(dtype, shape, start, end)
    cursor = 0
    for layout in sorted(layouts.values(), key=lambda t: (t.start, t.end)):
        if layout.start != cursor:
            raise SerializationError("not a valid safetensors model: tensor byte ranges leave gaps or overlap")
        cursor = layout.end
    if end_of_header + cursor != total_size:
        raise SerializationError(
            f"not a valid safetensors model: {total_size} bytes, but the header describes {end_of_header + cursor}")
    return layouts


def _is_size(value: object) -> bool:
    """A JSON integer that can be a dimension or an offset (not a float, a bool or > 2**63)."""
    return type(value) is int and 0 <= value < 1 << 63
