"""Node pieces in-process: wire decoding, model streams, membership choices, the CLI."""

from __future__ import annotations

import hashlib
import os
import sys
import time

import grpc
import pytest

from base_package import data_pb2 as pb
from main import build_parser, main
from node.dev.launcher import wait_until
from node.net.channels import CHUNK_BYTES
from node.chain.rules import Transaction, TxKind
from node.chain.identity import Identity
from node.roles.membership import Member, Members
from node.net.errors import ServiceError
from node.net.guard import calls_from
from node.net.tls import Peer
from node.net.channels import split_address
from node.net.model_store import ModelCache
from node.net.streams import ReceivedModel, chunks, make_header, receive
from node.net.wire import WireError, tx_from_pb, tx_to_pb


def test_transactions_round_trip_and_malformed_payloads_are_refused():
    me = Identity.generate()
    tx = Transaction.create(TxKind.SCORE, {"job_id": "j", "round": 2, "node": me.node_id, "score": "0.5"}, me)
    assert tx_from_pb(tx_to_pb(tx)).hash == tx.hash
    for payload, reason in [(b"\xff", "usable JSON"), (b"[1]", "JSON object"), (b'{"a":1.5}', "float"),
                            (b'{"a":NaN}', "float"), (b"0" * (65 * 1024), "limit")]:
        with pytest.raises(WireError, match=reason):
            tx_from_pb(pb.Transaction(kind="SCORE", sender=me.node_id, payload=payload))


def _status(fn) -> grpc.StatusCode:
    with pytest.raises(ServiceError) as info:
        fn()
    return info.value.code


def test_model_stream_checks_size_hash_and_order():
    me = Identity.generate()
    data = bytes(range(256)) * 10_000
    got = receive(chunks(make_header(me, data, "job", 3, 42), data, chunk_bytes=4096), max_bytes=10 << 20)
    assert got.data == data and got.header.num_samples == 42
    header = make_header(me, data)
    assert _status(lambda: receive(chunks(header, data[:-1] + b"x"), 10 << 20)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: receive(chunks(header, data[:-5]), 10 << 20)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: receive(chunks(header, data + b"extra"), 10 << 20)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: receive(chunks(header, data), 1000)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _status(lambda: receive(iter([pb.ModelChunk(data=b"x")]), 1000)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: receive(iter([]), 1000)) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_received_model_is_joined_once_and_then_held_once():
    me = Identity.generate()
    data = bytes(range(256)) * 10_000
    got = receive(chunks(make_header(me, data), data, chunk_bytes=4096), max_bytes=10 << 20)
    assert len(got.pieces) > 1 and got.size == len(data)
    assert got.prefix(8) == data[:8]
    assert got.data == data and got.pieces == (got.data,)  # the chunks gave way to their join
    assert b"".join(c.data for c in got.stream() if c.WhichOneof("part") == "data") == data


def test_a_model_made_here_streams_in_chunks_grpc_accepts():
    """A partial sum of a CNN is 9 MB in one piece; gRPC refuses messages over 8 MiB."""
    data = bytes(9 << 20)
    model = ReceivedModel.of(make_header(Identity.generate(), data), data)
    parts = [c.data for c in model.stream() if c.WhichOneof("part") == "data"]
    assert max(len(p) for p in parts) <= CHUNK_BYTES and b"".join(parts) == data


def test_model_cache_keeps_the_newest_within_its_budget():
    cache = ModelCache(max_bytes=250)
    models = [ReceivedModel.of(pb.ModelHeader(model_hash=hashlib.sha256(bytes([i])).hexdigest(), size=100), bytes(100))
              for i in range(3)]
    for m in models:
        cache.put(m)
    assert cache.get(models[0].header.model_hash) is None
    assert cache.get(models[2].header.model_hash) is models[2]


def test_model_store_moves_models_to_disk_keeps_them_across_restarts_and_within_budget(tmp_path):
    me = Identity.generate()
    models = []
    for i in range(4):
        data = bytes([i]) * 1000
        models.append(ReceivedModel.of(make_header(me, data, "job", i, 10 + i), data))
    store = ModelCache(max_bytes=10_000, directory=tmp_path / "models", disk_bytes=2 * 1300)
    for m in models[:2]:
        store.put(m)
    store.spill(models[0].header.model_hash)
    store.close()  # the write is done
    assert store._size == 1000 and (tmp_path / "models" / f"{models[0].header.model_hash}.model").exists()
    back = store.get(models[0].header.model_hash)
    assert back.data == models[0].data and back.header == models[0].header  # signed header included

    small = ModelCache(max_bytes=1500, directory=tmp_path / "models", disk_bytes=2 * 1300)  # a restart
    assert small.get(models[0].header.model_hash).data == models[0].data
    for m in models[1:]:  # each put evicts the one before it to disk; the disk keeps the newest two
        small.put(m)
    small.close()
    held = [m for m in models if small.get(m.header.model_hash) is not None]
    assert held == models[1:] and sorted(p.stem for p in (tmp_path / "models").glob("*.model")) == sorted(
        m.header.model_hash for m in models[1:3])

    damaged = tmp_path / "models" / f"{models[1].header.model_hash}.model"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"X")
    assert small.get(models[1].header.model_hash) is None  # never served altered


def test_updates_are_on_disk_before_a_supernode_reports_them(tmp_path):
    """wait_stored spills and returns once the files are written (a kill -9 right after loses
    nothing the chain names); without a directory nothing is stored and it says so at once."""
    me = Identity.generate()
    models = [ReceivedModel.of(make_header(me, bytes([i]) * 5000, "job", 1, 10), bytes([i]) * 5000) for i in range(3)]
    store = ModelCache(max_bytes=1 << 20, directory=tmp_path / "models")
    for m in models:
        store.put(m)
    hashes = [m.header.model_hash for m in models]
    assert store.wait_stored(hashes, timeout=10) == []
    assert all((tmp_path / "models" / f"{h}.model").stat().st_size > 5000 for h in hashes)
    store.close()
    memory_only = ModelCache(max_bytes=1 << 20)
    memory_only.put(models[0])
    assert memory_only.wait_stored(hashes[:1], timeout=10) == hashes[:1]


def test_a_rounds_updates_are_made_durable_together_not_one_sync_each(tmp_path, monkeypatch):
    """A supernode stores an update per edge node each round: written as a batch, with two syncs
    per batch (the bytes, then the names), not a journal commit per file."""
    me = Identity.generate()
    models = [ReceivedModel.of(make_header(me, bytes([i]) * 500, "job", 1, 1), bytes([i]) * 500) for i in range(50)]
    store = ModelCache(max_bytes=1 << 20, directory=tmp_path / "models")
    syncs, real_sync = [], store._sync

    def slow_first_sync(files):
        syncs.append(len(files))
        if len(syncs) == 1:
            time.sleep(0.2)  # the other spills queue up meanwhile
        real_sync(files)

    monkeypatch.setattr(store, "_sync", slow_first_sync)
    for m in models:
        store.put(m)
    assert store.wait_stored([m.header.model_hash for m in models], 30) == []
    assert len(syncs) <= 6  # two or three batches, not 50 syncs
    store.close()
    again = ModelCache(max_bytes=1 << 20, directory=tmp_path / "models")
    assert all(again.get(m.header.model_hash).data == m.data for m in models)


def test_a_model_the_disk_cannot_take_stays_in_memory_and_so_does_one_spilled_after_close(tmp_path):
    import shutil

    me = Identity.generate()
    first, second = (ReceivedModel.of(make_header(me, bytes([i]) * 1000), bytes([i]) * 1000) for i in range(2))
    store = ModelCache(max_bytes=10_000, directory=tmp_path / "models")
    store.put(first)
    shutil.rmtree(tmp_path / "models")  # the disk is gone
    store.spill(first.header.model_hash)
    store.close()
    assert store.get(first.header.model_hash) is first and not list(tmp_path.glob("**/*.tmp"))
    store.put(second)
    store.spill(second.header.model_hash)  # closed: nowhere to write, kept
    assert store.get(second.header.model_hash) is second


def test_threads_asking_for_a_chunked_model_share_one_join():
    import threading

    me = Identity.generate()
    data = bytes(range(256)) * 40_000
    got = receive(chunks(make_header(me, data), data, chunk_bytes=1 << 16), max_bytes=10 << 20)
    seen: list[bytes] = []
    threads = [threading.Thread(target=lambda: seen.append(got.data)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(b is seen[0] for b in seen) and seen[0] == data


def test_model_store_without_a_directory_drops_what_it_evicts():
    me = Identity.generate()
    cache = ModelCache(max_bytes=1500)
    first, second = (ReceivedModel.of(make_header(me, bytes([i]) * 1000), bytes([i]) * 1000) for i in range(2))
    cache.put(first)
    cache.spill(first.header.model_hash)  # nowhere to go: stays
    assert cache.get(first.header.model_hash) is first
    cache.put(second)
    assert cache.get(first.header.model_hash) is None and cache.get(second.header.model_hash) is second


def test_supernode_choice_spreads_joins_excludes_and_skips_the_dead():
    members = Members(dead_after=1.0, self_id="entry")
    for sn in ("entry", "sn1", "sn2"):
        members.add(Member(sn, "SN", f"{sn}:1", b""))
    picks = [members.pick_supernode(f"en{i}").node_id for i in range(6)]
    assert sorted(picks) == ["entry", "entry", "sn1", "sn1", "sn2", "sn2"]  # reservations spread joins
    assert members.pick_supernode("en9", exclude=["entry", "sn1"]).node_id == "sn2"
    members.get("sn1").last_seen = members.get("sn2").last_seen = time.monotonic() - 5
    assert members.pick_supernode("en10").node_id == "entry"  # the others are dead; self is alive
    assert members.pick_supernode("en11", exclude=["entry"]) is None


def test_cli_flags_init_and_clear_errors(tmp_path, capsys):
    args = build_parser().parse_args(["--port", "8080", "--nt", "sn", "--entry", "127.0.0.1:8080", "-z"])
    assert args.nt == "SN" and args.is_entry and args.host == "0.0.0.0"
    assert main(["init", "--home", str(tmp_path / "n")]) == 0
    out = capsys.readouterr().out
    assert Identity.load_or_create(tmp_path / "n").node_id in out
    assert "gobal_epoch" in (tmp_path / "n" / "config.toml").read_text()
    assert main(["--port", "1", "--nt", "EN", "--entry", "nowhere", "--home", str(tmp_path / "x")]) == 2
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        split_address("host:99999")


def test_a_batch_of_transactions_is_admitted_in_order_like_single_submits(tmp_path):
    import dataclasses

    from node.chain.ledger import Ledger
    from node.roles.settings import NodeSettings
    from node.roles.supernode import Supernode
    from sql.store import LedgerStore

    store = LedgerStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    me = Identity.generate()
    entry = Supernode(me, "127.0.0.1:1", Ledger(store), "127.0.0.1:1", True, NodeSettings(block_interval=0.05))
    entry.start()
    try:
        scores = [Transaction.create(TxKind.SCORE, {"job_id": "j", "round": r, "node": me.node_id, "score": "0.5"}, me)
                  for r in (1, 2, 3)]
        assert entry.submit_all(scores[:2] + scores[:1]) == [t.hash for t in scores[:2]] + [scores[0].hash]
        assert entry.pending_count() in (0, 2)  # a duplicate is admitted once (the block loop may have sealed)
        forged = dataclasses.replace(scores[2], signature=Identity.generate().sign(bytes.fromhex(scores[2].hash)))
        later = Transaction.create(TxKind.SCORE, {"job_id": "j", "round": 4, "node": me.node_id, "score": "1"}, me)
        assert _status(lambda: entry.submit_all([forged, later])) == grpc.StatusCode.UNAUTHENTICATED
        stranger = Identity.generate()
        unknown = Transaction.create(TxKind.SCORE, {"job_id": "j", "round": 5, "node": me.node_id, "score": "1"}, stranger)
        assert _status(lambda: entry.submit_all([unknown])) == grpc.StatusCode.PERMISSION_DENIED
        wait_until(lambda: entry.pending_count() == 0, 10, "the pool sealed")
        sealed = store.existing_transactions([t.hash for t in scores] + [later.hash])
        assert sealed == {scores[0].hash, scores[1].hash}  # the forged one stopped the batch: nothing after it
        assert entry.submit_all(scores[:2]) == [t.hash for t in scores[:2]] and entry.pending_count() == 0  # sealed: idempotent
    finally:
        entry.stop()
        store.close()


def test_transactions_submitted_together_are_sealed_in_one_block_or_not_admitted(tmp_path):
    """A round's records go on the chain together: one bad record keeps all of them out of the
    pool, and the good ones are sealed in one block even past block_max_txs."""
    import dataclasses

    from node.chain.ledger import Ledger
    from node.roles.settings import NodeSettings
    from node.roles.supernode import Supernode
    from sql.store import LedgerStore

    store = LedgerStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    me = Identity.generate()
    entry = Supernode(me, "127.0.0.1:1", Ledger(store), "127.0.0.1:1", True,
                      NodeSettings(block_interval=0.05, block_max_txs=3))
    entry.start()
    try:
        def score(r: int) -> Transaction:
            return Transaction.create(TxKind.SCORE, {"job_id": "j", "round": r, "node": me.node_id, "score": "1"}, me)

        round_records = [score(r) for r in range(1, 8)]
        forged = dataclasses.replace(round_records[3], signature=Identity.generate().sign(bytes.fromhex(round_records[3].hash)))
        bad = round_records[:3] + [forged] + round_records[4:]
        assert _status(lambda: entry.submit_all(bad, together=True)) == grpc.StatusCode.UNAUTHENTICATED
        assert entry.pending_count() == 0 and not store.existing_transactions([t.hash for t in round_records])
        singles = [score(r) for r in (20, 21)]
        entry.submit_all(singles[:1])
        entry.submit_all(round_records, together=True)
        entry.submit_all(singles[1:])
        wait_until(lambda: entry.pending_count() == 0, 10, "the pool sealed")
        where = {t.hash: h for h, t in store.transactions(kind="SCORE")}
        heights = {where[t.hash] for t in round_records}
        assert len(heights) == 1, heights  # seven records, one block, though blocks hold 3
        assert store.existing_transactions([t.hash for t in singles]) == {t.hash for t in singles}
        assert entry.submit_all(round_records, together=True) and entry.pending_count() == 0  # sealed: idempotent
    finally:
        entry.stop()
        store.close()


def test_an_upload_counts_as_a_heartbeat_and_an_edge_node_heartbeat_reads_no_ledger(tmp_path):
    from node.chain.ledger import Ledger
    from node.roles.membership import signed_heartbeat
    from node.roles.settings import NodeSettings
    from node.roles.supernode import Supernode
    from sql.store import LedgerStore

    store = LedgerStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    sn = Supernode(Identity.generate(), "127.0.0.1:1", Ledger(store), "127.0.0.1:1", True, NodeSettings(dead_after=1.0))
    en = Identity.generate()
    try:
        sn.members.add(Member(en.node_id, "EN", "127.0.0.1:2", en.public_key, supernode=sn.node_id,
                              last_seen=time.monotonic() - 5))
        assert not sn.members.alive(sn.members.get(en.node_id))
        stale = make_header(en, b"update")
        stale.timestamp -= 120_000  # an old (replayed) upload proves nothing about now
        sn.upload_seen(stale)
        assert not sn.members.alive(sn.members.get(en.node_id))
        sn.upload_seen(make_header(en, b"update"))
        assert sn.members.alive(sn.members.get(en.node_id))
        with calls_from(Peer(en.node_id, "EN")):  # as over its own TLS connection
            beat = signed_heartbeat(en)
            reply = sn.heartbeat(beat)
            with pytest.raises(ServiceError, match="not in sequence"):  # the same heartbeat again
                sn.heartbeat(beat)
            with pytest.raises(ServiceError, match="clock"):  # a heartbeat from 10 s ago
                sn.heartbeat(signed_heartbeat(en, timestamp=beat.timestamp - 10_000))
        with pytest.raises(ServiceError, match="must come from that node"):  # anyone else's connection
            sn.heartbeat(signed_heartbeat(en))
        assert reply.known and not reply.HasField("head") and not reply.supernodes.nodes
    finally:
        sn.stop()
        store.close()


def test_an_edge_node_skips_heartbeats_while_its_uploads_say_it_is_alive():
    """Heartbeats stop while uploads come more often than the interval and resume after."""
    from concurrent.futures import ThreadPoolExecutor

    from base_package import data_pb2_grpc as rpc_pb
    from node.roles.edgenode import EdgeNode
    from node.roles.settings import NodeSettings

    beats: list[float] = []

    class CountingMembership(rpc_pb.MembershipServicer):
        def Heartbeat(self, request, context):
            beats.append(time.monotonic())
            return pb.HeartbeatReply(known=True)

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    rpc_pb.add_MembershipServicer_to_server(CountingMembership(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    node = EdgeNode(Identity.generate(), "127.0.0.1:3", f"127.0.0.1:{port}", NodeSettings(heartbeat_interval=0.2))
    node.supernode = pb.NodeInfo(node_id="sn", address=f"127.0.0.1:{port}")
    try:
        node.upload_done()
        node.start()
        uploading_until = time.monotonic() + 1.0
        while time.monotonic() < uploading_until:
            node.upload_done()  # an upload every 20 ms: far more often than the 200 ms interval
            time.sleep(0.02)
        during = len([t for t in beats if t < uploading_until])
        assert during <= 1, during
        wait_until(lambda: len([t for t in beats if t >= uploading_until]) >= 3, 5, "heartbeats to resume")
    finally:
        node.stop()
        server.stop(None)


@pytest.mark.skipif(not hasattr(os, "setpriority") or sys.platform != "linux", reason="per-thread nice is Linux's")
def test_models_are_stored_by_a_thread_that_waits_for_idle_cores(tmp_path):
    import threading

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    cache = ModelCache(1 << 20, tmp_path)
    try:
        nice = cache._writer.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
        assert nice == 19
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the rest of the process is untouched
    finally:
        cache.close()


def test_the_admin_token_is_safe_on_a_command_line(tmp_path):
    """A token starting with '-' would be taken for a flag by `Console.py --token …` (urlsafe
    base64 starts with '-' once in 64 tokens)."""
    import re

    from node.net.admin import load_or_create_token

    token, created = load_or_create_token(tmp_path)
    assert created and re.fullmatch(r"[0-9a-f]{64}", token)
    assert load_or_create_token(tmp_path) == (token, False)
    assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600


def test_an_edge_node_that_moves_during_a_round_is_its_first_supernodes_for_that_round():
    """A supernode too busy to answer heartbeats in time may lose an edge node to another during a
    round; its report of that node's update for the round still counts (the node was its own as
    the round started), and a supernode the node never belonged to still cannot report it."""
    from types import SimpleNamespace

    from node.roles.coordinator import Coordinator

    now = SimpleNamespace(node=SimpleNamespace(members={"en": SimpleNamespace(supernode="sn-b")}))
    at_start = {"en": "sn-a"}
    assert Coordinator._owns(now, "sn-a", "en", at_start)  # its supernode as the round started
    assert Coordinator._owns(now, "sn-b", "en", at_start)  # and its supernode now
    assert not Coordinator._owns(now, "sn-c", "en", at_start)  # never its supernode
    assert not Coordinator._owns(now, "sn-a", "other", at_start)  # not a member at all


def test_an_exclusion_of_an_edge_node_a_supernode_lost_is_dropped_not_its_whole_result():
    """A supernode whose answer to a registration was lost still lists that edge node (which
    registered elsewhere); its exclusion of it says nothing about the round and is dropped, while
    its exclusion of its own edge node stands, and a contradictory one still refuses the result."""
    from types import SimpleNamespace

    from base_package import data_pb2 as pb
    from node.chain.identity import Identity
    from node.chain.rules import Transaction, TxKind
    from node.net.errors import ServiceError
    from node.net.wire import tx_to_pb
    from node.roles.coordinator import Coordinator

    sn, moved, own = Identity.generate(), "a" * 32, "b" * 32
    members = {sn.node_id: SimpleNamespace(public_key=sn.public_key, supernode=""),
               moved: SimpleNamespace(supernode="c" * 32), own: SimpleNamespace(supernode=sn.node_id)}
    coordinator = SimpleNamespace(node=SimpleNamespace(members=members))
    coordinator._owns = lambda sn_id, node_id, owners: Coordinator._owns(coordinator, sn_id, node_id, owners)
    job = SimpleNamespace(job_id="job-1", participants=[moved, own])

    def exclusion(node: str) -> pb.Transaction:
        return tx_to_pb(Transaction.create(TxKind.EXCLUDED, {"job_id": "job-1", "round": 1, "node": node,
                                                             "reason": "timed out"}, sn))

    result = pb.SupernodeResult(exclusion_records=[exclusion(moved), exclusion(own)])
    kept = Coordinator._exclusion_records(coordinator, job, 1, SimpleNamespace(node_id=sn.node_id), result, {})
    assert [t.payload["node"] for t in kept] == [own]
    twice = pb.SupernodeResult(exclusion_records=[exclusion(own), exclusion(own)])
    with pytest.raises(ServiceError):
        Coordinator._exclusion_records(coordinator, job, 1, SimpleNamespace(node_id=sn.node_id), twice, {})
