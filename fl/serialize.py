"""State dicts as safetensors bytes, and the SHA-256 that names them on the chain.

safetensors orders tensors canonically and carries no code, so the same state dict always
gives the same bytes (and hash), and bytes from the network can be decoded without the risk
that unpickling would bring.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

StateDict = dict[str, torch.Tensor]


class SerializationError(ValueError):
    """Bytes are not a valid safetensors model."""


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Encode tensors (any device, any layout) as canonical safetensors bytes."""
    return save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def state_from_bytes(data: bytes) -> StateDict:
    """Decode safetensors bytes; malformed input raises :class:`SerializationError`."""
    try:
        return load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise SerializationError(f"not a valid safetensors model ({len(data)} bytes): {exc}") from None


def model_hash(data: bytes) -> str:
    """The hex SHA-256 of serialized model bytes: the model's id on the ledger."""
    return hashlib.sha256(data).hexdigest()


# --- reading the layout without decoding ---------------------------------------------------------
# A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
# dtype, shape and byte range, then the raw data. Reading only the header lets a receiver check a
# model's keys and shapes as soon as it arrives, and decode (a full copy) only when it is used.
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}
_MAX_HEADER_BYTES = 100 << 20
_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}


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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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


def state_views(data: bytes) -> StateDict:
    """The tensors of safetensors ``data`` as views of its memory, for reading only.

    A supernode checks and sums every update it receives and an edge node copies the global
    layers into its model: neither needs tensors of its own, and decoding with a copy costs a
    fresh buffer as large as the model per update, page faults included. The views keep ``data``
    alive; never write to them (``data`` is the model whose hash is on the chain)."""
    if sys.byteorder != "little":  # safetensors is little-endian; views would read it natively
        return state_from_bytes(data)
    data = bytes(data)
    start_of_data = header_size(data[:8])
    layouts = read_layout(data[:start_of_data], len(data))
    buffer = memoryview(data)
    state: StateDict = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")  # read-only by design
        for name, layout in layouts.items():
            dtype, count = _TORCH_DTYPES[layout.dtype], math.prod(layout.shape)
            state[name] = (torch.frombuffer(buffer, dtype=dtype, count=count, offset=start_of_data + layout.start)
                           .reshape(layout.shape) if count else torch.empty(layout.shape, dtype=dtype))
    return state
