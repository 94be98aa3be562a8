"""``verify`` re-derives the tables built from the chain (nodes, enrolments, jobs, rounds, model
records) and names any row an attacker with database access altered, added or deleted without
touching the blocks; and it checks the genesis block against the one pinned at enrolment. SQLite
and MariaDB."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import delete, insert, update

from chain_helpers import build_chain
from node.chain.audit import verify_chain
from node.chain.identity import Identity
from node.chain.ledger import Ledger
from node.chain.rules import Transaction, TxKind
from node.dev.launcher import ROOT
from sql.store import LedgerStore
from sql.tables import enrolments, jobs, model_records, nodes, rounds


@pytest.fixture
def chain(ledger_url):
    """A chain with every derived table filled: enrolled and registered nodes, a revoked one, a
    job, its rounds and model records."""
    store = LedgerStore(ledger_url)
    ledger, proposer = Ledger(store), Identity.generate()
    senders = build_chain(ledger, proposer, blocks=3, txs_per_block=2)
    ledger.propose([Transaction.create(TxKind.JOB, {"job_id": "job1", "spec": {"dataset": "digits"},
                                                    "participants": [s.node_id for s in senders]}, proposer),
                    Transaction.create(TxKind.ROUND, {"job_id": "job1", "round": 1, "global_hash": "aa" * 32}, proposer),
                    Transaction.create(TxKind.GLOBAL_MODEL, {"job_id": "job1", "round": 1, "hash": "bb" * 32,
                                                             "samples": 200}, proposer),
                    Transaction.create(TxKind.REVOKE, {"node": senders[1].node_id, "reason": "left"}, proposer)],
                   proposer)
    yield store, senders
    store.close()


def _tamper(store: LedgerStore, statement) -> None:
    with store.engine.begin() as conn:
        assert conn.execute(statement).rowcount == 1


def test_an_untouched_chain_verifies_with_its_tables(chain):
    store, _ = chain
    assert store.derived_differences() == []
    assert verify_chain(store).ok


@pytest.mark.parametrize("table, statement, words", [
    ("nodes", lambda s: update(nodes).where(nodes.c.node_id == s[0].node_id).values(address="10.6.6.6:1"),
     "address is '10.6.6.6:1'"),
    ("enrolments", lambda s: update(enrolments).where(enrolments.c.node_id == s[1].node_id).values(
        revoked_height=None, reason=None), "revoked_height is None, the chain says"),
    ("enrolments", lambda s: delete(enrolments).where(enrolments.c.node_id == s[0].node_id),
     "follows from the chain but is missing"),
    ("jobs", lambda s: update(jobs).where(jobs.c.job_id == "job1").values(spec='{"dataset":"cifar10"}'),
     "spec is"),
    ("rounds", lambda s: update(rounds).where(rounds.c.job_id == "job1").values(global_hash="cc" * 32),
     "global_hash is 'cccc"),
    ("model_records", lambda s: update(model_records).where(model_records.c.kind == "GLOBAL_MODEL").values(
        hash="dd" * 32), "hash is 'dddd"),
    ("nodes", lambda s: insert(nodes).values(node_id="f" * 32, public_key="ee" * 32, role="SN", address="x:1",
                                             registered_height=1, updated_height=1), "is not on the chain"),
])
def test_an_altered_derived_row_fails_verify_naming_the_table(chain, table, statement, words):
    store, senders = chain
    _tamper(store, statement(senders))
    report = verify_chain(store)
    assert not report.ok and report.bad_height is None
    assert f"table {table}" in report.reason and words in report.reason, report.reason
    assert str(report).startswith("BAD: the tables built from the chain differ from it")


def test_the_genesis_block_is_checked_against_the_pin(chain, tmp_path):
    store, _ = chain
    genesis = store.block_hash(0)
    assert verify_chain(store, genesis_hash=genesis).ok
    report = verify_chain(store, genesis_hash="ab" * 32)
    assert not report.ok and report.bad_height == 0 and "another network" in report.reason
    if store.engine.url.get_backend_name() == "sqlite":  # the offline CLI, with the pin given as a flag
        cli = subprocess.run([sys.executable, "-m", "node.audit", str(store.engine.url), "--genesis", "ab" * 32],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 1 and "another network" in cli.stdout, cli.stdout + cli.stderr
