"""Differential privacy over the network: the budget is on the chain round by round, a job whose
next round would exceed it stops with the reason recorded, an auditor recomputes every DP round
(the noise's statistics included), and the console shows and saves the budget."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from base_package import data_pb2 as pb
from conftest import start_network
from fl.privacy import Accounting, epsilon
from node.dev.launcher import ROOT, NodeProcess, stop_all, wait_until
from node.net.wire import tx_from_pb

JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "local_epochs": "1",
       "strategy": "fedavg"}


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    started: list[NodeProcess] = []
    try:
        entry, sn, _ = start_network(tmp_path_factory.mktemp("privacy"), lambda name: None, started, 4)
        yield entry
    finally:
        stop_all(started, timeout=5)


def _finish(entry: NodeProcess, settings: dict[str, str]) -> pb.JobStatus:
    entry.console("StartJob", pb.JobRequest(settings=settings))
    return wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed", "stopped") and s, 180, "the job")


def _records(entry: NodeProcess, job_id: str, kind: str) -> list:
    wait_until(lambda: entry.status().pending_transactions == 0, 20, "the records to be sealed")
    return [tx for h in range(entry.head().height + 1)
            for tx in map(tx_from_pb, entry.console("GetBlock", pb.BlockRequest(height=h)).transactions)
            if tx.kind == kind and tx.payload.get("job_id") == job_id]


def test_a_central_dp_job_records_its_budget_stops_before_exceeding_it_and_recomputes(network, tmp_path):
    spent = [epsilon(Accounting(1.0, 1.0, 1), r, 1e-5) for r in (1, 2, 3)]
    target = (spent[1] + spent[2]) / 2  # two rounds fit, the third would not
    done = _finish(network, {**JOB, "rounds": "5", "aggregation": "fedavgm", "dp": "central", "dp_noise": "1.0",
                             "dp_clip": "0.5", "dp_epsilon": repr(target)})
    assert done.state == "stopped" and "privacy budget is spent: round 3" in done.error, done
    assert done.round == 2
    globals_ = _records(network, done.job_id, "GLOBAL_MODEL")
    assert [g.payload["round"] for g in globals_] == [1, 2]
    for g, eps in zip(globals_, spent):
        privacy = g.payload["privacy"]
        assert float(privacy["epsilon"]) == pytest.approx(eps, rel=1e-5)
        assert privacy["mechanism"] == "central" and privacy["updates"] == "4"
        assert float(privacy["noise_stddev"]) == pytest.approx(1.0 * 0.5 / 4)
        assert set(g.payload["models"]) == {"noised"}  # kept for auditors, named by hash
    stops = [t for t in _records(network, done.job_id, "ROUND_FAILED") if t.payload["attempt"] == 0]
    assert len(stops) == 1 and stops[0].payload["round"] == 3
    verified = network.console("Verify", pb.VerifyRequest(recompute=True), timeout=120)
    assert verified.ok and verified.recompute.ok and verified.recompute.rounds >= 2, verified

    report = network.console("Privacy")
    mine = next(j for j in report.jobs if j.job_id == done.job_id)
    assert [r.round for r in mine.rounds] == [1, 2] and "round 3" in mine.stopped
    out = tmp_path / "saved"
    shown = subprocess.run([sys.executable, str(ROOT / "Console.py"), "--port", str(network.port), "--tls",
                            str(network.console_dir), "--token", network.token, "-c", f"privacy(); save('{out}')"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                                       "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert done.job_id in shown.stdout and "stopped" in shown.stdout and "privacy.json" in shown.stdout
    saved = json.loads((out / "privacy.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2] and saved["rounds"][1]["epsilon"] == mine.rounds[1].record["epsilon"]


def test_a_local_dp_job_completes_and_its_rounds_recompute_exactly(network):
    done = _finish(network, {**JOB, "rounds": "2", "aggregation": "mean", "dp": "local", "dp_noise": "0.05",
                             "dp_clip": "2.0"})
    assert done.state == "done", done.error
    globals_ = _records(network, done.job_id, "GLOBAL_MODEL")
    assert [g.payload["privacy"]["mechanism"] for g in globals_] == ["local", "local"]
    assert "models" not in globals_[0].payload  # the edge nodes added the noise: nothing secret at the entry node
    verified = network.console("Verify", pb.VerifyRequest(recompute=True), timeout=120)
    assert verified.ok and verified.recompute.ok, verified


def test_adaptive_clipping_over_the_network_signs_each_rounds_clip_norm_and_recomputes(network):
    done = _finish(network, {**JOB, "rounds": "3", "aggregation": "fedavgm", "dp": "central", "dp_noise": "0.5",
                             "dp_clip": "0.05", "dp_clipping": "adaptive"})
    assert done.state == "done", done.error
    orders = {t.payload["round"]: t for t in _records(network, done.job_id, "ROUND")}
    globals_ = {g.payload["round"]: g for g in _records(network, done.job_id, "GLOBAL_MODEL")}
    assert orders[1].payload["validate"] == {"dp_clip": repr(0.05)}
    for r in (1, 2):  # each round's clip norm is the one the round before recorded as next, in its signed order
        assert orders[r + 1].payload["validate"]["dp_clip"] == globals_[r].payload["privacy"]["next_clip_norm"]
    verified = network.console("Verify", pb.VerifyRequest(recompute=True), timeout=120)
    assert verified.ok and verified.recompute.ok, verified
