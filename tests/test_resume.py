"""Jobs survive their entry node: killed (-9) mid-job and restarted with the same home, it takes
the job up where the chain's last GLOBAL_MODEL left it, the edge nodes reattach, the round that was
under way is run again (its edge nodes retrain it from the head it started from), and the job
completes with one GLOBAL_MODEL per round. SQLite and MariaDB ledgers. Edge nodes that die are
recorded as absent, with the reason, in every round they miss; a round that fails (none left) is
recorded (ROUND_FAILED) and tried again; edge nodes that come back train again; a killed supernode's
edge nodes are excluded with the reason until they re-home, then train; a database outage stalls
the job, which then completes."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from base_package import data_pb2 as pb
from conftest import start_network
from node.chain.identity import Identity
from node.dev.launcher import NodeProcess, wait_until
from node.dev.mariadb import PrivateMariaDB, mariadb_available
from node.net.wire import tx_from_pb

JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "rounds": "8",
       "local_epochs": "1", "aggregation": "fedavgm", "strategy": "fedavg"}


def _globals(entry: NodeProcess, job_id: str) -> Counter:
    rounds: Counter = Counter()
    for height in range(entry.head().height + 1):
        for tx in map(tx_from_pb, entry.console("GetBlock", pb.BlockRequest(height=height)).transactions):
            if tx.kind == "GLOBAL_MODEL" and tx.payload["job_id"] == job_id:
                rounds[tx.payload["round"]] += 1
    return rounds


def test_the_entry_node_killed_mid_job_resumes_it_after_a_restart(tmp_path, db_for, nodes):
    entry, sn, edges = start_network(tmp_path, db_for, nodes, edge_nodes=4)
    started = entry.console("StartJob", pb.JobRequest(settings=JOB))
    wait_until(lambda: entry.console("GetJob").round >= 3, 120, "round 3")
    entry.kill()
    nodes.remove(entry)
    again = NodeProcess(tmp_path, "entry", "SN", is_entry=True, port=entry.port, db=db_for("entry"))
    nodes.append(again)
    again.wait_ready()
    status = again.console("GetJob")
    assert status.job_id == started.job_id and status.state in ("running", "done") and status.round >= 3, status
    done = wait_until(lambda: (s := again.console("GetJob")).state in ("done", "failed") and s, 180, "the job")
    assert done.state == "done", done.error
    wait_until(lambda: again.status().pending_transactions == 0, 20, "the last records to be sealed")
    assert _globals(again, started.job_id) == Counter({r: 1 for r in range(1, 9)})
    assert sum(n.alive for n in again.status().edge_nodes.nodes) == 4
    curves = again.console("GetJob").metrics  # rebuilt after the restart: every round, evaluated
    assert [m.round for m in curves] == list(range(1, 9)), [m.round for m in curves]
    assert all(0 < m.acc_weighted <= 1 and m.participants == 4 for m in curves), curves
    assert _round_records_complete(_records(again, started.job_id))
    verified = again.console("Verify", pb.VerifyRequest(recompute=True), timeout=120)
    assert verified.ok and verified.recompute.ok, verified


def _round_records_complete(records: list) -> bool:
    """Every MODEL_UPDATE of the job is listed by an AGGREGATE, and every AGGREGATE by a
    GLOBAL_MODEL: no round left half on the chain."""
    combined = {h for t in records if t.kind == "GLOBAL_MODEL" for h in t.payload["aggregates"]}
    aggregates = [t for t in records if t.kind == "AGGREGATE"]
    listed = {h for t in aggregates for h in t.payload["updates"]}
    assert {t.hash for t in aggregates} == combined, "an AGGREGATE without its GLOBAL_MODEL"
    assert {t.hash for t in records if t.kind == "MODEL_UPDATE"} == listed, "a MODEL_UPDATE without its AGGREGATE"
    return True


def _records(entry: NodeProcess, job_id: str) -> list:
    return [tx for height in range(entry.head().height + 1)
            for tx in map(tx_from_pb, entry.console("GetBlock", pb.BlockRequest(height=height)).transactions)
            if tx.payload.get("job_id") == job_id]


def test_absent_edge_nodes_are_recorded_every_round_and_a_failed_round_is_retried(tmp_path, nodes):
    entry, sn, edges = start_network(tmp_path, lambda name: None, nodes, edge_nodes=4)
    ids = [Identity.load_or_create(e.home).node_id for e in edges]
    started = entry.console("StartJob", pb.JobRequest(settings={**JOB, "rounds": "30", "aggregation": "mean",
                                                                "round_attempts": "8"}))
    killed_at = wait_until(lambda: (r := entry.console("GetJob").round) >= 2 and r, 120, "round 2")
    for edge in edges[:2]:  # two edge nodes die: the others go on
        edge.kill()
    wait_until(lambda: entry.console("GetJob").round >= killed_at + 3, 120, "rounds without them")
    for edge in edges[2:]:  # then all of them: a round fails, and is tried again
        edge.kill()
    wait_until(lambda: any(t.kind == "ROUND_FAILED" for t in _records(entry, started.job_id)), 60, "a failed attempt")
    for edge in edges:
        nodes.remove(edge)
    back = [NodeProcess(tmp_path, edge.name, "EN", entry=entry.address, port=edge.port) for edge in edges]
    nodes.extend(back)
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, 240, "the job")
    assert done.state == "done", done.error
    wait_until(lambda: entry.status().pending_transactions == 0, 20, "the last records to be sealed")
    records = _records(entry, started.job_id)
    failed = [t for t in records if t.kind == "ROUND_FAILED"]
    assert failed and all("no edge node returned a usable update" in t.payload["reason"] for t in failed)
    assert _round_records_complete(records)  # a failed attempt leaves its order and ROUND_FAILED only
    assert _globals(entry, started.job_id) == Counter({r: 1 for r in range(1, 31)})
    for node_id in ids:  # every round: an update, or an exclusion with its reason
        trained = {t.payload["round"] for t in records if t.kind == "MODEL_UPDATE" and t.sender == node_id}
        absent = {t.payload["round"] for t in records if t.kind == "EXCLUDED" and t.payload["node"] == node_id}
        assert trained | absent >= set(range(1, 31)), (node_id, sorted(set(range(1, 31)) - trained - absent))
        assert 30 in trained  # back, and training again
    reasons = {t.payload["reason"].split(":")[0] for t in records if t.kind == "EXCLUDED" and t.payload["node"] in ids[:2]}
    assert reasons & {"dead", "UNAVAILABLE", "missed the round deadline"}, reasons


@pytest.mark.skipif(not mariadb_available() and os.environ.get("CI") != "true",
                    reason="MariaDB's server is not installed here")
def test_a_database_outage_of_20_s_stalls_the_job_which_then_completes(tmp_path, nodes):
    database = PrivateMariaDB(tmp_path / "mariadb")
    try:
        entry = NodeProcess(tmp_path, "entry", "SN", is_entry=True, db=f"{database.url}/fedledger_entry")
        nodes.append(entry)
        entry.wait_ready()
        sn = NodeProcess(tmp_path, "sn1", "SN", entry=entry.address, token_source=entry)
        edges = [NodeProcess(tmp_path, f"en{i}", "EN", entry=entry.address, token_source=entry) for i in range(4)]
        nodes.extend([sn, *edges])
        wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == 4, 60, "the edge nodes")
        started = entry.console("StartJob", pb.JobRequest(settings={**JOB, "rounds": "10", "aggregation": "mean"}))
        wait_until(lambda: entry.console("GetJob").round >= 2, 120, "round 2")
        database.kill()
        time.sleep(20)
        status = entry.console("GetJob")
        assert status.state == "running", status  # stalled, not failed
        database.start()
        done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed", "paused") and s, 240,
                          "the job")
        assert done.state == "done", done.error
        wait_until(lambda: entry.status().pending_transactions == 0 and sn.head() == entry.head(), 30, "sealed")
        assert _globals(entry, started.job_id) == Counter({r: 1 for r in range(1, 11)})
        assert _round_records_complete(_records(entry, started.job_id))
        verified = entry.console("Verify", pb.VerifyRequest(recompute=True), timeout=120)
        assert verified.ok and verified.recompute.ok, verified
    finally:
        if database.process is not None and database.process.poll() is None:
            database.kill()


def test_a_killed_supernodes_edge_nodes_are_excluded_with_a_reason_until_they_rehome(tmp_path, nodes):
    entry, sn, edges = start_network(tmp_path, lambda name: None, nodes, edge_nodes=4)
    rounds = 150  # ~0.1 s each: long enough for the orphans to re-home (a few heartbeats) and train again
    sn_id = sn.status().node_id
    orphans = [n.node_id for n in entry.status().edge_nodes.nodes if n.supernode == sn_id]
    started = entry.console("StartJob", pb.JobRequest(settings={**JOB, "rounds": str(rounds), "aggregation": "mean"}))
    wait_until(lambda: entry.console("GetJob").round >= 2, 120, "round 2")
    sn.kill()
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, 240, "the job")
    assert done.state == "done", done.error
    wait_until(lambda: entry.status().pending_transactions == 0, 20, "the last records to be sealed")
    records = _records(entry, started.job_id)
    assert _globals(entry, started.job_id) == Counter({r: 1 for r in range(1, rounds + 1)})
    assert _round_records_complete(records)
    for node_id in orphans:
        trained = {t.payload["round"] for t in records if t.kind == "MODEL_UPDATE" and t.sender == node_id}
        absent = {t.payload["round"]: t.payload["reason"] for t in records
                  if t.kind == "EXCLUDED" and t.payload["node"] == node_id}
        assert trained | set(absent) >= set(range(1, rounds + 1)), sorted(set(range(1, rounds + 1)) - trained - set(absent))
        assert rounds in trained  # re-homed to the entry node, and training again
        assert any(sn_id in reason or "dead" in reason for reason in absent.values()), absent
