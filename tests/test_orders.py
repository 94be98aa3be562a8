"""Round orders are signed, fresh and one-time; uploads are taken only for a round in progress,
one per edge node asked."""

from __future__ import annotations

import grpc
import pytest

from base_package import data_pb2 as pb
from config import load_config
from fl.federation import JobSpec
from node.chain.identity import Identity
from node.chain.rules import Transaction, TxKind, now_ms
from node.net.errors import ServiceError
from node.net.model_store import UploadWindow
from node.net.wire import tx_to_pb
from node.roles.jobs import Job, OrderLog, order_fields, job_payload, read_orders, sign_order

ENTRY = Identity.generate()


def _job() -> Job:
    conf = load_config(env={}, overrides={"dataset": "digits", "client.amount": 2})
    edges = [Identity.generate().node_id for _ in range(2)]
    return Job.from_tx(Transaction.create(TxKind.JOB, job_payload("job-1", JobSpec.from_config(conf), edges, conf),
                                          ENTRY))


def _request(job: Job, deadline_ms: int | None = None, kind: TxKind = TxKind.ROUND) -> pb.RoundRequest:
    payload = ({"global_hash": "ab" * 32} if kind == TxKind.ROUND
               else {"hash": "ab" * 32, "samples": 10, "aggregates": []})
    authority = Transaction.create(kind, {"job_id": job.job_id, "round": 3, **payload}, ENTRY)
    order = sign_order(ENTRY, job, authority, deadline_ms or now_ms() + 60_000)
    return pb.RoundRequest(job=tx_to_pb(job.tx), authority=tx_to_pb(authority), order=order)


def _refusal(request: pb.RoundRequest, log: OrderLog) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ServiceError) as caught:
        read_orders(request, ENTRY.node_id, ENTRY.public_key, log)
    return caught.value.code, caught.value.message


def test_a_signed_fresh_order_is_carried_out_once():
    job, log = _job(), OrderLog()
    request = _request(job)
    orders = read_orders(request, ENTRY.node_id, ENTRY.public_key, log)
    assert (orders.round, orders.model_hash, orders.evaluate_only) == (3, "ab" * 32, False)
    assert 59 < orders.seconds_left() <= 60
    code, message = _refusal(request, log)
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already carried out here" in message
    evaluate = _request(job, kind=TxKind.GLOBAL_MODEL)
    assert read_orders(evaluate, ENTRY.node_id, ENTRY.public_key, OrderLog()).evaluate_only
    assert evaluate.order.action == "evaluate"


def test_later_orders_of_a_job_may_come_without_its_job():
    """A supernode sends an edge node the JOB (every participant: 75 KB at a thousand) with its
    first order of the job only; a node that never checked that JOB asks for it."""
    from node.roles.jobs import JOB_NEEDED

    entry = Identity.generate()
    conf = load_config(env={}, overrides={"dataset": "digits", "client.amount": 2})
    job = Job.from_tx(Transaction.create(TxKind.JOB, job_payload("job-lean", JobSpec.from_config(conf),
                                                                  ["a" * 32, "b" * 32], conf), entry))
    authority = Transaction.create(TxKind.ROUND, {"job_id": job.job_id, "round": 1, "global_hash": "ab" * 32}, entry)

    def lean() -> pb.RoundRequest:
        return pb.RoundRequest(authority=tx_to_pb(authority), order=sign_order(entry, job, authority, now_ms() + 60_000))

    log = OrderLog()
    with pytest.raises(ServiceError) as caught:
        read_orders(lean(), entry.node_id, entry.public_key, log)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION and caught.value.message.startswith(JOB_NEEDED)
    full = lean()
    full.job.CopyFrom(tx_to_pb(job.tx))
    assert read_orders(full, entry.node_id, entry.public_key, log).job.job_id == "job-lean"
    later = read_orders(lean(), entry.node_id, entry.public_key, OrderLog())  # (another node of the process)
    assert list(later.job.participants) == ["a" * 32, "b" * 32]
    with pytest.raises(ServiceError) as caught:  # held for that entry node only
        read_orders(lean(), ENTRY.node_id, ENTRY.public_key, OrderLog())
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_orders_that_are_stretched_late_early_or_mismatched_are_refused():
    job = _job()
    stretched = _request(job)
    stretched.order.deadline_ms += 3_600_000  # more time, added on the way
    assert _refusal(stretched, OrderLog())[0] == grpc.StatusCode.UNAUTHENTICATED
    late = _request(job)  # an old order, replayed after its deadline
    late.order.issued_ms, late.order.deadline_ms = now_ms() - 120_000, now_ms() - 60_000
    late.order.signature = ENTRY.sign(order_fields(late.order))
    assert _refusal(late, OrderLog())[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    early = _request(job)
    early.order.issued_ms = now_ms() + 60_000
    early.order.deadline_ms = early.order.issued_ms + 1000
    early.order.signature = ENTRY.sign(order_fields(early.order))
    assert _refusal(early, OrderLog())[0] == grpc.StatusCode.INVALID_ARGUMENT
    other = _request(job)
    other.authority.CopyFrom(tx_to_pb(Transaction.create(  # another ROUND than the order names
        TxKind.ROUND, {"job_id": job.job_id, "round": 4, "global_hash": "cd" * 32}, ENTRY)))
    assert _refusal(other, OrderLog())[0] == grpc.StatusCode.INVALID_ARGUMENT
    forged = _request(job)
    forged.order.signature = Identity.generate().sign(order_fields(forged.order))
    assert _refusal(forged, OrderLog())[0] == grpc.StatusCode.UNAUTHENTICATED
    unsigned = _request(job)
    unsigned.ClearField("order")
    assert _refusal(unsigned, OrderLog())[0] == grpc.StatusCode.UNAUTHENTICATED


def test_uploads_only_in_a_round_in_progress_once_per_edge_node_asked():
    window = UploadWindow()

    def code(sender: str, round_number: int = 1) -> grpc.StatusCode | None:
        try:
            window.admit(sender, "job-1", round_number)
        except ServiceError as exc:
            return exc.code
        return None

    assert code("a") == grpc.StatusCode.FAILED_PRECONDITION
    with window.open("job-1", 1, ["a", "b"]):
        assert code("a") is None
        assert code("a") == grpc.StatusCode.ALREADY_EXISTS
        assert code("c") == grpc.StatusCode.PERMISSION_DENIED
        assert code("b", round_number=2) == grpc.StatusCode.FAILED_PRECONDITION
        window.release("a", "job-1", 1)  # its upload broke off: it may send it again
        assert code("a") is None
    assert code("b") == grpc.StatusCode.FAILED_PRECONDITION
