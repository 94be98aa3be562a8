import pytest
import torch

from fl.models import CNN, MLP, build_model, count_parameters


def test_mnist_cnn_is_the_582k_benchmark_model():
    model = build_model("auto", "mnist")
    assert isinstance(model, CNN)
    assert count_parameters(model) == 582_026
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cifar_cnn_and_digits_mlp_shapes():
    assert build_model("auto", "cifar10")(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("auto", "digits")(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_base_and_head_split_default_is_last_fc():
    model = CNN()
    assert model.head_keys() == ["fc.weight", "fc.bias"]
    assert model.base_keys() == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"]
    assert set(model.base_state()) | set(model.head_state()) == set(model.state_dict())


def test_head_is_a_parameter():
    two = CNN(head_layers=2)
    assert two.head_keys() == ["fc1.weight", "fc1.bias", "fc.weight", "fc.bias"]
    named = MLP(head_layers=["fc2", "fc"])
    assert named.base_keys() == ["fc1.weight", "fc1.bias"]
    with pytest.raises(ValueError, match="at least one base layer"):
        CNN(head_layers=4).head_keys()
    with pytest.raises(ValueError, match="proper subset"):
        CNN(head_layers=["nope"]).head_keys()


def test_load_base_keeps_head():
    a, b = MLP(), MLP()
    head_before = b.head_state()
    b.load_base(a.base_state())
    assert all(torch.equal(b.state_dict()[k], v) for k, v in a.base_state().items())
    assert all(torch.equal(b.state_dict()[k], v) for k, v in head_before.items())
    with pytest.raises(ValueError, match="does not fit"):
        b.load_base({**a.base_state(), "fc1.weight": torch.zeros(3, 3)})


def test_states_are_cpu_copies():
    model = MLP()
    state = model.base_state()
    state["fc1.weight"].zero_()
    assert not torch.equal(model.fc1.weight.detach(), state["fc1.weight"])
