"""Claims are checked, not trusted: sample counts follow from the job's partition (recorded in the
JOB) or are capped, and an edge node that claims otherwise is left out with the reason."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from conftest import node_channel, refusal_code, run_job, start_supernodes
from fl.federation import JobSpec, job_data
from fl.strategy import InvalidUpdate
from config import load_config
from node.chain.identity import Identity
from node.chain.rules import Transaction, TxKind
from node.dev.launcher import NodeProcess, wait_until
from node.net.wire import tx_from_pb, tx_to_pb
from node.roles.jobs import Job, check_model_update, job_payload

FAULTY = Path(__file__).resolve().parent / "faulty_edge_node.py"
JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "rounds": "1",
       "strategy": "fedavg"}


def _update(sender: Identity, samples: int) -> Transaction:
    return Transaction.create(TxKind.MODEL_UPDATE, {"job_id": "job-1", "round": 1, "hash": "ab" * 32,
                                                    "samples": samples, "size": 10}, sender)


def test_the_job_records_each_shard_size_and_refuses_other_claims():
    entry, edges = Identity.generate(), [Identity.generate() for _ in range(3)]
    conf = load_config(env={}, overrides={"dataset": "digits", "client.amount": 3, "partition": "pathological"})
    spec = JobSpec.from_config(conf)
    sizes = [len(s.train) for s in job_data(spec, "data")[1]]
    job = Job.from_tx(Transaction.create(TxKind.JOB, job_payload("job-1", spec, [e.node_id for e in edges], conf,
                                                                 sizes), entry))
    ordered = sorted(edges, key=lambda e: e.node_id)
    check_model_update(_update(ordered[1], sizes[1]), job, 1, ordered[1].public_key)
    with pytest.raises(InvalidUpdate, match=f"claims {10**9} training samples; its shard of the job holds {sizes[1]}"):
        check_model_update(_update(ordered[1], 10**9), job, 1, ordered[1].public_key)
    own = Job.from_tx(Transaction.create(TxKind.JOB, job_payload(
        "job-1", spec, [e.node_id for e in edges], {**conf, "own_data": True, "max_samples": 500}), entry))
    assert own.samples is None and own.own_data
    check_model_update(_update(ordered[0], 500), own, 1, ordered[0].public_key)
    with pytest.raises(InvalidUpdate, match="at most 500 per edge node"):
        check_model_update(_update(ordered[0], 501), own, 1, ordered[0].public_key)
    # the operator capped one edge node at enrolment (its ENROLL's max_samples, copied into the JOB)
    capped = Job.from_tx(Transaction.create(TxKind.JOB, job_payload(
        "job-1", spec, [e.node_id for e in edges], {**conf, "own_data": True, "max_samples": 500},
        sample_caps={ordered[0].node_id: 120}), entry))
    check_model_update(_update(ordered[0], 120), capped, 1, ordered[0].public_key)
    check_model_update(_update(ordered[1], 500), capped, 1, ordered[1].public_key)
    with pytest.raises(InvalidUpdate, match="it was enrolled to bring at most 120"):
        check_model_update(_update(ordered[0], 121), capped, 1, ordered[0].public_key)


def test_edge_nodes_claiming_a_billion_samples_or_sending_a_scaled_update_are_left_out(tmp_path, nodes):
    entry, sn = start_supernodes(tmp_path, lambda name: None, nodes)
    edges = [NodeProcess(tmp_path, f"en{i}", "EN", entry=entry.address, token_source=entry) for i in range(3)]
    liars = {fault: NodeProcess(tmp_path, fault, "EN", entry=entry.address, token_source=entry, script=FAULTY,
                                env={"FEDLEDGER_TEST_FAULT": fault}) for fault in ("samples", "scale")}
    nodes.extend([*edges, *liars.values()])
    wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == 5, 60, "the edge nodes")
    # no edge node holds MNIST files: the job is refused before anything is signed
    assert refusal_code(lambda: entry.console("StartJob", pb.JobRequest(settings={**JOB, "dataset": "mnist"}))) \
        == grpc.StatusCode.FAILED_PRECONDITION
    entry.console("StartJob", pb.JobRequest(settings={**JOB, "update_norm_bound": "2"}))
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, 120, "the job")
    assert done.state == "done", done.error
    liar_ids = {fault: Identity.load_or_create(p.home).node_id for fault, p in liars.items()}
    [metrics] = done.metrics
    assert metrics.participants == 3
    reasons = {x.node_id: x.reason for x in metrics.excluded}
    assert "claims 1000000000 training samples; its shard of the job holds" in reasons[liar_ids["samples"]]
    assert "away from the global model; the job allows at most 2" in reasons[liar_ids["scale"]]
    job = tx_from_pb(done.job).payload
    assert set(job["samples"]) == set(job["participants"]) and all(n < 1000 for n in job["samples"].values())
    assert tx_from_pb(done.global_model).payload["samples"] == sum(
        n for node, n in job["samples"].items() if node not in liar_ids.values())
    assert entry.console("Verify", pb.VerifyRequest(recompute=True)).recompute.ok
    # a supernode cannot slip a lying MODEL_UPDATE of its edge node into a block either
    lie = Transaction.create(TxKind.MODEL_UPDATE, {"job_id": done.job_id, "round": 1, "hash": "ab" * 32,
                                                   "samples": 10**9, "size": 10},
                             Identity.load_or_create(liars["samples"].home))
    with node_channel(sn, entry) as as_sn:
        assert refusal_code(lambda: rpc_pb.LedgerStub(as_sn).SubmitTransaction(tx_to_pb(lie), timeout=10)) \
            == grpc.StatusCode.PERMISSION_DENIED
    # an edge node downloads the global model, but not another edge node's update
    updates = [t.payload["hash"] for height in range(entry.head().height + 1)
               for t in map(tx_from_pb, entry.console("GetBlock", pb.BlockRequest(height=height)).transactions)
               if t.kind == "MODEL_UPDATE"]
    global_hash = tx_from_pb(done.global_model).payload["hash"]
    codes = []
    for holder in (entry, sn):  # each update is on the supernode that took it
        with node_channel(liars["samples"], holder) as as_liar:
            training = rpc_pb.TrainingStub(as_liar)
            if holder is entry:
                assert b"".join(c.data for c in training.DownloadModel(pb.ModelRequest(model_hash=global_hash),
                                                                       timeout=10))
            codes += [refusal_code(lambda: list(training.DownloadModel(pb.ModelRequest(model_hash=h), timeout=10)))
                      for h in updates]
    assert set(codes) <= {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}
    assert grpc.StatusCode.PERMISSION_DENIED in codes


def test_a_split_learning_edge_node_cannot_bring_back_other_upper_layers_than_its_supernode_trained(tmp_path, nodes):
    entry, sn = start_supernodes(tmp_path, lambda name: None, nodes)
    edges = [NodeProcess(tmp_path, f"en{i}", "EN", entry=entry.address, token_source=entry) for i in range(2)]
    liar = NodeProcess(tmp_path, "scale", "EN", entry=entry.address, token_source=entry, script=FAULTY,
                       env={"FEDLEDGER_TEST_FAULT": "scale"})
    nodes.extend([*edges, liar])
    wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == 3, 60, "the edge nodes")
    done = run_job(entry, {**JOB, "strategy": "split"})
    [metrics] = done.metrics
    assert metrics.participants == 2
    liar_id = Identity.load_or_create(liar.home).node_id
    assert "differ from those this supernode trained" in {x.node_id: x.reason for x in metrics.excluded}[liar_id]
    assert entry.console("Verify", pb.VerifyRequest(recompute=True)).recompute.ok
    # outside a round in progress, no supernode trains upper layers for anyone
    home_id = next(n.supernode for n in entry.status().edge_nodes.nodes if n.node_id == liar_id)
    holder = next(s for s in (entry, sn) if Identity.load_or_create(s.home).node_id == home_id)
    with node_channel(liar, holder) as as_liar:
        opening = pb.SplitMessage(node_id=liar_id, job_id=done.job_id, round=1, attempt="cd" * 32,
                                  model_hash="ab" * 32)
        code = refusal_code(lambda: list(rpc_pb.TrainingStub(as_liar).SplitTrain(iter([opening]), timeout=10)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        someone_else = pb.SplitMessage(node_id=Identity.load_or_create(edges[0].home).node_id, job_id=done.job_id,
                                       round=1, attempt="cd" * 32, model_hash="ab" * 32)
        code = refusal_code(lambda: list(rpc_pb.TrainingStub(as_liar).SplitTrain(iter([someone_else]), timeout=10)))
        assert code == grpc.StatusCode.PERMISSION_DENIED
