"""Long operations show how far they have got (issue 18), and only where someone is watching.

- ``verify_chain`` and ``recompute_chain`` call a ``progress(done, total)`` callback with counts
  that never go down and end at the total;
- the audit CLI draws a bar on stderr (forced by ``--progress``) and prints the same stdout;
- the console's ``verify()`` and a followed job show a live line on a terminal, nothing more in
  the scripting mode;
- a supernode catching up on a long chain logs where it is, a line at a time.

All in-process and fast: small chains in SQLite, a fake console client, a fake entry node stub.
"""

from __future__ import annotations

import io
import logging
import time

from rich.console import Console
from rich.text import Text

import node.audit
import node.chain.audit
import node.roles.recompute
import node.roles.replica
from base_package import data_pb2 as pb
from chain_helpers import build_chain
from console.app import execute
from console.commands import Session, _job_line, follow
from node.chain.audit import verify_chain
from node.chain.identity import Identity
from node.chain.ledger import Ledger
from node.net.wire import block_to_pb
from node.roles.recompute import RecomputeReport, recompute_chain
from node.roles.replica import Replica
from sql.store import LedgerStore


def _ledger(tmp_path, name: str = "ledger.db", blocks: int = 10) -> tuple[str, LedgerStore]:
    """A SQLite ledger of genesis, one admission block and ``blocks`` update blocks."""
    url = f"sqlite:///{tmp_path / name}"
    store = LedgerStore(url)
    if blocks:
        build_chain(Ledger(store), Identity.generate(), blocks=blocks)
    return url, store


def _assert_counts(calls: list[tuple[int, int]], total: int) -> None:
    """Never backwards, never past the total, the last one done."""
    assert calls and calls[-1] == (total, total), calls
    assert all(t == total and 0 <= d <= t for d, t in calls), calls
    assert [d for d, _ in calls] == sorted(d for d, _ in calls), calls


# --- the callbacks ---------------------------------------------------------------------------
def test_verify_reports_blocks_once_a_batch_and_once_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(node.chain.audit, "BATCH_BLOCKS", 4)
    _, store = _ledger(tmp_path, blocks=10)  # 12 blocks: 3 batches of 4
    calls: list[tuple[int, int]] = []
    report = verify_chain(store, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and report.blocks == 12
    _assert_counts(calls, 12)
    assert calls == [(0, 12), (4, 12), (8, 12), (12, 12)]  # once a batch, not once a block
    assert verify_chain(store) == report  # the callback changes nothing
    store.close()


def test_verify_of_an_empty_chain_ends_at_zero(tmp_path):
    _, store = _ledger(tmp_path, blocks=0)
    calls: list[tuple[int, int]] = []
    assert verify_chain(store, progress=lambda *c: calls.append(c)).ok and calls == [(0, 0)]
    store.close()


def test_recompute_reports_every_round():
    from test_recompute import _chain

    txs, models = _chain()
    calls: list[tuple[int, int]] = []
    report = recompute_chain(txs, lambda h, holder: models.get(h), progress=lambda *c: calls.append(c))
    assert report.ok and report.rounds == 2
    assert calls == [(1, 2), (2, 2)]
    _assert_counts(calls, 2)
    empty: list[tuple[int, int]] = []
    assert recompute_chain([], lambda h, holder: None, progress=lambda *c: empty.append(c)).ok and empty == [(0, 0)]


# --- the audit CLI ---------------------------------------------------------------------------
def test_the_cli_draws_a_bar_on_stderr_only_when_asked_and_stdout_stays(tmp_path, capsys, monkeypatch):
    url, store = _ledger(tmp_path, blocks=3)
    store.close()
    assert node.audit.main([url]) == 0
    plain = capsys.readouterr()
    assert plain.out.startswith("OK: 5 blocks, 14 transactions, head 4 ") and plain.err == ""  # not a terminal
    assert node.audit.main([url, "--progress"]) == 0
    shown = capsys.readouterr()
    assert shown.out == plain.out
    assert "verifying blocks" in shown.err and "5/5" in shown.err

    def rounds(transactions, fetch, progress=None) -> RecomputeReport:  # a recorded job's two rounds
        list(transactions)
        for done in (1, 2) if progress is not None else ():
            progress(done, 2)
        return RecomputeReport(True, 1, 2, 8, seconds=0.25)

    monkeypatch.setattr(node.roles.recompute, "recompute_chain", rounds)
    (tmp_path / "models").mkdir()
    args = [url, "--recompute", "--models", str(tmp_path / "models")]
    assert node.audit.main([*args, "--progress"]) == 0
    shown = capsys.readouterr()
    assert shown.out == plain.out + "OK: recomputed 2 rounds of 1 jobs from 8 recorded updates (0.25 s)\n"
    assert "recomputing rounds" in shown.err and "2/2" in shown.err
    assert node.audit.main([*args, "--no-progress"]) == 0 and capsys.readouterr() == (shown.out, "")


# --- the console -----------------------------------------------------------------------------
class SlowNode:
    """A supernode whose Verify takes a moment (long enough for a live line to be drawn)."""

    address = "10.0.0.1:8080"

    def call(self, method: str, request=None, timeout: float = 60):
        assert method == "Verify"
        time.sleep(0.3)
        reply = pb.VerifyReply(ok=True, blocks=5, transactions=14, head=pb.Head(height=4, hash="ab" * 32),
                               bad_height=-1)
        if request.recompute:
            reply.recompute.CopyFrom(pb.RecomputeReport(ok=True, jobs=1, rounds=2, updates=8, seconds=0.25))
        return reply


def _session(terminal: bool) -> tuple[Session, io.StringIO]:
    buffer = io.StringIO()
    return Session(SlowNode(), Console(file=buffer, width=200, force_terminal=terminal)), buffer


def test_verify_shows_a_live_line_on_a_terminal_only():
    session, out = _session(terminal=True)
    assert execute(session, "verify(recompute=True)")
    assert "verifying the chain and recomputing every round on 10.0.0.1:8080 … 0 s" in out.getvalue()
    scripted, piped = _session(terminal=False)  # -c "verify(recompute=True)" | …
    assert execute(scripted, "verify(recompute=True)")
    assert piped.getvalue() == ("OK: 5 blocks, 14 transactions, head 4 " + "ab" * 32 + "\n"
                                "OK: recomputed 2 rounds of 1 jobs from 8 recorded updates: every AGGREGATE and "
                                "GLOBAL_MODEL matches (0.25 s)\n")


class RunningJob:
    """A job whose first round takes a moment, then finishes."""

    address = "10.0.0.1:8080"

    def __init__(self) -> None:
        self.replies = [pb.JobStatus(job_id="job-1", state="running", round=0, rounds=2),
                        pb.JobStatus(job_id="job-1", state="done", round=2, rounds=2,
                                     metrics=[pb.RoundMetrics(round=1), pb.RoundMetrics(round=2)])]

    def call(self, method: str, request=None, timeout: float = 60) -> pb.JobStatus:
        assert method == "GetJob"
        time.sleep(0.3)
        return self.replies.pop(0)


def test_a_followed_job_shows_the_round_under_way_on_a_terminal_only():
    assert _job_line(pb.JobStatus(job_id="j", state="running", round=2, rounds=5), 12.4) == "j: round 3 of 5 running, 12 s"
    assert _job_line(pb.JobStatus(job_id="j", state="done", round=5, rounds=5), 0) == "j done"
    for terminal in (True, False):
        out = io.StringIO()
        session = Session(RunningJob(), Console(file=out, width=200, force_terminal=terminal))
        assert follow(session, session.client.call("GetJob"), poll=0.01)
        assert ("round 1 of 2 running" in out.getvalue()) is terminal
        assert "job-1: done after 2/2 rounds" in Text.from_ansi(out.getvalue()).plain


# --- a supernode catching up -----------------------------------------------------------------
class EntryLedger:
    """The entry node's Ledger service, in-process: its head and its blocks from a height."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    def GetHead(self, request, timeout: float = 0) -> pb.Head:
        return pb.Head(height=self.store.head().height, hash=self.store.head().hash)

    def GetBlocks(self, request: pb.GetBlocksRequest, timeout: float = 0):
        return [block_to_pb(b) for b in self.store.blocks_from(request.from_height, request.limit)]


class NoChannels:
    def get(self, address: str, node_id: str = "") -> None:
        return None


def _catch_up(tmp_path, monkeypatch, caplog) -> list[str]:
    _, entry = _ledger(tmp_path, "entry.db", blocks=10)
    _, mine = _ledger(tmp_path, "mine.db", blocks=0)
    monkeypatch.setattr(node.roles.replica.rpc_pb, "LedgerStub", lambda channel: EntryLedger(entry))
    monkeypatch.setattr(node.roles.replica, "SYNC_BATCH", 5)
    with caplog.at_level(logging.INFO, logger="node.roles.replica"):
        assert Replica(Ledger(mine), NoChannels(), "entry:8080").sync() == 12
    assert mine.head() == entry.head()
    entry.close()
    mine.close()
    return [r.getMessage() for r in caplog.records if r.name == "node.roles.replica"]


def test_catching_up_logs_where_it_is_then_where_it_ended(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(node.roles.replica, "PROGRESS_SECONDS", 0.0)  # every block is "a while later"
    lines = _catch_up(tmp_path, monkeypatch, caplog)
    assert lines[0].startswith("catching up: at height 0 of 11 (1 blocks in ")
    assert lines[-1].startswith("caught up to height 11 of 11 (12 blocks in ") and lines[-1].endswith(" s)")


def test_a_quick_catch_up_logs_one_line(tmp_path, monkeypatch, caplog):
    lines = _catch_up(tmp_path, monkeypatch, caplog)
    assert len(lines) == 1 and lines[0].startswith("caught up to height 11 of 11 (12 blocks in "), lines
