"""Virtual edge nodes (``main.py --nt EN --count K``): K edge nodes in one process, each with its
own key, enrolment, certificate, data shard, head on disk and records on the chain, behind one
server that routes a supernode's call to the edge node it names, and whose TLS handshake proves
that node's certificate. The network's global model is the simulation's, bit for bit."""

from __future__ import annotations

import grpc
import pytest

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from config import load_config
from node.dev.launcher import NodeProcess, start_edge_host, start_supernodes, stop_all, wait_until
from node.net.channels import addressed_to, channel
from node.net.tls import Credentials
from tests.conftest import refusal_code, run_job, run_job_as_simulation

COUNT = 6
JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "rounds": "2"}


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    started: list[NodeProcess] = []
    try:
        entry, sn = start_supernodes(tmp_path_factory.mktemp("virtual"), started)
        yield entry, sn, start_edge_host(entry.home.parent, entry, started, COUNT)
    finally:
        stop_all(started, timeout=5)


def test_k_edge_nodes_in_one_process_train_as_k_processes_would(network):
    entry, sn, host = network
    edges = entry.status().edge_nodes.nodes
    assert {e.address for e in edges} == {host.address}  # one server …
    assert len({e.node_id for e in edges}) == COUNT and len({e.supernode for e in edges}) == 2  # … K nodes, spread
    done = run_job_as_simulation(entry, JOB, COUNT)
    assert f"all {COUNT} edge nodes joined in" in host.log.read_text()  # (progress while joining)
    homes = sorted(p for p in host.home.iterdir() if p.name.startswith("node-"))
    assert len(homes) == COUNT
    for home in homes:  # each its own key, certificate and head on disk
        assert (home / "node.key").exists() and (home / "tls" / "node.crt").exists()
        assert (home / "jobs" / done.job_id / "personal.safetensors").exists()


def test_the_chain_holds_each_virtual_node_as_a_node(network):
    entry, _, host = network
    from sql.store import LedgerStore

    store = LedgerStore(f"sqlite:///{entry.home / 'ledger.db'}", create=False)
    try:
        wait_until(lambda: entry.status().pending_transactions == 0, 30, "sealed")
        enrolled = {tx.payload["node"] for _, tx in store.transactions(kind="ENROLL")}
        registered = {tx.sender: tx.payload["address"] for _, tx in store.transactions(kind="REGISTER")
                      if tx.payload["role"] == "EN"}
        assert len(registered) == COUNT and set(registered) <= enrolled
        assert set(registered.values()) == {host.address}
        senders = {tx.sender for _, tx in store.transactions(kind="MODEL_UPDATE")}
        assert senders == set(registered)
    finally:
        store.close()


def test_the_server_routes_by_the_named_node_and_proves_its_certificate(network):
    entry, sn, host = network
    edges = {e.node_id: e for e in entry.status().edge_nodes.nodes}
    mine = next(n for n, e in edges.items() if e.supernode != entry.status().node_id)  # the second supernode's
    theirs = next(n for n, e in edges.items() if e.supernode == entry.status().node_id)
    creds = Credentials.load(sn.home / "tls")  # calling as the second supernode
    with channel(host.address, creds, node_id=mine) as ch:
        stub = rpc_pb.TrainingStub(ch)
        assert refusal_code(lambda: stub.TrainRound(pb.RoundRequest(), timeout=10)) == \
            grpc.StatusCode.INVALID_ARGUMENT  # which of the K?
        assert refusal_code(lambda: stub.TrainRound(pb.RoundRequest(), timeout=10, metadata=addressed_to("0" * 32))) \
            == grpc.StatusCode.NOT_FOUND
        assert refusal_code(lambda: stub.TrainRound(pb.RoundRequest(), timeout=10, metadata=addressed_to(theirs))) \
            == grpc.StatusCode.PERMISSION_DENIED  # not this supernode's edge node
    with channel(host.address, creds, node_id="f" * 32) as ch:  # a node this server does not hold: no handshake
        assert refusal_code(lambda: rpc_pb.TrainingStub(ch).TrainRound(pb.RoundRequest(), timeout=5)) == \
            grpc.StatusCode.UNAVAILABLE


def test_one_nodes_deliveries_cannot_evict_anothers_model(tmp_path):
    """The edge nodes of one process share a model cache (by hash); each keeps its own latest
    delivery, so a supernode flooding its own edge node with models cannot make another edge node
    of the process lose the round's model."""
    from node.chain.identity import Identity
    from node.net.model_store import ModelCache
    from node.net.streams import ReceivedModel, make_header
    from node.roles.edgenode import EdgeNode
    from node.roles.settings import NodeSettings

    settings = NodeSettings.from_config(load_config(env={}))
    shared = ModelCache(3000)  # room for about one model of 2,000 bytes
    sender = Identity.load_or_create(tmp_path / "sn")
    x, y = (EdgeNode(Identity.load_or_create(tmp_path / name), "127.0.0.1:1", "127.0.0.1:2", settings, models=shared)
            for name in ("x", "y"))

    def model(fill: int) -> ReceivedModel:
        data = bytes([fill]) * 2000
        return ReceivedModel.of(make_header(sender, data, "job", 1, 1), data)

    round_model = model(0)
    x.keep_model(round_model)
    for fill in range(1, 6):
        y.keep_model(model(fill))
    assert shared.get(round_model.header.model_hash) is None  # gone from the shared cache …
    assert x.model(round_model.header.model_hash) is round_model  # … not from the node it was sent to
    assert y.model(round_model.header.model_hash) is None


def test_a_thousand_virtual_edge_nodes_join_and_train_a_digits_job(tmp_path):
    """The issue's scale: 1,000 edge nodes in one process join two supernodes and train a round
    of digits (iid: one or two samples each); the round is sealed whole in one block and the
    chain verifies. (Timings are bench/scale.py's, not asserted here.)"""
    from node.chain.audit import verify_chain
    from sql.store import LedgerStore

    count, slow = 1000, {"FL_HEARTBEAT_INTERVAL": "5", "FL_DEAD_AFTER": "30", "FL_BLOCK_INTERVAL": "0.2"}
    started: list[NodeProcess] = []
    try:
        entry, _ = start_supernodes(tmp_path, started, env=slow)
        start_edge_host(tmp_path, entry, started, count, env=slow, timeout=180)
        done = run_job(entry, {"dataset": "digits", "partition": "iid", "rounds": "1", "batch_size": "16"}, timeout=300)
        assert done.metrics[0].participants == count and not done.metrics[0].excluded
        wait_until(lambda: entry.status().pending_transactions == 0, 60, "the round sealed")
    finally:
        stop_all(started, timeout=30)
    store = LedgerStore(f"sqlite:///{entry.home / 'ledger.db'}", create=False)
    try:
        heights = {height for height, _ in store.transactions(kind="MODEL_UPDATE")}
        assert len(heights) == 1 and len(store.block(heights.pop()).transactions) > count  # the round, whole
        assert verify_chain(store).ok
    finally:
        store.close()
