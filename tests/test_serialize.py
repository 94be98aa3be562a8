import hashlib

import pytest
import torch

from fl.models import CNN
from fl.serialize import SerializationError, model_hash, state_from_bytes, state_to_bytes, state_views


def test_round_trip_is_exact():
    torch.manual_seed(0)
    state = CNN().state_dict()
    back = state_from_bytes(state_to_bytes(state))
    assert list(back) == sorted(state) or set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_same_state_same_bytes_and_hash():
    torch.manual_seed(1)
    state = {"b": torch.randn(3, 4), "a": torch.arange(5), "c": torch.randn(2, dtype=torch.float64)}
    reordered = {k: state[k].clone() for k in ("c", "a", "b")}
    channels_last = {**state, "d": torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)}
    plain = {**state, "d": channels_last["d"].contiguous()}
    one, two = state_to_bytes(state), state_to_bytes(reordered)
    assert one == two
    assert model_hash(one) == model_hash(two) == hashlib.sha256(one).hexdigest()
    assert state_to_bytes(channels_last) == state_to_bytes(plain)
    assert model_hash(state_to_bytes({**state, "a": torch.arange(5) + 1})) != model_hash(one)


@pytest.mark.parametrize("data", [b"", b"not safetensors at all", b"\xff" * 8 + b"{}", state_to_bytes({"a": torch.ones(4)})[:-3]])
def test_malformed_bytes_raise_clear_error(data):
    with pytest.raises(SerializationError, match="not a valid safetensors model"):
        state_from_bytes(data)


def test_views_read_the_same_tensors_without_copying_them():
    state = {"w": torch.randn(3, 4), "n": torch.arange(5), "h": torch.randn(7).half(), "empty": torch.empty(0, 3),
             "flag": torch.tensor(True), "b": torch.randn(2).bfloat16()}
    data = state_to_bytes(state)
    views = state_views(data)
    decoded = state_from_bytes(data)
    assert views.keys() == decoded.keys()
    for key, value in decoded.items():
        assert views[key].dtype == value.dtype and views[key].shape == value.shape
        assert torch.equal(views[key], value)
    import numpy as np

    start, end = (address := np.frombuffer(data, dtype=np.uint8).ctypes.data), address + len(data)
    assert all(start <= v.data_ptr() < end for v in views.values() if v.numel())  # in the model's own bytes
    del data
    assert torch.equal(views["w"], decoded["w"])  # the views keep the bytes alive


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    import json

    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize("data", [
    b"", b"\x01" * 8, b"\x10\x00\x00\x00\x00\x00\x00\x00{}", b"\xff" * 64,
    _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, bytes(8)),
    _safetensors({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, bytes(8)),
    _safetensors({"a": {"dtype": "F32", "shape": [0, 10**30], "data_offsets": [0, 0]}}),
    _safetensors({"a": {"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [0, 0]}}),
])
def test_views_of_malformed_bytes_raise_clear_error(data):
    for decode in (state_views, state_from_bytes):
        with pytest.raises(SerializationError, match="not a valid safetensors model"):
            decode(data)
