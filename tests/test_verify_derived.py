"""``verify`` re-derives the tables built from the chain (nodes, enrolments, jobs, rounds, model
records) and names any row an attacker with database access altered, added or deleted without
touching the blocks (nodes act on those rows: who is enrolled, revoked, which model a round
produced); and it checks the genesis block against the one pinned at enrolment. SQLite and
MariaDB (``ledger_url``; with CI=true the MariaDB cases must run)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
from sqlalchemy import delete, insert, update

from chain_helpers import build_chain, model_update
from node.chain.audit import verify_chain
from node.chain.identity import Identity
from node.chain.ledger import Ledger
from node.chain.rules import Transaction, TxKind
from node.dev.launcher import ROOT
from node.roles.enrolment import NetworkPin, pinned_genesis
from sql.store import LedgerStore
from sql.tables import enrolments, jobs, model_records, nodes, rounds

TABLES_DIFFER = "BAD: the tables built from the chain differ from it: "


def _job_block(proposer: Identity, senders: list[Identity]) -> list[Transaction]:
    """A JOB, its round opened and closed, and a REVOKE: a row in every derived table."""
    return [Transaction.create(TxKind.JOB, {"job_id": "job1", "spec": {"dataset": "digits"},
                                            "participants": [s.node_id for s in senders]}, proposer),
            Transaction.create(TxKind.ROUND, {"job_id": "job1", "round": 1, "global_hash": "aa" * 32}, proposer),
            Transaction.create(TxKind.GLOBAL_MODEL, {"job_id": "job1", "round": 1, "hash": "bb" * 32,
                                                     "samples": 200}, proposer),
            Transaction.create(TxKind.REVOKE, {"node": senders[1].node_id, "reason": "left"}, proposer)]


@dataclass
class Chain:
    store: LedgerStore
    ledger: Ledger
    proposer: Identity
    senders: list[Identity]


@pytest.fixture
def chain(ledger_url):
    """A chain with every derived table filled: enrolled and registered nodes, a revoked one, a
    job, its rounds and model records."""
    store = LedgerStore(ledger_url)
    ledger, proposer = Ledger(store), Identity.generate()
    senders = build_chain(ledger, proposer, blocks=3, txs_per_block=2)
    ledger.propose(_job_block(proposer, senders), proposer)
    yield Chain(store, ledger, proposer, senders)
    store.close()


def _tamper(store: LedgerStore, statement) -> None:
    with store.engine.begin() as conn:
        assert conn.execute(statement).rowcount == 1


def _tx_hash(store: LedgerStore, kind: TxKind) -> str:
    return store.transactions(kind=kind)[0][1].hash


def _assert_tables_differ(store: LedgerStore, *words: str) -> str:
    report = verify_chain(store)
    assert not report.ok and report.bad_height is None, report
    assert str(report).startswith(TABLES_DIFFER), report
    assert report.head == store.head()  # the blocks hold: their head is reported
    for word in words:
        assert word in report.reason, f"{word!r} not in {report.reason!r}"
    return report.reason


def test_an_untouched_chain_verifies_with_its_tables(chain):
    store = chain.store
    assert store.derived_differences() == []
    report = verify_chain(store)
    assert report.ok and report.blocks == 6 and str(report).startswith("OK: 6 blocks"), report


# (table, statement(store, senders), words the reason must hold): an UPDATE, a DELETE and an
# INSERT in every derived table
TAMPERING = [
    ("nodes", lambda st, s: update(nodes).where(nodes.c.node_id == s[0].node_id).values(address="10.6.6.6:1"),
     ["address is '10.6.6.6:1', the chain says '127.0.0.1:9000'"]),
    ("nodes", lambda st, s: update(nodes).where(nodes.c.node_id == s[0].node_id).values(
        public_key=Identity.generate().public_key.hex()), ["public_key is"]),
    ("nodes", lambda st, s: delete(nodes).where(nodes.c.node_id == s[1].node_id),
     ["follows from the chain but is missing"]),
    ("nodes", lambda st, s: insert(nodes).values(node_id="f" * 32, public_key="ee" * 32, role="SN", address="x:1",
                                                 registered_height=1, updated_height=1),
     [f"row node_id={'f' * 32} is not on the chain"]),
    ("enrolments", lambda st, s: update(enrolments).where(enrolments.c.node_id == s[1].node_id).values(
        revoked_height=None, reason=None), ["revoked_height is None, the chain says 5", "reason is None"]),
    ("enrolments", lambda st, s: update(enrolments).where(enrolments.c.node_id == s[0].node_id).values(
        role="SN"), ["role is 'SN', the chain says 'EN'"]),
    ("enrolments", lambda st, s: delete(enrolments).where(enrolments.c.node_id == s[0].node_id),
     ["follows from the chain but is missing"]),
    ("enrolments", lambda st, s: insert(enrolments).values(node_id="e" * 32, public_key="ee" * 32, role="EN",
                                                           token="t", certificate="cc" * 32, enrolled_height=2),
     ["is not on the chain"]),
    ("jobs", lambda st, s: update(jobs).where(jobs.c.job_id == "job1").values(spec='{"dataset":"cifar10"}'),
     ["row job_id=job1: spec is"]),
    ("jobs", lambda st, s: delete(jobs).where(jobs.c.job_id == "job1"), ["row job_id=job1 follows from the chain"]),
    ("jobs", lambda st, s: insert(jobs).values(job_id="job2", creator=s[0].node_id, spec="{}",
                                               tx_hash=_tx_hash(st, TxKind.ROUND), height=5),
     ["row job_id=job2 is not on the chain"]),
    ("rounds", lambda st, s: update(rounds).where(rounds.c.job_id == "job1").values(global_hash="cc" * 32),
     ["row job_id=job1, round=1: global_hash is 'cccc"]),
    ("rounds", lambda st, s: delete(rounds).where(rounds.c.job_id == "job1"), ["follows from the chain"]),
    ("rounds", lambda st, s: insert(rounds).values(job_id="job1", round=2, start_hash="bb" * 32),
     ["row job_id=job1, round=2 is not on the chain"]),
    ("model_records", lambda st, s: update(model_records).where(model_records.c.kind == "GLOBAL_MODEL").values(
        hash="dd" * 32), ["hash is 'dddd", "the chain says 'bbbb"]),
    ("model_records", lambda st, s: delete(model_records).where(model_records.c.kind == "GLOBAL_MODEL"),
     ["follows from the chain but is missing"]),
    ("model_records", lambda st, s: insert(model_records).values(
        tx_hash=_tx_hash(st, TxKind.ROUND), job_id="job1", round=1, node_id=s[0].node_id, kind="MODEL_UPDATE",
        hash="dd" * 32, samples=1, size=1, metrics="{}", height=5), ["is not on the chain"]),
]


@pytest.mark.parametrize("table, statement, words", TAMPERING,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(TAMPERING)])
def test_an_altered_derived_row_fails_verify_naming_the_table(chain, table, statement, words):
    store, senders = chain.store, chain.senders
    _tamper(store, statement(store, senders))
    reason = _assert_tables_differ(store, f"table {table}: row ", *words)
    assert store.derived_differences() == reason.removeprefix(TABLES_DIFFER[len("BAD: "):]).split("; ")


def test_many_differences_are_counted_not_listed(chain):
    store = chain.store
    with store.engine.begin() as conn:
        assert conn.execute(update(model_records).values(size=1)).rowcount == 7
    reason = _assert_tables_differ(store, "table model_records", "; and 2 more")
    assert reason.count("size is 1, the chain says ") == 5  # 4096 for an update, None for the global model


def test_a_long_value_is_shortened_in_the_reason(chain):
    store = chain.store
    _tamper(store, update(jobs).where(jobs.c.job_id == "job1").values(spec="x" * 5000))
    reason = _assert_tables_differ(store, "spec is 'xxxx")
    assert len(reason) < 400 and "…" in reason


def test_a_block_appended_while_verify_runs_is_not_taken_for_tampering(chain, monkeypatch):
    """A live node (the console's verify) keeps appending blocks during the audit: the tables are
    read once, at one height, before the walk, and only blocks up to it are derived."""
    walk = chain.store.iter_stored_blocks
    appended = []

    def walk_then_append(*args, **kwargs):
        """Each read of the blocks ends with a new block appended, with rows in every table."""
        yield from walk(*args, **kwargs)
        job = f"job{len(appended) + 2}"
        appended.append(chain.ledger.propose([
            Transaction.create(TxKind.JOB, {"job_id": job, "spec": {}}, chain.proposer),
            Transaction.create(TxKind.ROUND, {"job_id": job, "round": 1, "global_hash": "aa" * 32}, chain.proposer),
            model_update(chain.senders[0], 1, len(appended), job)], chain.proposer))

    monkeypatch.setattr(chain.store, "iter_stored_blocks", walk_then_append)
    report = verify_chain(chain.store)
    assert report.ok and report.head.height == appended[0].height - 1, report
    monkeypatch.undo()
    assert verify_chain(chain.store).ok


def test_a_tampered_block_is_reported_before_the_tables(chain):
    """The tables are compared only with a chain whose blocks hold: a bad block names its height."""
    store = chain.store
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE blocks SET timestamp = timestamp + 1 WHERE height = 2")
    _tamper(store, delete(jobs).where(jobs.c.job_id == "job1"))
    report = verify_chain(store)
    assert not report.ok and report.bad_height == 2 and "table" not in report.reason, report


def test_an_empty_chain_with_rows_in_its_tables_fails(ledger_url):
    store = LedgerStore(ledger_url)
    try:
        assert verify_chain(store).ok
        _tamper(store, insert(nodes).values(node_id="f" * 32, public_key="ee" * 32, role="EN", address="x:1",
                                            registered_height=0, updated_height=0))
        _assert_tables_differ(store, f"table nodes: row node_id={'f' * 32} is not on the chain")
    finally:
        store.close()


def test_a_few_hundred_blocks_verify_with_their_tables(ledger_url):
    """A longer chain (several of the audit's batches of blocks, many model records) still
    verifies whole, and a row changed near its head is still found."""
    store = LedgerStore(ledger_url)
    try:
        ledger, proposer = Ledger(store), Identity.generate()
        senders = build_chain(ledger, proposer, blocks=300, txs_per_block=3, senders=3)
        ledger.propose(_job_block(proposer, senders), proposer)
        report = verify_chain(store, genesis_hash=store.block_hash(0))
        assert report.ok and report.blocks == 303 and report.transactions == 1 + 6 + 900 + 4, report
        last = store.transactions(kind=TxKind.MODEL_UPDATE)[-1][1].hash
        _tamper(store, update(model_records).where(model_records.c.tx_hash == last).values(samples=10**6))
        _assert_tables_differ(store, f"table model_records: row tx_hash={last}: samples is 1000000")
    finally:
        store.close()


# --- the genesis pin -----------------------------------------------------------------------------
def test_the_genesis_block_is_checked_against_the_pin(chain):
    store = chain.store
    genesis = store.block_hash(0)
    assert verify_chain(store, genesis_hash=genesis).ok
    assert verify_chain(store, genesis_hash="").ok  # no pin (the entry node's own chain): not checked
    report = verify_chain(store, genesis_hash="ab" * 32)
    assert not report.ok and report.bad_height == 0 and "another network" in report.reason
    assert f"genesis block {genesis[:16]}… is not the pinned {'ab' * 8}…" in str(report), report


def test_the_pinned_genesis_of_a_home(tmp_path):
    assert pinned_genesis(tmp_path) == ""
    NetworkPin("e" * 32, "ab" * 32, "cd" * 32, "SN").save(tmp_path)
    assert pinned_genesis(tmp_path) == "ab" * 32


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.audit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_offline_audit_checks_the_pin_and_the_tables(chain, tmp_path):
    """``python -m node.audit``: --genesis HASH, or --home HOME for the pin in its tls/network.json."""
    store = chain.store
    url, genesis = store.engine.url.render_as_string(hide_password=False), store.block_hash(0)
    home = tmp_path / "home"
    NetworkPin("e" * 32, genesis, "cd" * 32, "SN").save(home)
    ok = _audit(url, "--home", str(home))
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 6 blocks"), ok.stdout + ok.stderr
    wrong = _audit(url, "--genesis", "ab" * 32)
    assert wrong.returncode == 1 and "another network" in wrong.stdout, wrong.stdout + wrong.stderr
    _tamper(store, update(enrolments).where(enrolments.c.revoked_height.is_not(None)).values(revoked_height=None))
    tampered = _audit(url, "--home", str(home))
    assert tampered.returncode == 1 and "table enrolments" in tampered.stdout, tampered.stdout + tampered.stderr


def test_the_offline_audit_of_a_home_defaults_to_its_ledger(tmp_path):
    """``--home`` alone: ``HOME/ledger.db``, and a note when the home pins no genesis block."""
    store = LedgerStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        build_chain(Ledger(store), Identity.generate(), blocks=2)
    finally:
        store.close()
    unpinned = _audit("--home", str(tmp_path))
    assert unpinned.returncode == 0 and "pins no genesis block" in unpinned.stderr, unpinned.stdout + unpinned.stderr
    NetworkPin("e" * 32, "ab" * 32, "cd" * 32, "SN").save(tmp_path)
    pinned = _audit("--home", str(tmp_path))
    assert pinned.returncode == 1 and "another network" in pinned.stdout, pinned.stdout + pinned.stderr
    assert _audit().returncode == 2
