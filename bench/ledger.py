"""Ledger throughput and audit speed on SQLite and MariaDB, printed as one table.

Throughput: blocks of 100 signed MODEL_UPDATE transactions, committed (a) straight into the
store and (b) through ``Ledger.add_block``, which first validates the block (link, Merkle root,
every signature). Signing happens beforehand: that is the senders' work, not the ledger's.
Audit: ``verify_chain`` over a 10,000-block chain, with and without the Ed25519 checks.

    python bench/ledger.py                       # SQLite and the MariaDB at 127.0.0.1:3306
    python bench/ledger.py --mysql ''            # SQLite only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from node.chain.audit import verify_chain  # noqa: E402
from node.chain.rules import Block, Transaction, TxKind, fixed, genesis_block  # noqa: E402
from node.chain.identity import Identity  # noqa: E402
from node.chain.ledger import Ledger  # noqa: E402
from sql.store import LedgerStore  # noqa: E402


def _join(proposer: Identity, identity: Identity) -> list[Transaction]:
    """The entry node's ENROLL of an edge node, then its REGISTER: how a node gets on the chain."""
    key = identity.public_key.hex()
    return [Transaction.create(TxKind.ENROLL, {"node": identity.node_id, "public_key": key, "role": "EN",
                                               "token": "bench", "certificate": "ab" * 32}, proposer),
            Transaction.create(TxKind.REGISTER, {"public_key": key, "role": "EN", "address": "10.0.0.1:9000"}, identity)]


def _updates(senders: list[Identity], round_: int, count: int) -> list[Transaction]:
    return [Transaction.create(TxKind.MODEL_UPDATE, {
        "job_id": "bench", "round": round_, "hash": f"{round_:032x}{i:032x}", "samples": 375, "size": 2_330_000,
        "metrics": {"loss": fixed(0.1234), "acc": fixed(0.9876)}}, senders[i % len(senders)]) for i in range(count)]


def build_blocks(proposer: Identity, senders: list[Identity], blocks: int, txs: int) -> list[Block]:
    """Genesis, a block enrolling and registering the senders, then ``blocks`` signed blocks of
    ``txs`` updates."""
    chain = [genesis_block(proposer, "127.0.0.1:8080")]
    chain.append(Block.create(1, chain[-1].hash, [tx for s in senders for tx in _join(proposer, s)], proposer))
    for b in range(blocks):
        chain.append(Block.create(len(chain), chain[-1].hash, _updates(senders, b, txs), proposer))
    return chain


def timed_commit(url: str, chain: list[Block], validate: bool) -> float:
    """Transactions per second committing the update blocks of ``chain`` (after the first two)."""
    store = LedgerStore(url)
    ledger = Ledger(store)
    for block in chain[:2]:
        ledger.add_block(block)
    started = time.perf_counter()
    for block in chain[2:]:
        ledger.add_block(block) if validate else store.append(block)
    seconds = time.perf_counter() - started
    store.close()
    return sum(len(b.transactions) for b in chain[2:]) / seconds


def timed_verify(url: str, chain: list[Block]) -> tuple[float, float]:
    store = LedgerStore(url)
    for block in chain:
        store.append(block)
    started = time.perf_counter()
    report = verify_chain(store)
    with_signatures = time.perf_counter() - started
    assert report.ok, report
    started = time.perf_counter()
    assert verify_chain(store, signatures=False).ok
    without = time.perf_counter() - started
    store.close()
    return with_signatures, without


class Databases:
    """Fresh, empty databases on one backend; MariaDB ones are dropped afterwards."""

    def __init__(self, backend: str, mysql: str, tmp: Path) -> None:
        self.backend, self.mysql, self.tmp, self.made = backend, mysql, tmp, []

    def new(self) -> str:
        name = f"fedledger_bench_{uuid.uuid4().hex[:10]}"
        self.made.append(name)
        return f"sqlite:///{self.tmp / name}.db" if self.backend == "sqlite" else f"{self.mysql}/{name}"

    def drop(self) -> None:
        if self.backend == "mariadb":
            engine = create_engine(self.mysql)
            with engine.begin() as conn:
                for name in self.made:
                    conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306", help="MariaDB server URL ('' to skip)")
    p.add_argument("--blocks", type=int, default=100, help="blocks of the throughput test")
    p.add_argument("--txs", type=int, default=100, help="transactions per block in the throughput test")
    p.add_argument("--verify-blocks", type=int, default=10_000)
    p.add_argument("--verify-txs", default="1,10", help="transactions per block of the audited chains")
    args = p.parse_args()

    console = Console()
    proposer, senders = Identity.generate(), [Identity.generate() for _ in range(20)]
    console.print(f"signing {args.blocks} blocks of {args.txs} transactions …")
    throughput_chain = build_blocks(proposer, senders, args.blocks, args.txs)
    audit_sizes = [int(x) for x in args.verify_txs.split(",") if x]
    audit_chains = {}
    for n in audit_sizes:
        console.print(f"signing {args.verify_blocks} blocks of {n} transaction(s) …")
        audit_chains[n] = build_blocks(proposer, senders, args.verify_blocks - 2, n)

    backends = ["sqlite"] + (["mariadb"] if args.mysql else [])
    table = Table(title=f"Ledger: throughput ({args.txs} tx/block) and verify ({args.verify_blocks:,} blocks)")
    table.add_column("backend")
    table.add_column("tx/s stored", justify="right")
    table.add_column("tx/s validated + stored", justify="right")
    for n in audit_sizes:
        table.add_column(f"verify, {n} tx/block (s)", justify="right")
        table.add_column("… no signatures (s)", justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            dbs = Databases(backend, args.mysql, Path(tmp))
            try:
                console.print(f"{backend}: committing …")
                row = [backend, f"{timed_commit(dbs.new(), throughput_chain, False):,.0f}",
                       f"{timed_commit(dbs.new(), throughput_chain, True):,.0f}"]
                for n, chain in audit_chains.items():
                    console.print(f"{backend}: verifying {len(chain):,} blocks of {n} tx …")
                    with_sig, without = timed_verify(dbs.new(), chain)
                    row += [f"{with_sig:.2f}", f"{without:.2f}"]
                table.add_row(*row)
            finally:
                dbs.drop()
    console.print(table)
    console.print(f"{os.cpu_count()} CPU cores; verify checks signatures on {os.cpu_count()} threads")


if __name__ == "__main__":
    main()
