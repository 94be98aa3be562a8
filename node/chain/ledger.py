"""A node's ledger: chain rules in front of its store.

Every block, whether proposed here or received from a peer, is validated against this node's
own head before it is stored. Appends are serialised by a lock within the process; across
processes (or nodes sharing a database) the store's unique height decides, so two appenders
can race but never fork the chain: the loser gets :class:`BlockConflict` and re-reads the head.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from node.chain.rules import Block, Head, Transaction, genesis_block, validate_block
from node.chain.identity import Identity
from node.chain.store import BlockConflict, BlockStore



class Ledger:
    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self._lock = threading.RLock()

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
            return self.store.append(block)

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
