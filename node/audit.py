"""``verify``: re-check a stored chain from genesis using nothing but what the database holds.

Every hash is recomputed from the stored columns and compared with the stored hashes, every
link and Merkle root is checked, and every signature is verified against the public keys the
chain itself registered. The first bad height is reported with the reason, so an operator
knows exactly which block was altered, removed or forged.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.chain import ZERO_HASH, Head, InvalidTransaction, check_payload, merkle_root, register_key
from node.identity import verify_signature
from sql.store import LedgerStore, StoredBlock


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    blocks: int
    transactions: int
    head: Head | None
    bad_height: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if not self.ok:
            return f"BAD at height {self.bad_height}: {self.reason}"
        if self.head is None:
            return "OK: the chain is empty"
        return (f"OK: {self.blocks} blocks, {self.transactions} transactions, "
                f"head {self.head.height} {self.head.hash}")


class _Bad(Exception):
    def __init__(self, height: int, reason: str) -> None:
        super().__init__(reason)
        self.height = height
        self.reason = reason


def verify_chain(store: LedgerStore, *, signatures: bool = True) -> VerifyReport:
    """Audit the whole chain in ``store``; ``signatures=False`` skips only the Ed25519 checks."""
    keys: dict[str, bytes] = {}
    proposer: str | None = None
    previous: StoredBlock | None = None
    tx_total = 0
    try:
        for stored in store.iter_stored_blocks():
            expected = 0 if previous is None else previous.block.height + 1
            if stored.block.height != expected:
                raise _Bad(expected, f"block {expected} is missing (the next stored block is {stored.block.height})")
            proposer = proposer or stored.block.proposer
            _audit_block(stored, previous, proposer, keys, signatures)
            tx_total += len(stored.block.transactions)
            previous = stored
    except _Bad as bad:
        return VerifyReport(False, bad.height, tx_total, None, bad.height, bad.reason)
    head = None if previous is None else Head(previous.block.height, previous.stored_hash)
    return VerifyReport(True, 0 if previous is None else previous.block.height + 1, tx_total, head)


def _audit_block(stored: StoredBlock, previous: StoredBlock | None, proposer: str,
                 keys: dict[str, bytes], signatures: bool) -> None:
    block, height = stored.block, stored.block.height
    prev_hash = ZERO_HASH if previous is None else previous.stored_hash
    if block.prev_hash != prev_hash:
        raise _Bad(height, f"broken link: prev_hash {block.prev_hash[:16]}… is not block {height - 1}'s hash "
                           f"{prev_hash[:16]}…")
    hashes = []
    for index, (tx, claimed) in enumerate(zip(block.transactions, stored.stored_tx_hashes)):
        try:
            check_payload(tx)
        except InvalidTransaction as exc:
            raise _Bad(height, f"transaction {index}: {exc}") from None
        if tx.hash != claimed:
            raise _Bad(height, f"transaction {index} ({tx.kind}): its stored hash {claimed[:16]}… does not match "
                               f"its contents {tx.hash[:16]}… (payload, sender, timestamp or hash altered)")
        hashes.append(tx.hash)
    if merkle_root(hashes) != block.merkle_root:
        raise _Bad(height, "the Merkle root does not match the stored transactions "
                           "(a transaction was added, removed or altered)")
    if block.hash != stored.stored_hash:
        raise _Bad(height, f"the stored block hash {stored.stored_hash[:16]}… does not match its header "
                           f"{block.hash[:16]}… (header or hash altered)")
    if block.proposer != proposer:
        raise _Bad(height, f"proposer {block.proposer} is not the genesis proposer {proposer}")
    for index, tx in enumerate(block.transactions):
        new_key = register_key(tx)
        if new_key is not None and keys.setdefault(tx.sender, new_key) != new_key:
            raise _Bad(height, f"transaction {index}: node {tx.sender} re-registers with another key")
        key = keys.get(tx.sender)
        if key is None:
            raise _Bad(height, f"transaction {index}: sender {tx.sender} was never registered")
        if signatures and not verify_signature(key, tx.signature, bytes.fromhex(tx.hash)):
            raise _Bad(height, f"transaction {index} ({tx.kind}): bad signature")
    if proposer not in keys:
        raise _Bad(height, f"proposer {proposer} was never registered")
    if signatures and not verify_signature(keys[proposer], block.signature, bytes.fromhex(block.hash)):
        raise _Bad(height, "bad proposer signature")
