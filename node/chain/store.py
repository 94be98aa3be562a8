"""What the ledger needs from a store, as a Protocol, and the errors a store raises.

The chain package is a leaf: it knows no database. ``sql.store.LedgerStore`` (SQLAlchemy Core,
SQLite or MySQL/MariaDB) fulfils this Protocol and ``main.py`` wires it in; a test could hand the
ledger any other object with these methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from node.chain.rules import Block, ChainView, Head, Transaction


class StoreError(RuntimeError):
    """The ledger database refused or failed an operation."""


class BlockConflict(StoreError):
    """Another block already holds this height, or a transaction is already on the chain."""


class LedgerUnavailable(StoreError):
    """The ledger database did not answer within the retry window."""


@dataclass(frozen=True)
class StoredBlock:
    """A block as read back, with the hashes the database claims for it (for auditing)."""

    block: Block
    stored_hash: str
    stored_tx_hashes: tuple[str, ...]


class DerivedCheck(Protocol):
    """The tables a store builds from the chain (who is enrolled, registered, revoked; jobs,
    rounds, model records), read at chain height ``height``, to be compared with what the
    chain's blocks derive: ``verify`` feeds it each verified block in order (those above
    ``height`` are ignored) and asks for the differences. Nodes act on these tables, so a row
    altered behind the chain's back must fail the audit like an altered block."""

    height: int | None

    def add(self, block: Block) -> None: ...

    def differences(self, limit: int = 5) -> list[str]: ...

    def close(self) -> None: ...


class BlockStore(ChainView, Protocol):
    """A node's copy of the chain: appends whole blocks, reads them back, answers the questions
    block validation asks (``ChainView``)."""

    def append(self, block: Block) -> bool: ...

    def block(self, height: int) -> Block | None: ...

    def block_hash(self, height: int) -> str | None: ...

    def blocks_from(self, height: int, limit: int = 100) -> list[Block]: ...

    def iter_stored_blocks(self, start: int = 0, batch: int = 500) -> Iterator[StoredBlock]: ...

    def derived_check(self) -> DerivedCheck: ...

    def public_key(self, node_id: str) -> bytes | None: ...

    def revoked(self) -> set[str]: ...

    def head(self) -> Head | None: ...

    def existing_transactions(self, tx_hashes: Iterable[str]) -> set[str]: ...

    def existing_jobs(self, job_ids: Iterable[str]) -> set[str]: ...

    def transactions(self, kind: str | None = None, job_id: str | None = None,
                     round: int | None = None) -> list[tuple[int, Transaction]]: ...
