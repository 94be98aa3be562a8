"""One Strategy for the simulation and the network: the same job gives the same global model,
byte for byte, in ``run_simulation`` and over real node processes (an entry supernode and a
second supernode, five edge nodes spread over both, so partial sums from two supernodes merge);
a split PFLlib wrote trains alike in both; and a strategy that cannot serve a job is refused
before the job starts, naming why.

One network serves every test here (module scope): starting node processes is the slow part.
"""

from __future__ import annotations

import grpc
import pytest

from base_package import data_pb2 as pb
from config import load_config
from fl.serialize import model_hash, state_to_bytes
from node.dev.launcher import NodeProcess, stop_all, wait_until
from node.net.wire import block_from_pb, tx_from_pb
from conftest import run_job, simulate_as_edge_nodes, start_network
from pfllib_helpers import make_clients, write_pfllib

EDGE_NODES = 5
JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "rounds": "2",
       "local_epochs": "1"}
SIM_KEYS = {"dataset": "dataset", "partition": "partition", "batch_size": "BATCH_SIZE", "lr": "learn_rate",
            "rounds": "gobal_epoch", "local_epochs": "local_epoch"}


@pytest.fixture(scope="module")
def pfllib_folder(tmp_path_factory):
    """A split as PFLlib writes it: 5 clients of random 28×28 images, 2 classes each."""
    return write_pfllib(tmp_path_factory.mktemp("pfllib") / "MNIST", make_clients([(24, 8)] * EDGE_NODES))


@pytest.fixture(scope="module")
def network(tmp_path_factory, pfllib_folder):
    started: list[NodeProcess] = []
    try:
        entry, sn, _ = start_network(tmp_path_factory.mktemp("strategies"), lambda name: None, started, EDGE_NODES,
                                     edge_args=["--data-dir", str(pfllib_folder)],
                                     entry_args=["--data-dir", str(pfllib_folder)])  # it derives the shard sizes
        yield entry, sn
    finally:
        stop_all(started, timeout=5)


def _simulated_hash(settings: dict[str, str], data_dir: str = "data") -> str:
    overrides = {SIM_KEYS.get(k, k): v for k, v in settings.items()}
    conf = load_config(env={}, overrides={**overrides, "client.amount": EDGE_NODES, "workers": 1, "device": "cpu",
                                          "data_dir": data_dir})
    return model_hash(state_to_bytes(simulate_as_edge_nodes(conf).global_state))


@pytest.mark.parametrize("strategy", [
    {"strategy": "fedper", "aggregation": "mean"},
    {"strategy": "fedavg", "aggregation": "mean"},
    {"strategy": "fedper", "aggregation": "median"},
    {"strategy": "fedper", "aggregation": "krum", "krum_f": "1"},
    {"strategy": "fedavg", "aggregation": "fedavgm", "proximal_mu": "0.01"},
    {"strategy": "fedavg", "aggregation": "fedadam"},
    {"strategy": "fedper", "aggregation": "trimmed_mean", "trim_beta": "0.2"},
    # the other ways to learn: outputs on a public set between two architectures; split learning
    # over a stream to the supernode (labels there, or U-shaped), SplitFed averaging the lower layers
    {"strategy": "distill", "aggregation": "mean", "model": "mlp,mlp_small", "distill_public": "200"},
    {"strategy": "split", "aggregation": "mean"},
    {"strategy": "splitfed", "aggregation": "mean", "split_labels": "edge"},
], ids=lambda s: "-".join(s.values()))
def test_the_network_and_the_simulation_give_the_same_global_model(network, strategy):
    entry, sn = network
    settings = {**JOB, **strategy}
    done = run_job(entry, settings)
    network_hash = tx_from_pb(done.global_model).payload["hash"]
    assert network_hash == _simulated_hash(settings)
    # both supernodes summed or listed updates: two AGGREGATE transactions per round
    head = entry.head().height
    wait_until(lambda: entry.status().pending_transactions == 0 and sn.head().height >= head, 20, "sealed")
    aggregates = [t for h in range(entry.head().height + 1)
                  for t in block_from_pb(entry.console("GetBlock", pb.BlockRequest(height=h))).transactions
                  if t.kind == "AGGREGATE" and t.payload["job_id"] == done.job_id]
    assert len(aggregates) == 2 * int(JOB["rounds"])
    decomposable = strategy["aggregation"] in ("mean", "fedavgm", "fedadam")
    assert all(("hash" in t.payload) == decomposable for t in aggregates)
    # ... and another supernode re-derives every aggregate from the recorded updates (it fetches
    # the entry node's updates from the entry node)
    checked = sn.console("Verify", pb.VerifyRequest(recompute=True), timeout=120)
    assert checked.ok and checked.recompute.ok, checked.recompute.reason
    assert checked.recompute.updates >= EDGE_NODES * int(JOB["rounds"])


def test_a_pfllib_split_trains_alike_over_the_network_and_in_the_simulation(network, pfllib_folder):
    """Edge nodes read their client's part of a split PFLlib wrote (client i = the i-th edge node
    by id), exactly as the simulation reads the same folder."""
    entry, _ = network
    settings = {**JOB, "dataset": "mnist", "partition": "pfllib", "rounds": "1", "strategy": "fedper"}
    done = run_job(entry, settings)
    assert tx_from_pb(done.global_model).payload["hash"] == _simulated_hash(settings, str(pfllib_folder))
    assert sum(e.num_samples for e in entry.console("Evaluate").edges) == 8 * EDGE_NODES  # PFLlib's test splits


@pytest.mark.parametrize("settings, words", [
    ({"aggregation": "krum", "krum_f": "2"}, ["krum", "7"]),  # needs n >= 2f+3 = 7 edge nodes; 5 are there
    ({"aggregation": "median", "trim_beta": "0.1"}, ["trim_beta", "trimmed_mean"]),
    ({"aggregation": "averaging"}, ["aggregation", "averaging"]),
    ({"krum_q": "1"}, ["krum_q"]),
    ({"lr": "inf"}, ["learn_rate", "finite"]),  # settings that cannot run are refused before the JOB is signed
    ({"model": "cnn_cifar"}, ["cnn_cifar", "does not accept"]),
])
def test_a_strategy_that_cannot_serve_the_job_is_refused_before_it_starts(network, settings, words):
    entry, _ = network
    before = entry.console("GetJob").job_id
    with pytest.raises(grpc.RpcError) as refused:
        entry.console("StartJob", pb.JobRequest(settings={**JOB, **settings}))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(w in refused.value.details() for w in words), refused.value.details()
    assert entry.console("GetJob").job_id == before  # nothing started, nothing recorded
