"""Federated training over real node processes: entry SN + SN + 4 ENs, FedPer on digits.

One scenario per ledger backend (SQLite; MariaDB when reachable, required with CI=true): the
console needs the admin token and edge nodes refuse it; three FedPer rounds raise accuracy;
both supernodes hold identical chains with one GLOBAL_MODEL per round; only base layers ever
crossed the wire; pause() then resume() goes on at the next round; an edge node killed
mid-round is left out (recorded on the chain) and the round completes without it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from base_package import data_pb2 as pb
from node.dev.launcher import ROOT, NodeProcess, wait_until
from node.net.wire import block_from_pb
from conftest import download_update, start_network

JOB = "dataset='digits', partition='pathological', batch_size=16, lr=0.05"
BASE_KEYS = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}  # the digits MLP without its head, fc


def console(node: NodeProcess, script: str, token: str | None) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "Console.py"), "--port", str(node.port), "--tls", str(node.console_dir),
            "-c", script]
    if token:
        args += ["--token", token]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(node.home.parent), "COLUMNS": "200"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def chain_of(node: NodeProcess) -> list:
    head = node.head().height
    return [block_from_pb(node.console("GetBlock", pb.BlockRequest(height=h))) for h in range(head + 1)]


def job_txs(blocks: list, kind: str, job_id: str) -> list:
    return [t for b in blocks for t in b.transactions if t.kind == kind and t.payload.get("job_id") == job_id]


@pytest.fixture
def network(tmp_path, db_for, nodes):
    return start_network(tmp_path, db_for, nodes, edge_nodes=4)


def test_fedper_over_the_network(network):
    entry, sn, edges = network

    # --- the console needs the credential; edge nodes refuse it -------------------------------------
    refused = console(entry, "status()", token=None)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stdout
    at_edge = console(edges[0], "status()", token=entry.token)
    assert at_edge.returncode == 1 and "PERMISSION_DENIED" in at_edge.stdout

    # --- three FedPer rounds through the console's scripting mode -----------------------------------
    run = console(entry, f"trainFL({JOB}, rounds=3); eval(); getEN()", token=entry.token)
    assert run.returncode == 0, run.stdout + run.stderr
    status = entry.console("GetJob")
    accuracy = [m.acc_weighted for m in status.metrics]
    assert status.state == "done" and [m.round for m in status.metrics] == [1, 2, 3]
    assert accuracy[-1] > accuracy[0] and accuracy[-1] > 0.8, accuracy
    assert all(m.participants == 4 and not m.excluded for m in status.metrics)

    # --- identical chains, one GLOBAL_MODEL per round --------------------------------------------
    wait_until(lambda: entry.status().pending_transactions == 0 and entry.head() == sn.head(), 20, "equal heads")
    blocks = chain_of(entry)
    assert blocks == chain_of(sn)
    globals_ = job_txs(blocks, "GLOBAL_MODEL", status.job_id)
    assert sorted(t.payload["round"] for t in globals_) == [1, 2, 3]
    assert globals_[-1].payload["hash"] == status.metrics[-1].global_hash
    updates = job_txs(blocks, "MODEL_UPDATE", status.job_id)
    assert len(updates) == 12 and len(job_txs(blocks, "AGGREGATE", status.job_id)) == 6

    # --- only base layers crossed the wire: every update the supernodes received ------------------
    for tx in updates:
        model = download_update([entry, sn], tx.payload["hash"])
        assert set(model.layout()) == BASE_KEYS
        assert model.header.sender == tx.sender

    # --- pause() then resume() goes on at the next round; a killed edge node is left out -----------
    slow = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05",
            "rounds": "4", "local_epochs": "150"}
    job = entry.console("StartJob", pb.JobRequest(settings=slow)).job_id
    wait_until(lambda: entry.console("GetJob").round >= 1, 120, "round 1")
    assert entry.console("Pause").state in ("pausing", "paused")
    paused = wait_until(lambda: (s := entry.console("GetJob")).state == "paused" and s, 120, "the pause")
    time.sleep(1.0)
    assert entry.console("GetJob").round == paused.round  # nothing runs while paused
    assert entry.console("Resume").state == "running"  # the next round starts: the victim is asked at once
    victim = edges[3]
    victim_id = next(n.node_id for n in entry.status().edge_nodes.nodes if n.address == victim.address)
    victim.kill()
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, 300, "the job")
    assert done.state == "done", done.error
    assert [m.round for m in done.metrics] == [1, 2, 3, 4]
    left_out = [x for m in done.metrics[paused.round:] for x in m.excluded if x.node_id == victim_id]
    assert left_out, [list(m.excluded) for m in done.metrics]
    assert done.metrics[-1].participants == 3
    wait_until(lambda: entry.status().pending_transactions == 0 and entry.head() == sn.head(), 20, "equal heads")
    blocks = chain_of(entry)
    assert any(t.payload["node"] == victim_id for t in job_txs(blocks, "EXCLUDED", job))
    assert entry.console("Verify", pb.VerifyRequest()).ok and sn.console("Verify", pb.VerifyRequest()).ok
