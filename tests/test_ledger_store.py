"""The ledger on SQLite and MariaDB: append, read back, idempotence, conflicts, tampering,
concurrent appenders and a database connection lost mid-append."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from dataclasses import replace

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from chain_helpers import admit, build_chain, model_update, register
from node.chain.audit import verify_chain
from node.chain.rules import Block, InvalidBlock, TxKind
from node.chain.identity import Identity
from node.chain.ledger import Ledger
from node.chain.store import BlockConflict, LedgerUnavailable
from sql.store import LedgerStore


@pytest.fixture
def store(ledger_url):
    s = LedgerStore(ledger_url)
    yield s
    s.close()


def test_append_and_read_back_1000_blocks(store):
    ledger, proposer = Ledger(store), Identity.generate()
    senders = build_chain(ledger, proposer, blocks=1000, txs_per_block=2)
    head = store.head()
    assert head.height == 1001 and store.count_blocks() == 1002
    block = store.block(500)
    assert block.height == 500 and store.block_by_hash(block.hash) == block
    assert [b.height for b in store.blocks_from(995, limit=100)] == list(range(995, 1002))
    updates = store.transactions(kind=TxKind.MODEL_UPDATE, round=10)
    assert len(updates) == 2 and all(h == 12 for h, _ in updates)
    record = store.model_record(updates[0][1].payload["hash"])
    assert record.round == 10 and record.samples == 100 and record.metrics["acc"] == "0.900000"
    assert {n.node_id for n in store.nodes(role="EN")} == {s.node_id for s in senders}
    report = verify_chain(store)
    assert report.ok and report.head == head and report.transactions == 1 + 2 * 2 + 2000  # genesis, 2 × (ENROLL, REGISTER), updates


def test_reappending_a_block_is_a_no_op(store):
    ledger, proposer = Ledger(store), Identity.generate()
    build_chain(ledger, proposer, blocks=3)
    block = store.block(3)
    assert ledger.add_block(block) is False
    assert store.append(block) is False
    assert store.count_blocks() == 5 and len(store.transactions()) == 1 + 2 * 2 + 9


def test_a_different_block_at_a_taken_height_is_refused(store):
    ledger, proposer = Ledger(store), Identity.generate()
    senders = build_chain(ledger, proposer, blocks=3)
    original = store.block(4)
    rival = Block.create(4, original.prev_hash, [model_update(senders[0], 99, 0)], proposer)
    with pytest.raises(BlockConflict, match="height 4 already holds block"):
        ledger.add_block(rival)
    with pytest.raises(BlockConflict, match="height 4 already holds block"):
        store.append(rival)
    assert store.block(4) == original and verify_chain(store).ok


def test_forged_signature_is_refused_and_nothing_is_written(store):
    ledger, proposer = Ledger(store), Identity.generate()
    senders = build_chain(ledger, proposer, blocks=2)
    head = store.head()
    genuine = model_update(senders[0], 7, 0)
    forged = replace(genuine, signature=Identity.generate().sign(bytes.fromhex(genuine.hash)))
    with pytest.raises(InvalidBlock, match="bad signature"):
        ledger.propose([forged], proposer)
    impostor = Identity.generate()  # an unauthorised proposer
    with pytest.raises(InvalidBlock, match="authorised proposer"):
        ledger.add_block(Block.create(head.height + 1, head.hash, [genuine], impostor))
    assert store.head() == head and not store.existing_transactions([genuine.hash])


# --- tampering, one column kind at a time ---------------------------------------------------------
TAMPER = {
    "payload": ("UPDATE transactions SET payload = REPLACE(payload, '\"samples\":101', '\"samples\":9999') "
                "WHERE block_height = 7 AND position = 1", "does not match its contents"),
    "tx hash": ("UPDATE transactions SET hash = '{fake}' WHERE block_height = 7 AND position = 0",
                "does not match its contents"),
    "tx sender": ("UPDATE transactions SET sender = '{fake_id}' WHERE block_height = 7 AND position = 0",
                  "does not match its contents"),
    "tx timestamp": ("UPDATE transactions SET timestamp = timestamp + 1 WHERE block_height = 7 AND position = 2",
                     "does not match its contents"),
    "tx signature": ("UPDATE transactions SET signature = '{fake_sig}' WHERE block_height = 7 AND position = 0",
                     "bad signature"),
    "block hash": ("UPDATE blocks SET hash = '{fake}' WHERE height = 7", "stored block hash"),
    "prev_hash": ("UPDATE blocks SET prev_hash = '{fake}' WHERE height = 7", "broken link"),
    "merkle_root": ("UPDATE blocks SET merkle_root = '{fake}' WHERE height = 7", "Merkle root does not match"),
    "block timestamp": ("UPDATE blocks SET timestamp = timestamp + 1 WHERE height = 7", "stored block hash"),
    "block signature": ("UPDATE blocks SET signature = '{fake_sig}' WHERE height = 7", "bad proposer signature"),
    "deleted transaction": ("DELETE FROM transactions WHERE block_height = 7 AND position = 1",
                            "Merkle root does not match"),
    "deleted block": ("DELETE FROM transactions WHERE block_height = 7; DELETE FROM blocks WHERE height = 7",
                      "block 7 is missing"),
}


def _tamper(url: str, statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "mysql":
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
        for statement in statements.split(";"):
            assert conn.exec_driver_sql(statement).rowcount >= 1, statement
    engine.dispose()


@pytest.mark.parametrize("what", list(TAMPER))
def test_verify_names_the_tampered_height(store, ledger_url, what):
    ledger, proposer = Ledger(store), Identity.generate()
    build_chain(ledger, proposer, blocks=12, txs_per_block=3)
    assert verify_chain(store).ok
    statement, reason = TAMPER[what]
    fake_sig = Identity.generate().sign(b"forged").hex()
    _tamper(ledger_url, statement.format(fake="ab" * 32, fake_id="cd" * 16, fake_sig=fake_sig))
    report = verify_chain(store)
    assert not report.ok and report.bad_height == 7, str(report)
    assert reason in report.reason
    assert str(report).startswith("BAD at height 7: ")


def test_rehashed_payload_is_caught_by_the_merkle_root(store, ledger_url):
    """An attacker who fixes up the transaction hash too still breaks the block's Merkle root."""
    ledger, proposer = Ledger(store), Identity.generate()
    build_chain(ledger, proposer, blocks=10)
    _, tx = store.transactions(kind=TxKind.MODEL_UPDATE, round=5)[0]
    altered = replace(tx, payload={**tx.payload, "samples": 12345})
    _tamper(ledger_url, f"UPDATE transactions SET hash = '{altered.hash}', "
                        f"payload = REPLACE(payload, '\"samples\":100', '\"samples\":12345') WHERE hash = '{tx.hash}'")
    report = verify_chain(store)
    assert report.bad_height == 7 and "Merkle root" in report.reason


# --- concurrency and failures --------------------------------------------------------------------
def _propose_many(url: str, home: str, count: int, worker: int) -> None:
    """Propose ``count`` blocks, re-reading the head whenever another appender got there first."""
    ledger, proposer = Ledger(LedgerStore(url)), Identity.load_or_create(home)
    sender = Identity.load_or_create(home + "-sender")
    made = 0
    while made < count:
        try:
            ledger.propose([model_update(sender, 1000 + made, worker)], proposer)  # distinct per worker
            made += 1
        except (BlockConflict, InvalidBlock):
            time.sleep(0.001)
    ledger.store.close()


def _seed_chain(url: str, home) -> None:
    ledger, proposer = Ledger(LedgerStore(url)), Identity.load_or_create(home)
    ledger.create_genesis(proposer, "127.0.0.1:8080")
    ledger.propose(admit(proposer, Identity.load_or_create(f"{home}-sender")), proposer)


def _check_single_chain(url: str, expected_blocks: int) -> None:
    store = LedgerStore(url)
    heights = [s.block.height for s in store.iter_stored_blocks()]
    assert heights == list(range(expected_blocks))
    assert verify_chain(store).ok
    store.close()


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_concurrent_appenders_never_fork_the_chain(ledger_url, tmp_path, mode):
    home = str(tmp_path / "proposer")
    _seed_chain(ledger_url, home)
    # every appender signs updates with the same registered sender, each with its own content
    workers = [(ledger_url, home, 25, 0), (ledger_url, home, 25, 1)]
    if mode == "threads":
        runners = [threading.Thread(target=_propose_many, args=w) for w in workers]
    else:
        runners = [multiprocessing.get_context("fork").Process(target=_propose_many, args=w) for w in workers]
    for r in runners:
        r.start()
    for r in runners:
        r.join(timeout=120)
    if mode == "processes":
        assert all(r.exitcode == 0 for r in runners)
    _check_single_chain(ledger_url, 2 + 50)


def test_connection_lost_mid_append_loses_nothing(mysql_url, mysql_server):
    """MariaDB kills the appending connection just before COMMIT; the retry stores the whole block
    once. (SQLite has no server connection to kill: the transient-error test covers it.)"""
    store = LedgerStore(mysql_url)
    ledger, proposer = Ledger(store), Identity.generate()
    senders = build_chain(ledger, proposer, blocks=2)
    head = store.head()
    block = Block.create(head.height + 1, head.hash, [model_update(senders[0], 50, i) for i in range(5)], proposer)
    killer = create_engine(mysql_server)
    kills = []

    def kill_once(conn):
        if not kills:
            connection_id = conn.execute(text("SELECT CONNECTION_ID()")).scalar()
            with killer.begin() as other:
                other.execute(text(f"KILL {connection_id}"))
            kills.append(connection_id)

    assert store.append(block, before_commit=kill_once) is True
    killer.dispose()
    assert kills, "the connection was never killed"
    assert store.head().height == head.height + 1
    assert len(store.transactions(kind=TxKind.MODEL_UPDATE, round=50)) == 5
    assert verify_chain(store).ok
    store.close()


def test_transient_error_mid_append_rolls_back_then_retries(store):
    ledger, proposer = Ledger(store), Identity.generate()
    senders = build_chain(ledger, proposer, blocks=2)
    head = store.head()
    block = Block.create(head.height + 1, head.hash, [model_update(senders[0], 60, i) for i in range(4)], proposer)
    failures = []

    def fail_once(conn):
        # the block and its transactions are written but not committed: this must roll all of it back
        if not failures:
            failures.append(1)
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))

    assert store.append(block, before_commit=fail_once) is True
    assert failures and store.head().height == head.height + 1
    assert len(store.transactions(kind=TxKind.MODEL_UPDATE, round=60)) == 4 and verify_chain(store).ok


def test_dead_database_fails_after_bounded_retries_with_a_clear_error():
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable, match="did not answer for 1 s.*Check that the database server is running"):
        LedgerStore("mysql+pymysql://root@127.0.0.1:1/fedledger_nowhere", retry_seconds=1)
    assert time.monotonic() - started < 10


def test_schema_sql_matches_the_tables():
    from sql.schema import SCHEMA_FILE, mysql_ddl

    assert SCHEMA_FILE.read_text(encoding="utf-8") == mysql_ddl(), "run `python -m sql.schema` to regenerate"


def test_ledger_url_defaults_and_per_node_databases(tmp_path):
    from sql.store import ledger_url

    assert ledger_url(None, tmp_path, "sn1") == f"sqlite:///{tmp_path.resolve() / 'ledger.db'}"
    assert ledger_url("mysql+pymysql://root@db:3306", tmp_path, "sn-1").endswith("/fedledger_sn_1")
    assert ledger_url("mysql+pymysql://root@db:3306/mine", tmp_path, "x").endswith("/mine")


def test_verify_command_line(tmp_path, capsys):
    from node.audit import main

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = LedgerStore(url)
    build_chain(Ledger(store), Identity.generate(), blocks=3)
    store.close()
    assert main([url]) == 0
    assert capsys.readouterr().out.startswith("OK: 5 blocks, 14 transactions, head 4 ")
    _tamper(url, "UPDATE blocks SET prev_hash = '" + "ef" * 32 + "' WHERE height = 3")
    assert main([url]) == 1
    assert capsys.readouterr().out.startswith("BAD at height 3: broken link")
    with pytest.raises(SystemExit):
        main([f"sqlite:///{tmp_path / 'missing.db'}"])
    assert "no ledger database" in capsys.readouterr().err
