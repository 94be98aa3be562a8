"""Bounded streams: one caller cannot hold a node's threads, idle streams are cancelled, and the
node keeps answering health checks and short calls meanwhile."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from conftest import node_channel
from node.chain.identity import Identity
from node.dev.launcher import NodeProcess, wait_until
from node.net.errors import ServiceError
from node.net.limits import StreamLimits
from node.net.streams import make_header


class FakeContext:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_limits_per_peer_in_total_and_idle_streams_are_cancelled():
    limits = StreamLimits(per_peer=2, total=3, idle_seconds=0.2)
    a1, a2, b1 = FakeContext(), FakeContext(), FakeContext()
    with limits.stream("a", a1) as moved, limits.stream("a", a2):
        with pytest.raises(ServiceError, match="already holds 2 streams") as third:
            with limits.stream("a", FakeContext()):
                pass
        assert third.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with limits.stream("b", b1):
            with pytest.raises(ServiceError, match="its most"):
                with limits.stream("c", FakeContext()):
                    pass
        for _ in range(6):  # a1 keeps moving; a2 does not
            time.sleep(0.1)
            moved()
        assert a2.cancelled.is_set() and not a1.cancelled.is_set()
    assert limits.active("a") == 0
    with limits.stream("a", FakeContext()):  # places are given back
        assert limits.active("a") == 1


def test_48_idle_streams_from_one_node_do_not_starve_it(tmp_path, nodes):
    idle_s = 2.0
    entry = NodeProcess(tmp_path, "entry", "SN", is_entry=True, env={"FL_STREAM_IDLE_S": str(idle_s)})
    nodes.append(entry)
    entry.wait_ready()
    en = NodeProcess(tmp_path, "en0", "EN", entry=entry.address, token_source=entry)
    nodes.append(en)
    wait_until(lambda: any(n.alive for n in entry.status().edge_nodes.nodes), 30, "the edge node")
    me = Identity.load_or_create(en.home)
    release = threading.Event()

    def stalled():  # nothing: the stream stays open, the supernode waiting for a header
        release.wait(60)
        yield pb.ModelChunk(header=make_header(me, b"x" * 1000))

    with node_channel(en, entry) as ch:
        upload = rpc_pb.TrainingStub(ch).UploadUpdate
        calls = [upload.future(stalled(), timeout=60) for _ in range(48)]
        refused = wait_until(lambda: [c for c in calls if c.done()] if sum(c.done() for c in calls) >= 44 else None,
                             10, "44 streams to be refused")
        assert {c.code() for c in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        started = time.monotonic()
        health = health_pb2_grpc.HealthStub(entry.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert rpc_pb.LedgerStub(ch).GetHead(pb.Empty(), timeout=2).height >= 0
        assert entry.status().node_id and time.monotonic() - started < 2
        held = [c for c in calls if not c.done()]
        assert len(held) == 4
        wait_until(lambda: all(c.done() for c in held), 3 * idle_s + 5, "the idle streams to be cancelled")
        assert {c.code() for c in held} == {grpc.StatusCode.CANCELLED}
        release.set()
        assert any(n.alive for n in entry.status().edge_nodes.nodes)  # its heartbeats got through all along
