"""Federated LoRA fine-tuning over the network (an entry supernode, a second supernode, two edge
nodes, each with the same tiny pretrained model at --model-path): the job gives the simulation's
global adapters bit for bit; only adapter tensors cross the wire (the headers of every recorded
update); the base model is pinned in the JOB, and an edge node holding another one is left out
with the reason; perplexity falls; another supernode recomputes every aggregate.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from base_package import data_pb2 as pb
from config import load_config
from fl.lm.base import base_model_hash
from fl.lm.pretrain import pretrain
from fl.serialize import model_hash, state_to_bytes
from node.dev.launcher import NodeProcess, wait_until
from node.net.wire import block_from_pb, tx_from_pb
from conftest import download_update, run_job, simulate_as_edge_nodes, start_network

BLOCK = 32
JOB = {"dataset": "stdlib", "model": "lora", "strategy": "fedavg", "lora_variant": "ffa", "lora_rank": "4",
       "partition": "pathological", "classes_per_client": "2", "rounds": "2", "local_epochs": "1", "lr": "0.01",
       "batch_size": "8", "block_size": str(BLOCK), "text_blocks": "40"}
SIM_KEYS = {"rounds": "gobal_epoch", "local_epochs": "local_epoch", "lr": "learn_rate", "batch_size": "BATCH_SIZE"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama pretrained for a few seconds, and a copy that differs in its config only: another
    base model to the pin."""
    out = tmp_path_factory.mktemp("lm") / "tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(out, steps=120, seed=0, vocab_size=512, layers=2, hidden=64, heads=2, block_size=BLOCK,
                 batch_size=16, device="cpu", log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    other = out.parent / "other"
    shutil.copytree(out, other)
    with open(other / "config.json", "a", encoding="utf-8") as config:
        config.write("\n")
    return out, other


def _updates(entry: NodeProcess, job_id: str) -> list:
    head = entry.head().height
    return [t for h in range(head + 1) for t in block_from_pb(entry.console("GetBlock", pb.BlockRequest(height=h))).transactions
            if t.kind == "MODEL_UPDATE" and t.payload["job_id"] == job_id]


def test_lora_adapters_only_travel_and_the_network_matches_the_simulation(tmp_path, nodes, tiny):
    model_path, other = tiny
    where = ["--model-path", str(model_path)]
    entry, sn, edges = start_network(tmp_path, lambda name: None, nodes, 2, edge_args=where, entry_args=where,
                                     extra=where)
    done = run_job(entry, JOB)
    spec = tx_from_pb(done.job).payload["spec"]
    assert spec["base_model"] == base_model_hash(model_path)  # pinned; the files are as pretrained

    # the same job in the simulation: the same global adapters, byte for byte
    overrides = {SIM_KEYS.get(k, k): v for k, v in JOB.items()}
    conf = load_config(env={}, overrides={**overrides, "client.amount": 2, "workers": 1, "device": "cpu",
                                          "model_path": str(model_path)})
    simulated = simulate_as_edge_nodes(conf)
    assert tx_from_pb(done.global_model).payload["hash"] == model_hash(state_to_bytes(simulated.global_state))
    assert simulated.global_state and all(".lora_B." in k for k in simulated.global_state)  # FFA: B alone

    # only adapters crossed the wire: the header of every update the supernodes took
    updates = _updates(entry, done.job_id)
    assert len(updates) == 4
    for tx in updates:
        model = download_update([entry, sn], tx.payload["hash"])
        assert set(model.layout()) == set(simulated.global_state)
        assert tx.payload["size"] < (model_path / "model.safetensors").stat().st_size / 10

    # perplexity (exp of the mean token loss on the edge nodes' own held-out blocks) falls
    assert math.exp(done.metrics[-1].loss) < math.exp(done.metrics[0].loss)
    checked = sn.console("Verify", pb.VerifyRequest(recompute=True), timeout=120)
    assert checked.ok and checked.recompute.ok, checked.recompute.reason

    # an edge node holding another base model is left out, saying which
    stranger = NodeProcess(tmp_path, "en-other", "EN", entry=entry.address, extra=["--model-path", str(other)],
                           token_source=entry)
    nodes.append(stranger)
    wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == 3, 60, "the third edge node")
    again = run_job(entry, {**JOB, "rounds": "1"})
    [metrics] = again.metrics
    assert metrics.participants == 2
    reasons = {x.reason for x in metrics.excluded}
    assert len(reasons) == 1 and "fine-tunes the base model" in reasons.pop(), metrics.excluded
