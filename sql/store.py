"""The ledger store: one node's copy of the chain in SQLite (embedded) or MySQL/MariaDB.

The store knows tables and transactions, not chain rules: it writes a block and its
transactions in one database transaction, and lets the unique keys decide races (the same
block twice is a no-op, another block at a taken height is a :class:`BlockConflict`). Chain
rules live in ``node.chain``, which this module imports and never the other way round.

A dead or restarting database is retried with exponential back-off for ``retry_seconds``, then
reported as :class:`LedgerUnavailable`; because a block is written in one transaction, a retry
after a lost connection either finds the block stored whole or stores it whole.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.pool import NullPool, StaticPool

from node.chain.rules import Block, Enrolment, Head, Registration, Transaction, TxKind, canonical_bytes
from node.chain.store import BlockConflict, LedgerUnavailable, StoreError, StoredBlock  # noqa: F401 (re-exported)
from sql.tables import blocks, enrolments, jobs, metadata, model_records, nodes, rounds, transactions

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_KINDS = (TxKind.MODEL_UPDATE, TxKind.AGGREGATE, TxKind.GLOBAL_MODEL, TxKind.SAVE)
_DB_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    public_key: str
    role: str
    address: str
    registered_height: int
    updated_height: int


@dataclass(frozen=True)
class BlockSummary:
    """A block's header as stored (its stored hash: ``verify`` says whether it is the right one)."""

    height: int
    hash: str
    timestamp: int
    proposer: str
    tx_count: int


@dataclass(frozen=True)
class ModelRecord:
    tx_hash: str
    job_id: str
    round: int | None
    node_id: str
    kind: str
    hash: str
    samples: int | None
    size: int | None
    metrics: dict[str, Any]
    height: int


def ledger_url(db: str | None, home: str | Path, node_name: str) -> str:
    """The database a node uses: ``<home>/ledger.db`` (SQLite) when ``db`` is not given; a MySQL
    server URL without a database gets its own ``fedledger_<node_name>`` database."""
    if not db:
        return f"sqlite:///{Path(home).resolve() / 'ledger.db'}"
    url = make_url(db)
    if url.get_backend_name() in ("mysql", "mariadb") and not url.database:
        url = url.set(database="fedledger_" + re.sub(r"[^A-Za-z0-9_]", "_", node_name))
    return url.render_as_string(hide_password=False)


def _create_database_if_missing(url: URL) -> None:
    name = url.database or ""
    if not _DB_NAME.fullmatch(name):
        raise StoreError(f"database name {name!r} must be 1-64 letters, digits or underscores")
    server = create_engine(url._replace(database=None), poolclass=NullPool)  # .set ignores None
    try:
        with server.begin() as conn:
            conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"))
    finally:
        server.dispose()


# MySQL/MariaDB errors worth waiting out: server gone, restarting, too busy, lock timeouts
_TRANSIENT_MYSQL_CODES = {1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055, 4031}


def _transient(exc: DBAPIError) -> bool:
    """A lost connection, a restarting server or a busy database: retrying may succeed. Wrong
    credentials, an unknown database or bad SQL will not get better by waiting."""
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in _TRANSIENT_MYSQL_CODES
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a pushed block must survive a power cut
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class LedgerStore:
    """One node's chain database. Implements ``node.chain.rules.ChainView`` for block validation."""

    def __init__(self, url: str, *, retry_seconds: float = 10.0, create: bool = True) -> None:
        self.url = make_url(url)
        self.retry_seconds = retry_seconds
        self.backend = self.url.get_backend_name()
        if self.backend == "sqlite":
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        elif self.backend in ("mysql", "mariadb"):
            if create:
                self._retry(lambda: _create_database_if_missing(self.url), "create the database")
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_recycle=3600)
        else:
            raise StoreError(f"unsupported ledger database {self.backend!r}; use sqlite:///… or mysql+pymysql://…")
        self._proposer: str | None = None
        if create:
            self._retry(lambda: metadata.create_all(self.engine), "create the ledger tables")

    def __repr__(self) -> str:
        return f"LedgerStore({self.describe()})"

    def describe(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # --- retries ---------------------------------------------------------------------------------
    def _retry(self, work: Callable[[], T], what: str) -> T:
        """Run ``work``; on a lost connection or a busy database, back off and try again until
        ``retry_seconds`` have passed. Integrity errors are answers, not failures: never retried."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                return work()
            except DBAPIError as exc:
                if isinstance(exc, IntegrityError):
                    raise
                if not _transient(exc):
                    raise StoreError(f"ledger database {self.describe()} failed to {what}: {exc.orig}") from exc
                if time.monotonic() + delay > deadline:
                    raise LedgerUnavailable(
                        f"ledger database {self.describe()} did not answer for {self.retry_seconds:.0f} s "
                        f"while trying to {what}: {exc.orig}. Check that the database server is running "
                        f"and reachable, then retry."
                    ) from exc
                log.warning("ledger database: %s failed (%s); retrying in %.2f s", what, exc.orig, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _read(self, work: Callable[[Connection], T], what: str) -> T:
        def attempt() -> T:
            with self.engine.connect() as conn:
                return work(conn)

        return self._retry(attempt, what)

    # --- writes ----------------------------------------------------------------------------------
    def append(self, block: Block, *, before_commit: Callable[[Connection], None] | None = None) -> bool:
        """Store ``block`` and its transactions atomically. Returns True when written, False when
        this very block was already stored; raises :class:`BlockConflict` when another block holds
        the height or a transaction is already on the chain. The caller validates first.

        ``before_commit`` runs inside the database transaction just before it commits (tests use
        it to break the connection mid-append)."""

        def attempt() -> bool:
            try:
                with self.engine.begin() as conn:
                    _write_block(conn, block)
                    if before_commit is not None:
                        before_commit(conn)
                return True
            except IntegrityError as exc:
                stored = self.block_hash(block.height)
                if stored == block.hash:
                    return False
                if stored is not None:
                    raise BlockConflict(
                        f"height {block.height} already holds block {stored[:16]}…, not {block.hash[:16]}…"
                    ) from None
                raise BlockConflict(f"block {block.height} was refused by the database: {exc.orig}") from None

        return self._retry(attempt, f"append block {block.height}")

    # --- ChainView -------------------------------------------------------------------------------
    def head(self) -> Head | None:
        def work(conn: Connection) -> Head | None:
            row = conn.execute(
                select(blocks.c.height, blocks.c.hash).order_by(blocks.c.height.desc()).limit(1)
            ).first()
            return Head(row.height, row.hash) if row else None

        return self._read(work, "read the chain head")

    def block_hash(self, height: int) -> str | None:
        return self._read(lambda c: c.execute(
            select(blocks.c.hash).where(blocks.c.height == height)).scalar(), f"read the hash of block {height}")

    def proposer(self) -> str | None:
        """The genesis block's proposer: the chain's authorised proposer (it never changes)."""
        if self._proposer is None:
            self._proposer = self._read(
                lambda c: c.execute(select(blocks.c.proposer).where(blocks.c.height == 0)).scalar(),
                "read the proposer")
        return self._proposer

    def registrations(self, node_ids: Iterable[str]) -> dict[str, Registration]:
        """Registered key and role of each of ``node_ids`` the chain knows (one query)."""
        ids = sorted(set(node_ids))
        if not ids:
            return {}
        rows = self._read(lambda c: c.execute(
            select(nodes.c.node_id, nodes.c.public_key, nodes.c.role).where(nodes.c.node_id.in_(ids))).all(),
            "read node registrations")
        return {r.node_id: Registration(bytes.fromhex(r.public_key), r.role) for r in rows}

    def enrolments(self, node_ids: Iterable[str]) -> dict[str, Enrolment]:
        """Enrolled key, role and revocation of each of ``node_ids`` the chain knows (one query)."""
        ids = sorted(set(node_ids))
        if not ids:
            return {}
        rows = self._read(lambda c: c.execute(
            select(enrolments.c.node_id, enrolments.c.public_key, enrolments.c.role, enrolments.c.revoked_height)
            .where(enrolments.c.node_id.in_(ids))).all(), "read enrolments")
        return {r.node_id: Enrolment(bytes.fromhex(r.public_key), r.role, r.revoked_height is not None) for r in rows}

    def enrolment_records(self) -> list[dict[str, Any]]:
        """Every enrolled node (id, role, token, heights, revocation reason), by enrolment height."""
        return self._read(lambda c: [dict(r._mapping) for r in c.execute(
            select(enrolments).order_by(enrolments.c.enrolled_height))], "list enrolments")

    def revoked(self) -> set[str]:
        return set(self._read(lambda c: c.execute(
            select(enrolments.c.node_id).where(enrolments.c.revoked_height.is_not(None))).scalars().all(),
            "read revocations"))

    def public_key(self, node_id: str) -> bytes | None:
        found = self.registrations([node_id]).get(node_id)
        return None if found is None else found.public_key

    def existing_transactions(self, tx_hashes: Iterable[str]) -> set[str]:
        hashes = sorted(set(tx_hashes))
        if not hashes:
            return set()
        return set(self._read(lambda c: c.execute(
            select(transactions.c.hash).where(transactions.c.hash.in_(hashes))).scalars().all(),
            "look up transactions"))

    def existing_jobs(self, job_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(job_ids))
        if not ids:
            return set()
        return set(self._read(lambda c: c.execute(select(jobs.c.job_id).where(jobs.c.job_id.in_(ids))).scalars().all(),
                              "look up jobs"))

    # --- reads -----------------------------------------------------------------------------------
    def block(self, height: int) -> Block | None:
        found = self.blocks_from(height, limit=1)
        return found[0] if found and found[0].height == height else None

    def block_by_hash(self, block_hash: str) -> Block | None:
        height = self._read(lambda c: c.execute(
            select(blocks.c.height).where(blocks.c.hash == block_hash)).scalar(), "find a block by hash")
        return None if height is None else self.block(height)

    def blocks_from(self, height: int, limit: int = 100) -> list[Block]:
        """Up to ``limit`` consecutive stored blocks from ``height`` on (for catching up)."""
        return [s.block for s in self.stored_blocks_from(height, limit)]

    def stored_blocks_from(self, height: int, limit: int = 100) -> list[StoredBlock]:
        return self._read(lambda c: _load_blocks(c, height, limit), f"read blocks from {height}")

    def iter_stored_blocks(self, start: int = 0, batch: int = 500) -> Iterator[StoredBlock]:
        """Every stored block from ``start`` in height order, read ``batch`` at a time."""
        while True:
            chunk = self.stored_blocks_from(start, batch)
            yield from chunk
            if len(chunk) < batch:
                return
            start = chunk[-1].block.height + 1

    def derived_check(self) -> DerivedCheck:
        """The tables built from the chain (nodes, enrolments, jobs, rounds, model records) as
        stored now, ready to be compared with what the chain's blocks derive (``verify`` feeds
        it the blocks it walks; see :class:`DerivedCheck`)."""
        height, stored = self._read(lambda c: read_derived(c, self.backend), "read the tables built from the chain")
        return DerivedCheck(height, stored)

    def derived_differences(self, limit: int = 5) -> list[str]:
        """Where the derived tables differ from what the stored blocks derive, without checking
        the blocks themselves (``verify_chain`` does both)."""
        with self.derived_check() as check:
            for stored in self.iter_stored_blocks():
                check.add(stored.block)
            return check.differences(limit)

    def count_blocks(self) -> int:
        return self._read(lambda c: c.execute(select(func.count()).select_from(blocks)).scalar_one(), "count blocks")

    def transactions(
        self, kind: str | None = None, job_id: str | None = None, round: int | None = None
    ) -> list[tuple[int, Transaction]]:
        """(height, transaction) pairs in chain order, filtered by kind, job and round."""
        query = select(transactions).order_by(transactions.c.block_height, transactions.c.position)
        if kind is not None:
            query = query.where(transactions.c.kind == kind)
        rows = self._read(lambda c: c.execute(query).all(), "read transactions")
        out = [(r.block_height, _tx_from_row(r)) for r in rows]
        if job_id is not None:
            out = [(h, t) for h, t in out if t.payload.get("job_id") == job_id]
        if round is not None:
            out = [(h, t) for h, t in out if t.round == round]
        return out

    def latest_blocks(self, below: int | None = None, limit: int = 25) -> list[BlockSummary]:
        """Up to ``limit`` block headers, newest first, all below height ``below`` when given."""
        query = select(blocks.c.height, blocks.c.hash, blocks.c.timestamp, blocks.c.proposer, blocks.c.tx_count)
        if below is not None:
            query = query.where(blocks.c.height < below)
        query = query.order_by(blocks.c.height.desc()).limit(limit)
        return [BlockSummary(*r) for r in self._read(lambda c: c.execute(query).all(), "read block headers")]

    def transaction(self, tx_hash: str) -> tuple[int, int, Transaction] | None:
        """(block height, position, transaction) of the transaction with this hash, if on the chain."""
        row = self._read(lambda c: c.execute(select(transactions).where(transactions.c.hash == tx_hash)).first(),
                         "find a transaction")
        return None if row is None else (row.block_height, row.position, _tx_from_row(row))

    def transactions_by(self, sender: str, limit: int = 50) -> list[tuple[int, Transaction]]:
        """The last ``limit`` transactions ``sender`` signed, newest first."""
        query = (select(transactions).where(transactions.c.sender == sender)
                 .order_by(transactions.c.block_height.desc(), transactions.c.position.desc()).limit(limit))
        return [(r.block_height, _tx_from_row(r)) for r in self._read(lambda c: c.execute(query).all(),
                                                                         "read a node's transactions")]

    def find(self, text: str, limit: int = 20) -> list[tuple[str, str]]:
        """What ``text`` names, as (kind, key) pairs: a block by height ("block", height) or by
        hash, a transaction, a model (by its hash), a node (by id), a job (by id); hashes and ids
        may be given by a prefix of 6 or more hex digits."""
        text = text.strip()
        found: list[tuple[str, str]] = []
        if text.isascii() and text.isdigit() and int(text) < 2**63:
            found += [("block", text)] if self.block_hash(int(text)) is not None else []
        hexed = text.lower()
        if len(hexed) >= 6 and all(ch in "0123456789abcdef" for ch in hexed):
            pattern = hexed + "%"
            for kind, column in (("block", blocks.c.height), ("tx", transactions.c.hash),
                                 ("model", model_records.c.hash), ("node", nodes.c.node_id),
                                 ("node", enrolments.c.node_id)):
                matched_on = blocks.c.hash if kind == "block" else column
                query = select(column).where(matched_on.like(pattern)).distinct().limit(limit)
                keys = self._read(lambda c, q=query: c.execute(q).scalars().all(), "search the ledger")
                found += [(kind, str(key)) for key in keys if (kind, str(key)) not in found]
        pattern = text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"  # the text as typed
        job_query = select(jobs.c.job_id).where(jobs.c.job_id.like(pattern, escape="!")).limit(limit)
        found += [("job", j) for j in self._read(lambda c: c.execute(job_query).scalars().all(), "search jobs")]
        return found[:limit]

    def model_record(self, model_hash: str) -> ModelRecord | None:
        """The first chain record naming this model hash (an update, aggregate, global or save)."""
        found = self.model_records(model_hash=model_hash)
        return found[0] if found else None

    def model_records(
        self, job_id: str | None = None, round: int | None = None, kind: str | None = None,
        model_hash: str | None = None,
    ) -> list[ModelRecord]:
        query = select(model_records).order_by(model_records.c.height, model_records.c.tx_hash)
        for column, value in ((model_records.c.job_id, job_id), (model_records.c.round, round),
                              (model_records.c.kind, kind), (model_records.c.hash, model_hash)):
            if value is not None:
                query = query.where(column == value)
        rows = self._read(lambda c: c.execute(query).all(), "read model records")
        return [ModelRecord(**{**r._mapping, "metrics": json.loads(r.metrics)}) for r in rows]

    def nodes(self, role: str | None = None) -> list[NodeRecord]:
        query = select(nodes).order_by(nodes.c.registered_height, nodes.c.node_id)
        if role is not None:
            query = query.where(nodes.c.role == role)
        return [NodeRecord(**r._mapping) for r in self._read(lambda c: c.execute(query).all(), "read nodes")]

    def jobs(self) -> list[dict[str, Any]]:
        rows = self._read(lambda c: c.execute(select(jobs).order_by(jobs.c.height)).all(), "read jobs")
        return [{**r._mapping, "spec": json.loads(r.spec)} for r in rows]

    def rounds(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._read(lambda c: c.execute(
            select(rounds).where(rounds.c.job_id == job_id).order_by(rounds.c.round)).all(), "read rounds")
        return [dict(r._mapping) for r in rows]


# --- row mapping ---------------------------------------------------------------------------------
def _payload_text(tx: Transaction) -> str:
    return canonical_bytes(tx.payload).decode()


def _write_block(conn: Connection, block: Block) -> None:
    conn.execute(insert(blocks).values(
        height=block.height, hash=block.hash, prev_hash=block.prev_hash, merkle_root=block.merkle_root,
        timestamp=block.timestamp, proposer=block.proposer, signature=block.signature.hex(),
        tx_count=len(block.transactions)))
    if not block.transactions:
        return
    conn.execute(insert(transactions), [
        {"hash": tx.hash, "block_height": block.height, "position": i, "kind": tx.kind, "sender": tx.sender,
         "payload": _payload_text(tx), "timestamp": tx.timestamp, "signature": tx.signature.hex()}
        for i, tx in enumerate(block.transactions)])
    _derive(conn, [block])


def _derive(conn: Connection, chain: Sequence[Block]) -> None:
    """The derived tables' rows for consecutive blocks' transactions: what storing a block writes
    (one block), and what ``verify`` writes again into a scratch database to compare (a batch)."""
    records = [_model_record_row(block.height, tx) for block in chain for tx in block.transactions
               if tx.kind in MODEL_KINDS and "hash" in tx.payload]  # an AGGREGATE of a median names no model
    if records:
        conn.execute(insert(model_records), records)
    for block in chain:
        for tx in block.transactions:
            _index(conn, block.height, tx)


DERIVED_TABLES = (nodes, enrolments, jobs, rounds, model_records)
DERIVE_BATCH = 500  # blocks derived per round trip into the scratch database
SNAPSHOT_TRIES = 20  # reads of the derived tables before giving up on a chain that never stops growing
SHOWN_VALUE = 40  # characters of a differing value shown in a reason (a job spec may be kilobytes)
Rows = dict[tuple[Any, ...], tuple[Any, ...]]  # a table's rows (all columns) by primary key


class DerivedCheck:
    """``verify``'s check of the derived tables: the rows the database holds, read at one chain
    height (:attr:`height`), against the same tables derived again from the chain's blocks by
    :func:`_derive`, the code that wrote them, into a scratch in-memory database.

    The stored rows are read *before* the walk, so a live node appending blocks meanwhile does
    not look tampered with: blocks above :attr:`height` are not derived. Memory: the stored rows
    (one tuple a row) and the scratch database; the blocks themselves are not kept. Use it as a
    context manager (it owns the scratch database)."""

    def __init__(self, height: int | None, stored: dict[str, Rows]) -> None:
        self.height = height
        self._stored = stored
        self._pending: list[Block] = []
        self._derived_to: int | None = None
        self._failure = ""
        self._scratch = create_engine("sqlite://", poolclass=StaticPool)
        metadata.create_all(self._scratch, tables=list(DERIVED_TABLES))
        self._conn = self._scratch.connect()  # one open transaction, never committed

    def __enter__(self) -> DerivedCheck:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()
        self._scratch.dispose()

    def add(self, block: Block) -> None:
        """Derive ``block``'s rows; blocks come in chain order, those above :attr:`height` are
        ignored (the stored rows were read before they were appended)."""
        if self.height is None or block.height > self.height:
            return
        self._pending.append(block)
        if len(self._pending) >= DERIVE_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending or self._failure:
            return
        try:
            _derive(self._conn, self._pending)
        except IntegrityError as exc:  # blocks the store itself could not have written
            self._failure = (f"blocks {self._pending[0].height}-{self._pending[-1].height} cannot be derived "
                             f"into the tables: {exc.orig}")
        self._derived_to = self._pending[-1].height
        self._pending.clear()

    def differences(self, limit: int = 5) -> list[str]:
        """Every row missing, extra or different (at most ``limit``, then how many more), once
        every block up to :attr:`height` was added. Consumes the stored rows: call it once."""
        self._flush()
        if self._failure:
            return [self._failure]
        if self._derived_to != self.height:
            return [f"the tables were read with the chain at height {self.height}, but its blocks end at "
                    f"{self._derived_to} (blocks removed meanwhile?)"]
        found: list[str] = []
        for table in DERIVED_TABLES:
            found += _table_differences(table, self._conn.execute(select(table)), self._stored.pop(table.name))
        return found[:limit] + ([f"and {len(found) - limit} more"] if len(found) > limit else [])


def read_derived(conn: Connection, backend: str) -> tuple[int | None, dict[str, Rows]]:
    """The derived tables' rows and the chain height they reflect, read consistently: in one
    read transaction (SQLite's WAL snapshot; InnoDB's repeatable read), and re-read while the
    head moved under a server that isolates less (a block and its rows are written together,
    so an unmoved head means rows of exactly that prefix)."""
    if backend == "sqlite":
        conn.exec_driver_sql("BEGIN")  # pysqlite opens no transaction for reads by itself
    for _ in range(SNAPSHOT_TRIES):
        height = _head_height(conn)
        stored = {table.name: _table_rows(conn, table) for table in DERIVED_TABLES}
        if _head_height(conn) == height:
            return height, stored
    raise StoreError(f"the chain kept growing while its tables were read ({SNAPSHOT_TRIES} tries); verify again")


def _head_height(conn: Connection) -> int | None:
    return conn.execute(select(func.max(blocks.c.height))).scalar()


def _primary_key(table: Any) -> list[int]:
    """Positions of the primary key's columns in ``select(table)``'s rows."""
    names = [c.name for c in table.columns]
    return [names.index(c.name) for c in table.primary_key.columns]


def _table_rows(conn: Connection, table: Any) -> Rows:
    key = _primary_key(table)
    return {tuple(r[i] for i in key): tuple(r) for r in conn.execute(select(table))}


def _table_differences(table: Any, expected: Iterable[Sequence[Any]], actual: Rows) -> list[str]:
    """Reasons naming the table, the row's key and the column, for each row the chain derives
    (``expected``, streamed) that the stored rows (``actual``, consumed) lack or hold otherwise,
    then for each stored row the chain does not derive."""
    key, columns = _primary_key(table), [c.name for c in table.columns]

    def row(pk: tuple[Any, ...]) -> str:
        return f"table {table.name}: row " + ", ".join(f"{columns[i]}={v}" for i, v in zip(key, pk))

    found = []
    for derived in expected:
        pk = tuple(derived[i] for i in key)
        stored = actual.pop(pk, None)
        if stored is None:
            found.append(f"{row(pk)} follows from the chain but is missing")
            continue
        found += [f"{row(pk)}: {column} is {_shown(value)}, the chain says {_shown(wanted)}"
                  for column, value, wanted in zip(columns, stored, derived) if value != wanted]
    return found + [f"{row(pk)} is not on the chain" for pk in sorted(actual)]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE else text[:SHOWN_VALUE] + "…"


def _model_record_row(height: int, tx: Transaction) -> dict[str, Any]:
    p = tx.payload
    return {"tx_hash": tx.hash, "job_id": p["job_id"], "round": tx.round, "node_id": tx.sender,
            "kind": tx.kind, "hash": p["hash"], "samples": p.get("samples"), "size": p.get("size"),
            "metrics": canonical_bytes(p.get("metrics", {})).decode(), "height": height}


def _index(conn: Connection, height: int, tx: Transaction) -> None:
    """Keep the derived tables (nodes, jobs, rounds) in step with one transaction."""
    p = tx.payload
    if tx.kind == TxKind.REGISTER:
        changed = conn.execute(update(nodes).where(nodes.c.node_id == tx.sender).values(
            role=p["role"], address=p["address"], updated_height=height)).rowcount
        if not changed:
            conn.execute(insert(nodes).values(
                node_id=tx.sender, public_key=p["public_key"], role=p["role"], address=p["address"],
                registered_height=height, updated_height=height))
    elif tx.kind == TxKind.ENROLL:
        values = {"public_key": p["public_key"], "role": p["role"], "token": p["token"],
                  "certificate": p["certificate"]}
        if not conn.execute(update(enrolments).where(enrolments.c.node_id == p["node"]).values(**values)).rowcount:
            conn.execute(insert(enrolments).values(node_id=p["node"], enrolled_height=height, **values))
    elif tx.kind == TxKind.REVOKE:
        conn.execute(update(enrolments).where(enrolments.c.node_id == p["node"]).values(
            revoked_height=height, reason=p["reason"]))
    elif tx.kind == TxKind.JOB:
        conn.execute(insert(jobs).values(job_id=p["job_id"], creator=tx.sender,
                                         spec=canonical_bytes(p["spec"]).decode(), tx_hash=tx.hash, height=height))
    elif tx.kind in (TxKind.ROUND, TxKind.GLOBAL_MODEL):
        opened = tx.kind == TxKind.ROUND
        values = ({"start_hash": p["global_hash"], "started_height": height} if opened
                  else {"global_hash": p["hash"], "finished_height": height})
        key = (rounds.c.job_id == p["job_id"]) & (rounds.c.round == p["round"])
        if not conn.execute(update(rounds).where(key).values(**values)).rowcount:
            conn.execute(insert(rounds).values(job_id=p["job_id"], round=p["round"], **values))


def _tx_from_row(row: Any) -> Transaction:
    return Transaction(row.kind, row.sender, json.loads(row.payload), row.timestamp, bytes.fromhex(row.signature))


def _load_blocks(conn: Connection, start: int, limit: int) -> list[StoredBlock]:
    header_rows = conn.execute(
        select(blocks).where(blocks.c.height >= start).order_by(blocks.c.height).limit(limit)).all()
    if not header_rows:
        return []
    last = header_rows[-1].height
    tx_rows = conn.execute(
        select(transactions).where(transactions.c.block_height.between(start, last))
        .order_by(transactions.c.block_height, transactions.c.position)).all()
    by_height: dict[int, list[Any]] = {}
    for row in tx_rows:
        by_height.setdefault(row.block_height, []).append(row)
    out = []
    for r in header_rows:
        rows = by_height.get(r.height, [])
        block = Block(r.height, r.prev_hash, r.merkle_root, r.timestamp, r.proposer,
                      bytes.fromhex(r.signature), tuple(_tx_from_row(t) for t in rows))
        out.append(StoredBlock(block, r.hash, tuple(t.hash for t in rows)))
    return out
