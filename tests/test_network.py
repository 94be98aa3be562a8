"""The node network as real processes on loopback: entry SN, a second SN, four ENs.

One scenario per ledger backend (SQLite, and MariaDB when reachable; required with CI=true):
edge nodes spread over both supernodes, both supernodes hold the same chain, bad requests are
refused with the right status while everything keeps working, a killed supernode's edge nodes
re-home, a late supernode catches up, and SIGTERM stops every node with exit status 0.
"""

from __future__ import annotations

from dataclasses import replace

import grpc
import torch
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from fl.serialize import state_to_bytes
from conftest import node_channel, refusal_code as _code, start_supernodes
from node.dev.launcher import NodeProcess, wait_until
from node.chain.rules import Block, Transaction, TxKind
from node.chain.identity import Identity
from node.roles.membership import register_transaction, signed_heartbeat
from node.net.streams import chunks, make_header
from node.net.wire import block_from_pb, block_to_pb, tx_to_pb


def _same_head(*sns: NodeProcess) -> pb.Head | None:
    heads = [sn.head() for sn in sns]
    return heads[0] if all(h.height == heads[0].height and h.hash == heads[0].hash for h in heads) else None


def test_network_scenario(tmp_path, db_for, nodes):
    entry, sn = start_supernodes(tmp_path, db_for, nodes)
    wait_until(lambda: len([n for n in entry.status().supernodes.nodes if n.alive]) == 2, 20, "SN registration")
    ens = [NodeProcess(tmp_path, f"en{i}", "EN", entry=entry.address, token_source=entry) for i in range(4)]
    nodes.extend(ens)

    # --- edge nodes spread over both supernodes -------------------------------------------------
    def placed() -> dict[str, list[str]]:
        edges = [n for n in entry.status().edge_nodes.nodes if n.alive]
        if len(edges) < 4:
            return {}
        by_sn: dict[str, list[str]] = {}
        for n in edges:
            by_sn.setdefault(n.supernode, []).append(n.node_id)
        return by_sn

    by_sn = wait_until(placed, 60, "4 edge nodes to register")
    reflection = ProtoReflectionDescriptorDatabase(entry.channel)
    assert {"fedledger.Membership", "fedledger.Ledger", "fedledger.Training", "fedledger.Console",
            "grpc.health.v1.Health"} <= set(reflection.get_services())
    entry_id, sn_id = entry.status().node_id, sn.status().node_id
    assert sorted(len(v) for v in by_sn.values()) == [2, 2] and set(by_sn) == {entry_id, sn_id}

    # --- both supernodes hold the same chain, with every registration on it ------------------------
    wait_until(lambda: entry.status().pending_transactions == 0 and _same_head(entry, sn), 20, "equal heads")
    registrations = []
    for height in range(entry.head().height + 1):
        block = entry.console("GetBlock", pb.BlockRequest(height=height))
        assert block == sn.console("GetBlock", pb.BlockRequest(height=height))
        registrations += [t.sender for t in block.transactions if t.kind == "REGISTER"]
    assert {entry_id, sn_id} | {id_ for ids in by_sn.values() for id_ in ids} <= set(registrations)
    assert entry.status().final_height == entry.head().height

    # --- bad input is refused with a status; nothing is stored ------------------------------------
    # each call is made with the certificate of the node it claims to be, so it reaches the check it tests
    head_before = entry.head()
    en_identity = Identity.load_or_create(ens[0].home)
    target = entry if en_identity.node_id in by_sn[entry_id] else sn  # en0's supernode
    as_edge, as_sn, as_entry = node_channel(ens[0], target), node_channel(sn, entry), node_channel(entry, sn)
    victim, forger = Identity.generate(), Identity.generate()
    forged = replace(register_transaction(en_identity, "EN", ens[0].address, supernode=target.status().node_id),
                     signature=forger.sign(b"x" * 32))
    assert _code(lambda: rpc_pb.MembershipStub(as_edge).Register(pb.RegisterRequest(registration=tx_to_pb(forged)))) \
        == grpc.StatusCode.UNAUTHENTICATED
    ledger = rpc_pb.LedgerStub(as_sn)  # supernodes forward transactions to the entry node
    malformed = pb.Transaction(kind="MODEL_UPDATE", sender=victim.node_id, payload=b"{not json", timestamp=1)
    assert _code(lambda: ledger.SubmitTransaction(malformed)) == grpc.StatusCode.INVALID_ARGUMENT
    floats = pb.Transaction(kind="SCORE", sender=victim.node_id, payload=b'{"score":0.5}', timestamp=1)
    assert _code(lambda: ledger.SubmitTransaction(floats)) == grpc.StatusCode.INVALID_ARGUMENT
    stranger = Transaction.create(TxKind.SCORE, {"job_id": "j", "round": 1, "node": victim.node_id, "score": "1"}, victim)
    assert _code(lambda: ledger.SubmitTransaction(tx_to_pb(stranger))) == grpc.StatusCode.PERMISSION_DENIED
    oversized = pb.Transaction(kind="SCORE", sender=victim.node_id, payload=b"0" * (9 << 20))
    assert _code(lambda: ledger.SubmitTransaction(oversized)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad_beat = signed_heartbeat(en_identity)
    bad_beat.signature = forger.sign(b"beat")
    assert _code(lambda: rpc_pb.MembershipStub(as_edge).Heartbeat(bad_beat)) == grpc.StatusCode.UNAUTHENTICATED
    # wrong node types
    assert _code(lambda: ens[0].stub(rpc_pb.ConsoleStub).Status(pb.Empty())) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: entry.stub(rpc_pb.ConsoleStub).Status(pb.Empty())) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: entry.stub(rpc_pb.ConsoleStub).Status(
        pb.Empty(), metadata=[("authorization", "Bearer wrong")])) == grpc.StatusCode.UNAUTHENTICATED
    sn_identity = Identity.load_or_create(sn.home)
    with node_channel(sn, sn) as to_itself:  # supernodes register with the entry node, not with each other
        assert _code(lambda: rpc_pb.MembershipStub(to_itself).Register(pb.RegisterRequest(
            registration=tx_to_pb(register_transaction(sn_identity, "SN", sn.address))))) == grpc.StatusCode.FAILED_PRECONDITION
    with node_channel(ens[0], sn) as edge_to_sn:
        assert _code(lambda: rpc_pb.MembershipStub(edge_to_sn).FindSupernode(
            pb.FindSupernodeRequest(node_id=en_identity.node_id))) == grpc.StatusCode.FAILED_PRECONDITION
    # a block not made by the entry node, even over the entry node's own connection
    sn_head = sn.head()
    rogue = Block.create(sn_head.height + 1, sn_head.hash, [], forger)
    assert _code(lambda: rpc_pb.LedgerStub(as_entry).PushBlock(block_to_pb(rogue))) == grpc.StatusCode.INVALID_ARGUMENT
    # models: another sender than the caller, an oversized header, an upload outside any round, a
    # download of another node's model (edge nodes may fetch global models and their own updates only)
    model = state_to_bytes({"w": torch.ones(4, 4)})
    training = rpc_pb.TrainingStub(as_edge)
    assert _code(lambda: training.UploadUpdate(chunks(make_header(victim, model), model))) \
        == grpc.StatusCode.PERMISSION_DENIED
    huge = make_header(en_identity, model)
    huge.size = 10 << 30
    assert _code(lambda: training.UploadUpdate(iter([pb.ModelChunk(header=huge)]))) \
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _code(lambda: training.UploadUpdate(chunks(make_header(en_identity, model, "job-x", 1, 10), model))) \
        == grpc.StatusCode.FAILED_PRECONDITION
    assert _code(lambda: list(training.DownloadModel(pb.ModelRequest(model_hash="ab" * 32)))) \
        == grpc.StatusCode.NOT_FOUND
    undecodable = as_edge.unary_unary("/fedledger.Ledger/GetHead")  # raw bytes, no serializer
    assert _code(lambda: undecodable(b"\xff\xff\xff", timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    for ch in (as_edge, as_sn, as_entry):
        ch.close()
    # ... and the network kept working, its chains untouched by any of it
    assert block_from_pb(entry.console("GetBlock", pb.BlockRequest(height=head_before.height))).hash \
        == head_before.hash
    wait_until(lambda: _same_head(entry, sn), 10, "equal heads after bad input")
    for node in (entry, sn):
        assert node.console("Verify", pb.VerifyRequest()).ok

    # --- kill a supernode: its edge nodes re-home within 10 s ------------------------------------------
    orphans = set(by_sn[sn_id])
    sn.kill()
    wait_until(lambda: all(n.supernode == entry_id and n.alive for n in entry.status().edge_nodes.nodes
                           if n.node_id in orphans), 10, "edge nodes to re-home")

    # --- a supernode started late catches up to the same head -----------------------------------------
    late = NodeProcess(tmp_path, "sn2", "SN", entry=entry.address, db=db_for("sn2"), token_source=entry)
    nodes.append(late)
    late.wait_ready()
    wait_until(lambda: entry.status().pending_transactions == 0 and _same_head(entry, late), 30, "late SN to catch up")
    assert late.console("Verify", pb.VerifyRequest()).ok

    # --- SIGTERM: every node exits cleanly ---------------------------------------------------------
    for node in [*ens, late, entry]:
        assert node.stop() == 0, node.log.read_text()[-2000:]
