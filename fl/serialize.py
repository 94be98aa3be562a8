"""State dicts as safetensors bytes, and the SHA-256 that names them on the chain.

safetensors orders tensors canonically and carries no code, so the same state dict always
gives the same bytes (and hash), and bytes from the network can be decoded without the risk
that unpickling would bring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

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
