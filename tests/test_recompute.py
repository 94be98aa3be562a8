"""``verify(recompute=True)`` names a supernode that published a wrong partial sum, with its round.

End to end: a cheating supernode (tests/faulty_supernode.py) runs as a real node process beside
an honest entry node; two edge nodes register with each. Its AGGREGATE lists every update and
their true sample total. By default the entry node re-sums each partial from the updates it lists
and leaves the cheat out of the round; a job that trusts partials (``recompute_partials=false``)
completes with it, and recomputing the partial from the recorded updates exposes it after the fact.
The audit CLI does the same offline from a ledger database and a models folder.

Each kind of wrong record (an update left out, a weight changed, a global model that does not
follow, an invalid update accepted) is also checked on a chain made here, without processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from base_package import data_pb2 as pb
from config import load_config
from fl.federation import ClientWorker, JobSpec, split_state
from fl.serialize import model_hash, state_to_bytes
from fl.strategy import Update, strategy_for_job
from node.chain.identity import Identity
from node.chain.rules import Transaction, TxKind
from node.dev.launcher import ROOT, wait_until
from node.roles.jobs import job_payload
from node.roles.recompute import recompute_chain
from node.net.wire import tx_from_pb
from conftest import start_network

FAULTY = Path(__file__).resolve().parent / "faulty_supernode.py"
JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "rounds": "2",
       "local_epochs": "1"}


@pytest.mark.parametrize("fault", ["drop"])  # the other faults: on a chain made here, below
def test_a_wrong_partial_is_named_with_its_round_and_supernode(tmp_path, nodes, fault):
    entry, cheat, _ = start_network(tmp_path, lambda name: None, nodes, edge_nodes=4, script=FAULTY,
                                    env={"FEDLEDGER_TEST_FAULT": fault})
    cheat_id = cheat.status().node_id
    assert sum(n.supernode == cheat_id for n in entry.status().edge_nodes.nodes) == 2

    # by default the entry node re-sums every partial from the updates it lists: the cheat is left out
    entry.console("StartJob", pb.JobRequest(settings={**JOB, "rounds": "1"}))
    first = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, 120, "the job")
    assert first.state == "done", first.error
    [metrics] = first.metrics
    assert metrics.participants == 2 and tx_from_pb(first.global_model).payload["metrics"]["updates"] == "2"
    [reason] = [x.reason for x in metrics.excluded if x.node_id == cheat_id]
    assert "is not the sum of the 2 updates it lists" in reason

    # trusting partials (recompute_partials=false), the job completes with the wrong partial in it
    entry.console("StartJob", pb.JobRequest(settings={**JOB, "recompute_partials": "false"}))
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, 120, "the job")
    assert done.state == "done", done.error  # nothing short of recomputing catches it
    wait_until(lambda: entry.status().pending_transactions == 0 and cheat.head() == entry.head(), 20, "sealed")

    plain = entry.console("Verify", pb.VerifyRequest())
    assert plain.ok and not plain.HasField("recompute")  # every signature and link is fine
    report = entry.console("Verify", pb.VerifyRequest(recompute=True), timeout=120).recompute
    assert not report.ok
    assert (report.job_id, report.bad_round, report.bad_node) == (done.job_id, 1, cheat_id), report
    assert "partial sum" in report.reason

    # offline: the audit CLI over the entry node's ledger and both supernodes' models folders
    def audit(*folders: Path) -> subprocess.CompletedProcess:
        models = [arg for folder in folders for arg in ("--models", str(folder / "models"))]
        return subprocess.run([sys.executable, "-m", "node.audit", f"sqlite:///{entry.home / 'ledger.db'}",
                               "--recompute", *models], cwd=ROOT, capture_output=True, text=True, timeout=120)

    both = audit(entry.home, cheat.home)
    assert both.returncode == 1 and f"MISMATCH in {done.job_id} round 1, node {cheat_id}" in both.stdout, both.stdout
    # with the entry node's folder alone, the cheat's updates are not there: it cannot check, and says so
    alone = audit(entry.home)
    assert alone.returncode == 1 and f"CANNOT CHECK {done.job_id} round 1, node {cheat_id}" in alone.stdout, alone.stdout


# --- wrong records on a chain made here --------------------------------------------------------------
ENTRY, SN_A, SN_B = Identity.generate(), Identity.generate(), Identity.generate()
EDGES = [Identity.generate() for _ in range(4)]


def _chain(fault: str = "") -> tuple[list[Transaction], dict[str, bytes]]:
    """Two rounds of a fedper mean job on digits: edge nodes 0-1 under supernode A, 2-3 under B.
    ``fault`` spoils one record of round 2."""
    conf = load_config(env={}, overrides={"dataset": "digits", "client.amount": 4, "gobal_epoch": 2})
    spec = JobSpec.from_config(conf)
    job = Transaction.create(TxKind.JOB, job_payload("job-1", spec, [e.node_id for e in EDGES], conf), ENTRY)
    strategy = strategy_for_job(spec)
    worker = ClientWorker(spec, 10, torch.device("cpu"))
    current = split_state(worker.model.full_state(), worker.shared_keys)
    txs, store = [job], {}
    generator = torch.Generator().manual_seed(0)
    for r in (1, 2):
        txs.append(Transaction.create(TxKind.ROUND, {"job_id": "job-1", "round": r,
                                                     "global_hash": model_hash(state_to_bytes(current))}, ENTRY))
        merged, aggregates = strategy.accumulator(current), []
        for sn, edges in ((SN_A, EDGES[:2]), (SN_B, EDGES[2:])):
            partial, listed, total = strategy.accumulator(current), [], 0
            for i, edge in enumerate(edges):
                state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in current.items()}
                if fault == "invalid" and r == 2 and sn is SN_B and i == 0:
                    state[next(iter(state))][0] = float("nan")
                data = state_to_bytes(state)
                store[model_hash(data)] = data
                samples = 30 + 10 * i
                txs.append(Transaction.create(TxKind.MODEL_UPDATE, {
                    "job_id": "job-1", "round": r, "hash": model_hash(data), "samples": samples, "size": len(data)},
                    edge))
                listed.append(txs[-1].hash)
                spoiled = r == 2 and sn is (SN_A if fault == "drop" else SN_B)
                weight = samples + ((1 if i == 0 else -1) if fault == "weight" and spoiled else 0)
                left_out = spoiled and ((fault == "drop" and i == 1) or (fault == "invalid" and i == 0))
                if not left_out:  # (a NaN update cannot be summed: it is listed, not added)
                    partial.add(Update(state, weight, model_hash(data)), checked=True)
                total += samples
            merged.merge(partial)
            txs.append(Transaction.create(TxKind.AGGREGATE, {
                "job_id": "job-1", "round": r, "samples": total, "updates": sorted(listed),
                "hash": model_hash(state_to_bytes(partial.to_state()))}, sn))
            aggregates.append(txs[-1].hash)
        current = strategy.finalize(current, merged)
        if fault == "global" and r == 2:
            current = {k: v * 1.0001 for k, v in current.items()}
        txs.append(Transaction.create(TxKind.GLOBAL_MODEL, {
            "job_id": "job-1", "round": r, "hash": model_hash(state_to_bytes(current)), "samples": 140,
            "aggregates": sorted(aggregates)}, ENTRY))
    return txs, store


def _recompute(fault: str = "") -> object:
    txs, store = _chain(fault)
    return recompute_chain(txs, lambda h, holder: store.get(h))


def test_an_honest_chain_recomputes():
    report = _recompute()
    assert report.ok and (report.jobs, report.rounds, report.updates) == (1, 2, 8), report


@pytest.mark.parametrize("fault, node, words", [
    ("drop", SN_A, "not the sum of the 2 updates it lists"),
    ("weight", SN_B, "not the sum of the 2 updates it lists"),
    ("global", ENTRY, "GLOBAL_MODEL"),
    ("invalid", SN_B, "which is invalid"),
])
def test_each_wrong_record_is_named_with_its_round_and_node(fault, node, words):
    report = _recompute(fault)
    assert not report.ok and not report.missing and (report.job_id, report.bad_round, report.bad_node) == ("job-1", 2, node.node_id), report
    assert words in report.reason, report.reason


def test_a_missing_update_names_the_supernode_to_ask():
    txs, store = _chain()
    lost = next(t.payload["hash"] for t in txs if t.kind == TxKind.MODEL_UPDATE and t.round == 1)
    report = recompute_chain(txs, lambda h, holder: None if h == lost else store.get(h))
    assert not report.ok and report.missing and report.bad_round == 1 and "cannot be found" in report.reason


def test_a_supernode_cannot_count_an_edge_node_twice_nor_borrow_another_rounds_update():
    txs, store = _chain()
    first_round = [t for t in txs if t.kind == TxKind.MODEL_UPDATE and t.round == 1]
    aggregate = next(t for t in txs if t.kind == TxKind.AGGREGATE and t.round == 2 and t.sender == SN_A.node_id)
    for listed, words in (([aggregate.payload["updates"][0]] * 2, "already counted"),
                          ([first_round[0].hash, aggregate.payload["updates"][1]], "no MODEL_UPDATE of round 2")):
        forged = Transaction.create(TxKind.AGGREGATE, {**aggregate.payload, "updates": listed}, SN_A)
        spoiled = [forged if t is aggregate else t for t in txs]
        spoiled = [Transaction.create(TxKind.GLOBAL_MODEL, {**t.payload, "aggregates": sorted(
            forged.hash if h == aggregate.hash else h for h in t.payload["aggregates"])}, ENTRY)
            if t.kind == TxKind.GLOBAL_MODEL and t.round == 2 else t for t in spoiled]
        report = recompute_chain(spoiled, lambda h, holder: store.get(h))
        assert not report.ok and (report.bad_round, report.bad_node) == (2, SN_A.node_id), report
        assert words in report.reason, report.reason


def test_only_the_aggregates_the_global_model_names_count():
    """A stray AGGREGATE (a supernode left out of the round, a failed attempt) changes nothing."""
    txs, store = _chain()
    stray = Transaction.create(TxKind.AGGREGATE, {"job_id": "job-1", "round": 1, "samples": 1, "updates": []}, SN_B)
    assert recompute_chain([*txs, stray], lambda h, holder: store.get(h)).ok
