"""A supernode's copy of the chain, kept by replication: blocks the entry node pushes are
validated and stored; a gap (a new or lagging supernode) is filled by asking the entry node for
every block from this copy's head, in batches, each validated before it is stored.

Joining a long chain takes a while (every block is validated), so a catch-up says how far it has
got at most every ``PROGRESS_SECONDS`` and once at the end, one line at a time."""

from __future__ import annotations

import logging
import threading
import time

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.ledger import Ledger
from node.chain.rules import Block, Head
from node.net.channels import Channels
from node.net.wire import block_from_pb

SYNC_BATCH = 500
PROGRESS_SECONDS = 2.0  # at most one catch-up progress line this often

log = logging.getLogger(__name__)


class _CatchUp:
    """One sync's progress: blocks added, the entry node's head when it began, and when the last
    line was logged (so a long catch-up logs a line every few seconds, never one a block)."""

    def __init__(self, target: int) -> None:
        self.target = target  # the entry node's head height when the sync began (-1: an empty chain)
        self.added = 0
        self.started = self.logged = time.monotonic()

    def line(self, where: str, height: int) -> str:
        return (f"{where} height {height} of {max(self.target, height)} "
                f"({self.added} blocks in {time.monotonic() - self.started:.1f} s)")

    def block_added(self, height: int) -> None:
        self.added += 1
        if time.monotonic() - self.logged >= PROGRESS_SECONDS:
            self.logged = time.monotonic()
            log.info("%s", self.line("catching up: at", height))

    def finished(self, head: Head | None) -> None:
        if self.added:  # (a sync with nothing to fetch says nothing)
            log.info("%s", self.line("caught up to", head.height if head else -1))


class Replica:
    def __init__(self, ledger: Ledger, channels: Channels, entry_address: str, entry_id: str = "") -> None:
        self.ledger = ledger
        self.channels = channels
        self.entry_address = entry_address
        self.entry_id = entry_id
        self._sync_lock = threading.Lock()

    def receive_block(self, block: Block) -> tuple[bool, Head | None]:
        """Validate and store a pushed block (catching up first when it is not the next one);
        False when it was already held."""
        head = self.ledger.head()
        if head is None or block.height > head.height + 1:
            self.sync()
        return self.ledger.add_block(block), self.ledger.head()  # False: already held

    def sync(self) -> int:
        """Fetch and validate every block the entry node has beyond our head, logging how far it
        has got (the entry node's head, asked first, is what "of H" counts to). Returns blocks added."""
        with self._sync_lock:
            stub = rpc_pb.LedgerStub(self.channels.get(self.entry_address, self.entry_id))
            progress = _CatchUp(stub.GetHead(pb.Empty(), timeout=10).height)
            while True:
                head = self.ledger.head()
                start = 0 if head is None else head.height + 1
                got = 0
                for message in stub.GetBlocks(pb.GetBlocksRequest(from_height=start, limit=SYNC_BATCH), timeout=60):
                    block = block_from_pb(message)
                    if self.ledger.add_block(block):
                        progress.block_added(block.height)
                    got += 1
                after = self.ledger.head()
                if got < SYNC_BATCH or after is None or after.height < start:  # done, or no progress
                    progress.finished(after)
                    return progress.added
