"""``verify(recompute=True)`` names a supernode that published a wrong partial sum, with its round.

The cheating supernode (tests/faulty_supernode.py) runs as a real node process beside an honest
entry node; two edge nodes register with each. Its AGGREGATE lists every update and their true
sample total, so the entry node accepts the partial and the job completes; recomputing the
partial from the recorded updates, on the other supernode, is what exposes it. The audit CLI
does the same offline from a ledger database and a models folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from base_package import data_pb2 as pb
from node.dev.launcher import ROOT, NodeProcess, wait_until

FAULTY = Path(__file__).resolve().parent / "faulty_supernode.py"
JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "rounds": "2",
       "local_epochs": "1"}


@pytest.mark.parametrize("fault", ["drop", "weight"])
def test_a_wrong_partial_is_named_with_its_round_and_supernode(tmp_path, nodes, fault):
    entry = NodeProcess(tmp_path, "entry", "SN", is_entry=True)
    nodes.append(entry)
    entry.wait_ready()
    cheat = NodeProcess(tmp_path, "cheat", "SN", entry=entry.address, token_source=entry, script=FAULTY,
                        env={"FEDLEDGER_TEST_FAULT": fault})
    nodes.append(cheat)
    cheat.wait_ready()
    wait_until(lambda: sum(n.alive for n in entry.status().supernodes.nodes) == 2, 30, "the second supernode")
    nodes.extend(NodeProcess(tmp_path, f"en{i}", "EN", entry=entry.address) for i in range(4))
    wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == 4, 60, "edge nodes")
    cheat_id = cheat.status().node_id
    assert sum(n.supernode == cheat_id for n in entry.status().edge_nodes.nodes) == 2

    entry.console("StartJob", pb.JobRequest(settings=JOB))
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, 120, "the job")
    assert done.state == "done", done.error  # nothing short of recomputing catches it
    wait_until(lambda: entry.status().pending_transactions == 0 and cheat.head() == entry.head(), 20, "sealed")

    plain = entry.console("Verify", pb.VerifyRequest())
    assert plain.ok and not plain.HasField("recompute")  # every signature and link is fine
    report = entry.console("Verify", pb.VerifyRequest(recompute=True), timeout=120).recompute
    assert not report.ok
    assert (report.job_id, report.bad_round, report.bad_node) == (done.job_id, 1, cheat_id), report
    assert "partial sum" in report.reason

    # offline: the audit CLI over the entry node's ledger and models folder; the cheat's updates
    # are not in that folder, so it says which update it cannot find, naming the supernode
    audit = subprocess.run([sys.executable, "-m", "node.audit", f"sqlite:///{entry.home / 'ledger.db'}",
                            "--recompute", "--models", str(entry.home / "models")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert audit.returncode == 1, audit.stdout + audit.stderr
    assert f"round 1, node {cheat_id}" in audit.stdout, audit.stdout
