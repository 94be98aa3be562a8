"""The other ways to learn, in the simulation (the network runs the same code: see
test_strategy_network.py, where each gives the simulation's global model bit for bit):

- distillation: only outputs on the public set travel, so two architectures train in one job, and
  each node ends better than its local-only twin on its own test split;
- split learning: the gradients through the cut (labels on the supernode, or U-shaped) are those
  of training the whole model end to end; SplitFed shares the lower layers too, the U-shaped head
  never leaves its client.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import ConfigError, load_config
from fl.datasets import load_dataset
from fl.distill import PUBLIC_LOGITS
from fl.federation import JobSpec, client_indices
from fl.models import CNN, MLP
from fl.simulation import run_simulation
from fl.split import Cut, LocalLink, ServerHalf, train_split

DIGITS = {"dataset": "digits", "BATCH_SIZE": 16, "learn_rate": 0.05, "workers": 2, "device": "cpu"}


def _conf(**overrides):
    return load_config(env={}, overrides={**DIGITS, **overrides})


# --- split learning -----------------------------------------------------------------------------
@pytest.mark.parametrize("model, split_layers, u_shaped", [
    (lambda: MLP(64, (128, 64), 10), 1, False),
    (lambda: MLP(64, (128, 64), 10), 1, True),
    (lambda: CNN(1, 28, 10), 1, False),
    (lambda: CNN(1, 28, 10), 2, True),
], ids=["mlp", "mlp-u-shaped", "cnn", "cnn-u-shaped"])
def test_split_gradients_match_end_to_end_training_of_the_whole_model(model, split_layers, u_shaped):
    torch.manual_seed(0)
    whole = model()
    edge, server = copy.deepcopy(whole), copy.deepcopy(whole)
    shape = (1, 8, 8) if isinstance(whole, MLP) else (1, 28, 28)
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in whole.state_dict().items()}

    F.cross_entropy(whole(x), y).backward()  # end to end, one batch
    expected = {name: p.grad for name, p in whole.named_parameters()}

    cut = Cut.of(edge, split_layers, u_shaped, 1)
    half = ServerHalf(server, cut, before, lr=1.0, momentum=0.0)  # lr 1: a step moves each weight by its gradient
    _, upper = train_split(edge, cut, LocalLink(half), x, y, epochs=1, lr=1.0, batch_size=16)
    after = {**edge.state_dict(), **upper}
    assert set(upper) == set(cut.server_keys(whole)) and set(upper).isdisjoint(cut.edge_keys(whole))
    for name, grad in expected.items():
        torch.testing.assert_close(before[name] - after[name], grad, atol=1e-5, rtol=0)


def test_a_cut_that_leaves_a_side_empty_is_refused_before_training():
    with pytest.raises(ValueError, match="split_layers=3"):
        run_simulation(_conf(strategy="split", split_layers=3, **{"client.amount": 2, "gobal_epoch": 1}))
    with pytest.raises(ValueError, match="head"):  # U-shaped: the head's layer is the edge node's too
        run_simulation(_conf(strategy="split", split_layers=2, split_labels="edge",
                             **{"client.amount": 2, "gobal_epoch": 1}))


@pytest.mark.parametrize("strategy, labels, shared", [
    ("split", "server", {"fc2", "fc"}),
    ("split", "edge", {"fc2"}),
    ("splitfed", "server", {"fc1", "fc2", "fc"}),
    ("splitfed", "edge", {"fc1", "fc2"}),
])
def test_split_learning_shares_the_upper_layers_and_splitfed_the_lower_ones_too(strategy, labels, shared):
    result = run_simulation(_conf(strategy=strategy, split_labels=labels, partition="iid",
                                  **{"client.amount": 4, "gobal_epoch": 3}))
    assert {k.split(".")[0] for k in result.global_state} == shared
    kept = {"fc1", "fc2", "fc"} - shared
    assert all({k.split(".")[0] for k in p} == kept for p in result.personal_states)
    assert result.final_accuracy > 0.6  # it learns (digits, 3 rounds)


# --- distillation -------------------------------------------------------------------------------
def test_distillation_shares_only_outputs_on_a_public_set_held_out_of_every_client():
    conf = _conf(strategy="distill", model="mlp,mlp_small", distill_public=300, partition="iid",
                 **{"client.amount": 4, "gobal_epoch": 2})
    result = run_simulation(conf)
    assert list(result.global_state) == [PUBLIC_LOGITS]
    assert result.global_state[PUBLIC_LOGITS].shape == (300, 10)
    layers = [{k.split(".")[0] for k in p} for p in result.personal_states]
    assert layers == [{"fc1", "fc2", "fc"}, {"fc1", "fc"}] * 2  # two architectures, each kept whole
    splits = client_indices(load_dataset("digits").y.numpy(), JobSpec.from_config(conf))
    public = splits[0].public
    assert len(public) == 300 and all(np.array_equal(s.public, public) for s in splits)
    assert all(np.intersect1d(public, np.concatenate([s.train, s.test])).size == 0 for s in splits)


def test_distillation_between_two_architectures_beats_each_nodes_local_only_model():
    """The same job with the distillation term off (distill_alpha=0) is each node's local-only
    model: the same architecture, data, seeds and steps."""
    settings = {"strategy": "distill", "model": "mlp,mlp_small", "partition": "iid", "client.amount": 10,
                "gobal_epoch": 8, "openEval": False}
    result = run_simulation(_conf(**settings))
    distilled = result.rounds[-1].client_acc
    alone = run_simulation(_conf(**settings, distill_alpha=0.0)).rounds[-1].client_acc
    for arch in (0, 1):  # each architecture gains on average ...
        assert np.mean(distilled[arch::2]) > np.mean(alone[arch::2]) + 0.03
    # ... nine of ten nodes gain on their own test split (about 32 samples each), and none loses more
    # than one test sample's worth
    assert sum(d > a for d, a in zip(distilled, alone)) >= 9, (distilled, alone)
    assert all(d >= a - 1 / n - 1e-9 for d, a, n in zip(distilled, alone, result.num_test)), (distilled, alone)


@pytest.mark.parametrize("overrides, words", [
    ({"strategy": "fedavg", "model": "mlp,mlp_small"}, ["strategy=distill"]),
    ({"strategy": "distill", "dp": "central", "dp_noise": 1.0}, ["dp=central", "distill"]),
    ({"strategy": "split", "scores": "gtg"}, ["scores=gtg", "flb"]),
    ({"strategy": "distill", "update_norm_bound": 1.0}, ["update_norm_bound", "zeros"]),
    ({"model": "mlp,resnet"}, ["mlp_small"]),
    ({"strategy": "split", "proximal_mu": 0.01}, ["proximal_mu", "cut"]),
    ({"strategy": "distill", "aggregation": "fedavgm"}, ["fedavgm", "median"]),
    ({"dataset": "stdlib", "partition": "pfllib"}, ["pfllib", "family"]),
    ({"dataset": "stdlib", "own_data": True}, ["dataset=text"]),
    ({"split_layers": 2}, ["split_layers", "strategy=split", "fedper"]),  # an option the job does not use
    ({"distill_public": 100, "strategy": "fedavg"}, ["distill_public", "strategy=distill"]),
    ({"lora_rank": 4}, ["lora_rank", "model=lora"]),
])
def test_settings_that_cannot_go_together_are_refused_naming_why(overrides, words):
    with pytest.raises(ConfigError) as refused:
        _conf(**overrides)
    assert all(w in str(refused.value) for w in words), str(refused.value)


# --- the supernode's side of a split round, driven directly -------------------------------------
def _split_round(samples: int = 32):
    from fl.federation import ClientWorker
    from fl.serialize import state_to_bytes
    from node.chain.identity import Identity
    from node.chain.rules import Transaction, TxKind
    from node.net.streams import ReceivedModel, make_header
    from node.roles.jobs import Job, job_payload

    conf = _conf(strategy="split", **{"client.amount": 1, "BATCH_SIZE": 16, "local_epoch": 1})
    spec = JobSpec.from_config(conf)
    entry, edge = Identity.generate(), Identity.generate()
    job = Job.from_tx(Transaction.create(TxKind.JOB, job_payload("job-1", spec, [edge.node_id], conf, [samples]), entry))
    data = state_to_bytes(ClientWorker(spec, 10, torch.device("cpu")).initial_shared())
    return job, ReceivedModel.of(make_header(entry, data, "job-1", 0), data), edge.node_id


def _stream(server, edge_id, model, *batches, attempt="attempt-1"):
    """The answers to an opening message and ``batches`` (each a dict of tensors, or "finish")."""
    from base_package import data_pb2 as pb
    from fl.serialize import state_to_bytes
    from node.net.guard import calls_from
    from node.net.tls import Peer

    messages = [pb.SplitMessage(node_id=edge_id, job_id="job-1", round=1, attempt=attempt,
                                model_hash=model.header.model_hash)]
    messages += [pb.SplitMessage(finish=True) if b == "finish" else pb.SplitMessage(tensors=state_to_bytes(b))
                 for b in batches]
    with calls_from(Peer(node_id=edge_id, role="EN")):
        return list(server.serve(iter(messages)))


def _code(call):
    from node.net.errors import ServiceError

    with pytest.raises(ServiceError) as refused:
        call()
    return refused.value.code.name


def test_a_supernode_serves_each_edge_node_its_share_of_batches_one_stream_at_a_time():
    from node.roles.split import SplitServer

    job, model, edge = _split_round(samples=32)  # one epoch of 32 samples in batches of 16: 2 batches
    server = SplitServer(node=None)
    batch = {"activations": torch.randn(16, 128), "labels": torch.randint(0, 10, (16,))}
    assert _code(lambda: _stream(server, edge, model, batch)) == "FAILED_PRECONDITION"  # no round here
    with server.attempt("attempt-1", job, 1, model, [edge]):
        assert _code(lambda: _stream(server, edge, model, batch)) == "PERMISSION_DENIED"  # not asked yet
        server.ask("attempt-1", edge)
        assert _code(lambda: _stream(server, "someone-else", model, batch)) == "PERMISSION_DENIED"
        bad = {"activations": torch.randn(16, 8, 16), "labels": batch["labels"]}  # not the cut's shape
        assert _code(lambda: _stream(server, edge, model, bad)) == "INVALID_ARGUMENT"
        answers = _stream(server, edge, model, batch)  # one batch, then the stream ends unfinished
        assert len(answers) == 1
        with server.attempt("attempt-2", job, 1, model, [edge]):  # a retry overlapping it: records of its own
            server.ask("attempt-2", edge)
            assert len(_stream(server, edge, model, batch, batch, "finish", attempt="attempt-2")) == 3
        assert _code(lambda: _stream(server, edge, model, batch, batch, batch)) == "RESOURCE_EXHAUSTED"
        _stream(server, edge, model, "finish")
        assert _code(lambda: _stream(server, edge, model, batch)) == "ALREADY_EXISTS"  # none after its finish
    assert _code(lambda: _stream(server, edge, model, batch)) == "FAILED_PRECONDITION"


def test_a_split_batch_too_large_for_one_message_is_refused_at_the_start():
    from node.roles.split import check_split_fits

    spec = JobSpec.from_config(load_config(env={}, overrides={"dataset": "mnist", "strategy": "split",
                                                              "BATCH_SIZE": 1000}))
    with pytest.raises(ValueError, match="at most 451"):
        check_split_fits(spec)
