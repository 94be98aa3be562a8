"""Forked edge node processes (``main.py --nt EN --count K --fork``): K whole edge nodes, each its
own process, port, key, enrolment and head, forked from one process that loaded torch, which only
supervises them. The network's global model is the simulation's, bit for bit; stops pass from the
parent to every child, and a child outlives neither its parent nor its own crash's neighbours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.dev.launcher import ROOT, NodeProcess, child_pids, start_edge_host, start_supernodes, stop_all, wait_until
from tests.conftest import run_job_as_simulation

COUNT = 4
JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "rounds": "2"}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # (a zombie: ended)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    started: list[NodeProcess] = []
    try:
        entry, sn = start_supernodes(tmp_path_factory.mktemp("forked"), started)
        yield entry, sn, start_edge_host(entry.home.parent, entry, started, COUNT, fork=True)
    finally:
        stop_all(started, timeout=10)


def test_k_forked_edge_nodes_are_k_processes_that_train_as_the_simulation(network):
    entry, _, host = network
    edges = entry.status().edge_nodes.nodes
    ports = sorted(int(e.address.rsplit(":", 1)[1]) for e in edges)
    assert ports == list(range(host.port, host.port + COUNT))  # one server per edge node, on consecutive ports
    assert len({e.node_id for e in edges}) == COUNT and len({e.supernode for e in edges}) == 2
    assert len(child_pids(host.proc.pid)) == COUNT  # each a process of its own, forked from the one started
    done = run_job_as_simulation(entry, JOB, COUNT)
    for index in range(COUNT):  # each its own key, certificate and head on disk
        home = host.home / f"node-{index:04d}"
        assert (home / "node.key").exists() and (home / "tls" / "node.crt").exists()
        assert (home / "jobs" / done.job_id / "personal.safetensors").exists()
    log = host.log.read_text()
    assert "torch threads 1 each" in log and f"node-{COUNT - 1:04d} fedledger: node " in log  # (lines say which)


def test_a_crashed_edge_node_process_takes_no_other_with_it(network):
    entry, _, host = network
    victim, *others = child_pids(host.proc.pid)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: f"(pid {victim}) ended with exit code -9; {COUNT - 1} still running" in host.log.read_text(),
               10, "the parent to notice")
    assert host.proc.poll() is None and sorted(child_pids(host.proc.pid)) == sorted(others)
    wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == COUNT - 1, 30, "one node dead")


@pytest.fixture
def forked_pair(network, tmp_path):
    """Two more forked edge node processes, joined to the module's network (stopped at the end)."""
    started: list[NodeProcess] = []
    try:
        yield start_edge_host(tmp_path, network[0], started, 2, fork=True)
    finally:
        stop_all(started, timeout=10)


def test_sigterm_to_the_parent_stops_every_child_cleanly(forked_pair):
    assert forked_pair.stop(timeout=15) == 0
    log = forked_pair.log.read_text()
    assert log.count("fedledger: stopped cleanly") == 2 and "killing" not in log


def test_children_end_when_their_parent_is_killed(forked_pair):
    kids = child_pids(forked_pair.proc.pid)
    forked_pair.kill()  # SIGKILL: no chance to pass anything on; the kernel sends each child SIGTERM
    wait_until(lambda: all(gone(pid) for pid in kids), 15, "the children to stop")


@pytest.mark.parametrize("argv, said", [
    (["--nt", "EN", "--fork"], "--fork runs the K edge nodes of --count K"),
    (["--nt", "SN", "--count", "2", "--fork"], "--fork runs the K edge nodes of --count K"),
    (["--nt", "EN", "--count", "3", "--fork", "--port", "65534"], "all below 65536"),
    (["--nt", "EN", "--count", "3", "--fork", "--advertise", "10.0.0.1:65534"], "all below 65536"),
    (["--nt", "EN", "--count", "2", "--fork", "--device", "cuda"], "CUDA does not survive a fork"),
])
def test_fork_refuses_what_it_cannot_run(tmp_path, argv, said):
    args = ["--port", "7000", "--entry", "127.0.0.1:1", "--home", str(tmp_path), *argv]
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and said in result.stderr
    assert "Traceback" not in result.stderr
