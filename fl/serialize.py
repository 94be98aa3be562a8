"""State dicts as safetensors bytes, and the SHA-256 that names them on the chain.

safetensors orders tensors canonically and carries no code, so the same state dict always
gives the same bytes (and hash), and bytes from the network can be decoded without the risk
that unpickling would bring.
"""

from __future__ import annotations

import hashlib
import math
import sys
import warnings
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from fl.layout import SerializationError, header_size, read_layout  # noqa: F401 (SerializationError is re-exported)

StateDict = dict[str, torch.Tensor]


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


_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}


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
