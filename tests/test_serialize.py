import hashlib

import pytest
import torch

from fl.models import CNN
from fl.serialize import SerializationError, model_hash, state_from_bytes, state_to_bytes


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
