"""``verify``: re-check a stored chain from genesis using nothing but what the database holds.

Every hash is recomputed from the stored columns and compared with the stored hashes, every
link and Merkle root is checked, and every signature is verified against the public keys the
chain itself registered. The first bad height is reported with the reason, so an operator
knows exactly which block was altered, removed or forged. Then the tables the store builds from
the chain (nodes act on them: who is enrolled, revoked, which model a round produced) are
derived again from the verified blocks and compared row by row, and block 0 can be checked
against the genesis hash a node pinned at enrolment.

Ed25519 verification dominates the cost (~0.1 ms a signature here) and OpenSSL releases the
GIL while it runs, so signatures are checked a batch of blocks at a time on a thread pool.

A long chain takes a while, so a caller may pass ``progress``: it hears how many blocks were
walked of how many the head promised, once a batch, which costs nothing beside the checks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

from node.chain.rules import ZERO_HASH, Block, Head, InvalidTransaction, Membership, check_payload, merkle_root
from node.chain.identity import verify_signature
from node.chain.store import BlockStore, StoredBlock

BATCH_BLOCKS = 500
SIGNATURES_PER_TASK = 256
MAX_PENDING_TASKS = 64
DERIVED_MISMATCH = "the tables built from the chain differ from it: "

# (blocks done, blocks in all) -> None: how far a long audit has got, for a progress bar
ProgressCallback = Callable[[int, int], None]


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
            return f"BAD at height {self.bad_height}: {self.reason}" if self.bad_height is not None else f"BAD: {self.reason}"
        if self.head is None:
            return "OK: the chain is empty"
        return (f"OK: {self.blocks} blocks, {self.transactions} transactions, "
                f"head {self.head.height} {self.head.hash}")


class _Bad(Exception):
    def __init__(self, height: int, reason: str) -> None:
        super().__init__(reason)
        self.height = height
        self.reason = reason


@dataclass(frozen=True)
class _SignatureCheck:
    height: int
    what: str  # the reason to report when the check fails
    key: bytes
    signature: bytes
    message: bytes


@dataclass
class _Walk:
    """What the audit has learnt so far: the chain's membership and the last good block."""

    members: Membership = field(default_factory=Membership)
    proposer: str | None = None
    previous: StoredBlock | None = None
    transactions: int = 0


def verify_chain(store: BlockStore, *, signatures: bool = True, threads: int | None = None,
                 genesis_hash: str = "", progress: ProgressCallback | None = None) -> VerifyReport:
    """Audit the whole chain in ``store``; ``signatures=False`` skips only the Ed25519 checks;
    ``genesis_hash``: the genesis block pinned at enrolment (another one is another network;
    empty: not checked). Once every block holds, the tables built from the chain (nodes,
    enrolments, jobs, rounds, model records) are compared with what its blocks derive: a
    mismatch is reported with ``bad_height`` None and the tables' rows in ``reason``.
    ``progress(done, total)`` hears of the walk at its start, once a batch of blocks (``total``:
    the head's height + 1 when the walk starts, raised if blocks arrive meanwhile), and once more
    with ``done == total`` when every block has passed, signatures included (not after a bad one).

    The structural pass runs on this thread while earlier batches' signatures are checked on the
    pool; results are read back in chain order, so the lowest bad height is the one reported."""
    genesis = store.block_hash(0)
    if genesis_hash and genesis is not None and genesis != genesis_hash:
        return VerifyReport(False, 0, 0, None, 0, f"the genesis block {genesis[:16]}… is not the pinned "
                                                   f"{genesis_hash[:16]}… (the one seen at enrolment): another network")
    derived = store.derived_check()  # read before the walk: blocks appended meanwhile are not compared
    try:
        report = _verify_blocks(store, signatures, threads, derived.add, _Counter(store, progress))
        if not report.ok:
            return report
        if differences := derived.differences():
            return VerifyReport(False, report.blocks, report.transactions, report.head, None,
                                DERIVED_MISMATCH + "; ".join(differences))
        return report
    finally:
        derived.close()


class _Counter:
    """Tells ``progress`` how many blocks the walk has passed: at the start (0, so a bar has its
    total from the first moment; the total is the head read before the walk), once a batch, and
    once at the end."""

    def __init__(self, store: BlockStore, progress: ProgressCallback | None) -> None:
        self.progress = progress
        head = store.head() if progress is not None else None
        self.total = 0 if head is None else head.height + 1

    def start(self) -> None:
        if self.progress is not None and self.total > 0:  # (an empty chain is told once, at the end)
            self.progress(0, self.total)

    def batch(self, done: int) -> None:
        if self.progress is not None and done < self.total:  # the last batch is told by ``finished``
            self.progress(done, self.total)

    def finished(self, done: int) -> None:
        if self.progress is not None:
            self.total = max(self.total, done)
            self.progress(self.total, self.total)


def _verify_blocks(store: BlockStore, signatures: bool, threads: int | None,
                   derive: Callable[[Block], None], counter: _Counter) -> VerifyReport:
    """Walk every block once: structure on this thread, signatures on the pool, and each block
    that passed the structural checks handed to ``derive`` (the derived tables' check)."""
    walk = _Walk()
    blocks = store.iter_stored_blocks(batch=BATCH_BLOCKS)
    pending: deque[Future[list[_SignatureCheck]]] = deque()
    structural: _Bad | None = None
    counter.start()
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        try:
            while structural is None and (batch := list(islice(blocks, BATCH_BLOCKS))):
                checks: list[_SignatureCheck] = []
                for stored in batch:
                    try:
                        checks.extend(_audit_block(stored, walk))
                    except _Bad as bad:
                        structural = bad
                        break
                    derive(stored.block)
                    walk.previous = stored
                    walk.transactions += len(stored.block.transactions)
                if signatures:
                    pending.extend(pool.submit(_failed_checks, checks[i:i + SIGNATURES_PER_TASK])
                                   for i in range(0, len(checks), SIGNATURES_PER_TASK))
                while len(pending) > MAX_PENDING_TASKS:  # bound the memory held by queued checks
                    _raise_first_failure(pending.popleft())
                if structural is None:
                    counter.batch(_walked(walk))
            while pending:
                _raise_first_failure(pending.popleft())
        except _Bad as bad:
            structural = bad
        finally:
            for future in pending:
                future.cancel()
    if structural is not None:
        return VerifyReport(False, structural.height, walk.transactions, None, structural.height, structural.reason)
    counter.finished(_walked(walk))
    if walk.previous is None:
        return VerifyReport(True, 0, 0, None)
    head = Head(walk.previous.block.height, walk.previous.stored_hash)
    return VerifyReport(True, head.height + 1, walk.transactions, head)


def _walked(walk: _Walk) -> int:
    """How many blocks the structural pass has passed (heights start at 0)."""
    return 0 if walk.previous is None else walk.previous.block.height + 1


def _raise_first_failure(future: Future[list[_SignatureCheck]]) -> None:
    if failures := future.result():
        raise _Bad(failures[0].height, failures[0].what)


def _failed_checks(checks: Sequence[_SignatureCheck]) -> list[_SignatureCheck]:
    return [c for c in checks if not verify_signature(c.key, c.signature, c.message)]


def _audit_block(stored: StoredBlock, walk: _Walk) -> Iterator[_SignatureCheck]:
    """Check everything but signatures (raising :class:`_Bad`); return the signatures to check."""
    block, height = stored.block, stored.block.height
    expected = 0 if walk.previous is None else walk.previous.block.height + 1
    if height != expected:
        raise _Bad(expected, f"block {expected} is missing (the next stored block is {height})")
    prev_hash = ZERO_HASH if walk.previous is None else walk.previous.stored_hash
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
    walk.proposer = walk.proposer or block.proposer
    if block.proposer != walk.proposer:
        raise _Bad(height, f"proposer {block.proposer} is not the genesis proposer {walk.proposer}")
    checks = []
    for index, tx in enumerate(block.transactions):
        try:
            key = walk.members.admit(tx, walk.proposer)
        except InvalidTransaction as exc:
            raise _Bad(height, f"transaction {index}: {exc}") from None
        checks.append(_SignatureCheck(height, f"transaction {index} ({tx.kind}): bad signature", key,
                                      tx.signature, bytes.fromhex(tx.hash)))
    if walk.proposer not in walk.members.keys:
        raise _Bad(height, f"proposer {walk.proposer} was never registered")
    checks.append(_SignatureCheck(height, "bad proposer signature", walk.members.keys[walk.proposer], block.signature,
                                  bytes.fromhex(block.hash)))
    return iter(checks)
