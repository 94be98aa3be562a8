"""A node's ledger: chain rules in front of its store.

Every block, whether proposed here or received from a peer, is validated against this node's
own head before it is stored. Appends are serialised by a lock within the process; across
processes (or nodes sharing a database) the store's unique height decides, so two appenders
can race but never fork the chain: the loser gets :class:`BlockConflict` and re-reads the head.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from node.chain.rules import Block, Enrolment, Head, Transaction, TxKind, genesis_block, validate_block
from node.chain.identity import Identity
from node.chain.store import BlockConflict, BlockStore


class Ledger:
    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._revoked: set[str] | None = None  # read from the store on first use, then kept in step

    def is_revoked(self, node_id: str) -> bool:
        """True once a REVOKE of ``node_id`` is on this chain (or was admitted here, see
        :meth:`mark_revoked`). Asked on every call a node receives, so it is answered from memory."""
        if self._revoked is None:
            self._revoked = set(self.store.revoked())
        return node_id in self._revoked

    def mark_revoked(self, node_id: str) -> None:
        """The entry node refuses a node from the moment it admits its REVOKE, not a block later."""
        self.is_revoked(node_id)
        assert self._revoked is not None
        self._revoked.add(node_id)

    def enrolment(self, node_id: str) -> Enrolment | None:
        return self.store.enrolments([node_id]).get(node_id)

    def head(self) -> Head | None:
        return self.store.head()

    def add_block(self, block: Block) -> bool:
        """Validate and store ``block``; False when it is already stored (idempotent).

        Raises ``InvalidBlock`` (rules broken; nothing written) or ``BlockConflict`` (another
        block holds the height)."""
        with self._lock:
            stored = self.store.block_hash(block.height)
            if stored == block.hash:
                return False
            if stored is not None:
                raise BlockConflict(f"height {block.height} already holds block {stored[:16]}…, not {block.hash[:16]}…")
            validate_block(block, self.store)
            stored = self.store.append(block)
            for tx in block.transactions:
                if tx.kind == TxKind.REVOKE:
                    self.mark_revoked(tx.payload["node"])
            return stored

    def create_genesis(self, identity: Identity, address: str) -> Block:
        """Create block 0 with ``identity`` as the proposer; a chain that has one keeps it."""
        with self._lock:
            existing = self.store.block(0)
            if existing is not None:
                return existing
            block = genesis_block(identity, address)
            self.add_block(block)
            return block

    def propose(self, transactions: Iterable[Transaction], identity: Identity) -> Block:
        """Seal ``transactions`` into the next block, signed by ``identity`` (the proposer)."""
        with self._lock:
            head = self.store.head()
            if head is None:
                raise BlockConflict("the chain has no genesis block yet; the entry node creates it")
            block = Block.create(head.height + 1, head.hash, transactions, identity)
            self.add_block(block)
            return block
