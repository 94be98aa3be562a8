"""The ledger's tables (SQLAlchemy 2.x Core): the chain itself and indexes derived from it.

``blocks`` and ``transactions`` *are* the chain: every column needed to recompute every hash
and check every signature is stored, so ``verify`` can audit the database on its own.
``nodes``, ``enrolments``, ``jobs``, ``rounds`` and ``model_records`` are indexes over the chain's transactions,
written in the same database transaction as the block, for fast lookups (a model by hash, a
round's updates) without replaying the chain.

Unique keys make appends idempotent and forks impossible: one block per height, one row per
transaction hash. ``python -m sql.schema`` writes the MySQL DDL of these tables to
``sql/schema.sql``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql

metadata = MetaData()

HASH = String(64)  # hex SHA-256
NODE_ID = String(32)  # hex of the first 16 bytes of SHA-256(public key)
SIGNATURE = String(128)  # hex Ed25519 signature
# MySQL's TEXT stops at 64 KiB; a job spec or a payload may be larger
LONG_TEXT = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

blocks = Table(
    "blocks",
    metadata,
    Column("height", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", HASH, nullable=False, unique=True),
    Column("prev_hash", HASH, nullable=False),
    Column("merkle_root", HASH, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("proposer", NODE_ID, nullable=False),
    Column("signature", SIGNATURE, nullable=False),
    Column("tx_count", Integer, nullable=False),
)

transactions = Table(
    "transactions",
    metadata,
    Column("hash", HASH, primary_key=True),
    Column("block_height", BigInteger, ForeignKey("blocks.height"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("sender", NODE_ID, nullable=False),
    Column("payload", LONG_TEXT, nullable=False),  # canonical JSON, exactly as hashed
    Column("timestamp", BigInteger, nullable=False),
    Column("signature", SIGNATURE, nullable=False),
    UniqueConstraint("block_height", "position", name="uq_transactions_block_position"),
    Index("ix_transactions_kind", "kind"),
    Index("ix_transactions_sender", "sender"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("node_id", NODE_ID, primary_key=True),
    Column("public_key", HASH, nullable=False),  # hex of the raw 32-byte key
    Column("role", String(8), nullable=False),
    Column("address", String(255), nullable=False),
    Column("registered_height", BigInteger, nullable=False),
    Column("updated_height", BigInteger, nullable=False),
)

enrolments = Table(
    "enrolments",
    metadata,
    Column("node_id", NODE_ID, primary_key=True),
    Column("public_key", HASH, nullable=False),
    Column("role", String(8), nullable=False),
    Column("token", String(64), nullable=False),  # the enrolment token's id (never its secret)
    Column("certificate", HASH, nullable=False),  # SHA-256 of the latest certificate issued to it
    Column("enrolled_height", BigInteger, nullable=False),
    Column("revoked_height", BigInteger),  # set by REVOKE: nothing from the node is valid after it
    Column("reason", String(1000)),
)

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("creator", NODE_ID, nullable=False),
    Column("spec", LONG_TEXT, nullable=False),  # canonical JSON
    Column("tx_hash", HASH, ForeignKey("transactions.hash"), nullable=False),
    Column("height", BigInteger, nullable=False),
)

rounds = Table(
    "rounds",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("round", Integer, primary_key=True, autoincrement=False),
    Column("start_hash", HASH),  # the global base the round started from (ROUND)
    Column("global_hash", HASH),  # the global base it produced (GLOBAL_MODEL)
    Column("started_height", BigInteger),
    Column("finished_height", BigInteger),
)

model_records = Table(
    "model_records",
    metadata,
    Column("tx_hash", HASH, ForeignKey("transactions.hash"), primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("round", Integer),  # none for a saved model
    Column("node_id", NODE_ID, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("hash", HASH, nullable=False),
    Column("samples", BigInteger),
    Column("size", BigInteger),
    Column("metrics", LONG_TEXT, nullable=False),  # canonical JSON of the payload's metrics
    Column("height", BigInteger, nullable=False),
    Index("ix_model_records_hash", "hash"),
    Index("ix_model_records_job_round", "job_id", "round"),
)
