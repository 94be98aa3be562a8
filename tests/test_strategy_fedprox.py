"""FedProx's client hook: parsed from the round's configuration, exact when off, pulling the
shared weights toward the loaded global ones when on."""

import pytest
import torch

from config import load_config
from fl.datasets import load_dataset
from fl.federation import ClientWorker, JobSpec, client_data, client_indices, split_state
from fl.strategy import Mean, TrainHook
from fl.strategy.fedprox import ProximalTerm
from fl.train import train_local

DIGITS = load_dataset("digits")


def test_train_hook_parses_the_round_configuration():
    assert TrainHook.from_config({}) == TrainHook(0.0)
    assert TrainHook.from_config(Mean(proximal_mu=0.01).configure_train(1)).proximal_mu == 0.01
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['clip'\]"):
        TrainHook.from_config({"proximal_mu": "0.1", "clip": "1.0"})
    for bad in ("-0.5", "nan", "inf", "lots"):
        with pytest.raises(ValueError, match="proximal_mu"):
            TrainHook.from_config({"proximal_mu": bad})


def test_the_proximal_term_adds_mu_times_the_distance_to_the_anchor():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    term = ProximalTerm([param], mu=0.5)  # anchored at the current values
    with torch.no_grad():
        param.copy_(torch.tensor([2.0, -2.0, 0.0]))
    param.grad = torch.tensor([0.1, 0.2, 0.3])
    term()
    assert torch.allclose(param.grad, torch.tensor([0.1 + 0.5 * 1.0, 0.2, 0.3 + 0.5 * -3.0]))


def _setup(strategy="fedavg", **extra):
    conf = load_config(env={}, overrides={"dataset": "digits", "client.amount": 4, "BATCH_SIZE": 16,
                                          "learn_rate": 0.05, "local_epoch": 2, "strategy": strategy, **extra})
    job = JobSpec.from_config(conf)
    split = client_indices(DIGITS.y.numpy(), job)[1]
    data = client_data(DIGITS, split, torch.device("cpu"))
    worker = ClientWorker(job, DIGITS.num_classes, torch.device("cpu"))
    start = worker.model.full_state()
    return job, worker, data, split_state(start, worker.shared_keys), split_state(start, worker.personal_keys)


def _distance(state, reference):
    return sum(float((state[k] - reference[k]).pow(2).sum()) for k in reference) ** 0.5


def test_fedprox_keeps_the_shared_weights_closer_to_the_global_ones():
    job, worker, data, shared, personal = _setup()
    plain = worker.train_round(1, data, 1, shared, personal).shared
    distances = [_distance(plain, shared)]
    for mu in (0.1, 1.0):
        prox = worker.train_round(1, data, 1, shared, personal, config={"proximal_mu": repr(mu)}).shared
        distances.append(_distance(prox, shared))
    assert distances[2] < distances[1] < distances[0]
    assert distances[2] < 0.8 * distances[0]


def test_fedprox_applies_to_the_shared_layers_only():
    job, worker, data, shared, personal = _setup("fedper")
    a = worker.train_round(1, data, 1, shared, personal)
    b = worker.train_round(1, data, 1, shared, personal, config={"proximal_mu": "1.0"})
    assert _distance(b.shared, shared) < _distance(a.shared, shared)
    term = TrainHook(1.0).start(worker.model, worker.shared_keys)
    named = dict(worker.model.named_parameters())
    assert [id(p) for p in term.params] == [id(named[k]) for k in worker.shared_keys]
    assert "fc.weight" not in worker.shared_keys  # the head is not pulled
    assert TrainHook(0.0).start(worker.model, worker.shared_keys) is None


def test_mu_zero_gives_the_bytes_of_training_without_a_hook():
    job, worker, data, shared, personal = _setup()
    with_config = [worker.train_round(1, data, 1, shared, personal, config=c).shared
                   for c in ({}, {"proximal_mu": "0.0"})]
    worker.load(0, shared, personal)  # the code path from before the hook existed
    train_local(worker.model, data.x_train, data.y_train, epochs=job.local_epochs, lr=job.lr,
                batch_size=job.batch_size, momentum=job.momentum, seed=job.round_seed(1, 1))
    before = split_state(worker.model.full_state(), worker.shared_keys)
    for state in with_config:
        assert all(state[k].numpy().tobytes() == before[k].numpy().tobytes() for k in before)


def test_a_round_order_with_an_unknown_option_is_refused():
    job, worker, data, shared, personal = _setup()
    with pytest.raises(ValueError, match="unknown training option"):
        worker.train_round(1, data, 1, shared, personal, config={"dp_sigma": "1.0"})
