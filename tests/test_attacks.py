"""Attacks the issue that built enrolment and mutual TLS met, one by one, that no other test file
covers: each is refused or has no effect, and the network keeps serving."""

from __future__ import annotations

import threading

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.identity import Identity
from node.dev.launcher import NodeProcess, free_port, wait_until
from node.net.channels import channel
from node.net.tls import TLS_DIR, Credentials
from node.net.wire import tx_to_pb
from node.roles.enrolment import enrol
from node.roles.membership import register_transaction, signed_heartbeat


def test_a_supernode_that_heartbeats_from_a_dead_address_does_not_keep_edge_nodes_out(tmp_path, nodes):
    entry = NodeProcess(tmp_path, "entry", "SN", is_entry=True)
    nodes.append(entry)
    entry.wait_ready()
    entry_id = entry.status().node_id
    ghost = Identity.generate()
    while ghost.node_id > entry_id:  # the lower id wins a tie of loads: edge nodes are sent to it first
        ghost = Identity.generate()
    enrol(tmp_path / "ghost", ghost, entry.enrolment_token("SN"), entry.address)  # enrolled, but malicious
    stop = threading.Event()
    with channel(entry.address, Credentials.load(tmp_path / "ghost" / TLS_DIR), entry_id) as as_ghost:
        membership = rpc_pb.MembershipStub(as_ghost)
        membership.Register(pb.RegisterRequest(registration=tx_to_pb(
            register_transaction(ghost, "SN", f"127.0.0.1:{free_port()}"))), timeout=10)  # nobody listens there

        def heartbeat() -> None:
            while not stop.wait(0.3):
                membership.Heartbeat(signed_heartbeat(ghost), timeout=5)

        beating = threading.Thread(target=heartbeat, daemon=True)
        beating.start()
        try:
            wait_until(lambda: any(n.node_id == ghost.node_id and n.alive for n in entry.status().supernodes.nodes),
                       10, "the ghost supernode to count as alive")
            edges = [NodeProcess(tmp_path, f"en{i}", "EN", entry=entry.address, token_source=entry) for i in range(2)]
            nodes.extend(edges)
            joined = wait_until(lambda: [n for n in entry.status().edge_nodes.nodes if n.alive] if sum(
                n.alive for n in entry.status().edge_nodes.nodes) == 2 else None, 30, "the edge nodes to join")
            assert {n.supernode for n in joined} == {entry_id}
            assert any(n.node_id == ghost.node_id and n.alive for n in entry.status().supernodes.nodes)
        finally:
            stop.set()
            beating.join(timeout=5)
    assert entry.console("Verify").ok
