"""A supernode's copy of the chain, kept by replication: blocks the entry node pushes are
validated and stored; a gap (a new or lagging supernode) is filled by asking the entry node for
every block from this copy's head, in batches, each validated before it is stored."""

from __future__ import annotations

import threading

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.ledger import Ledger
from node.chain.rules import Block, Head
from node.net.channels import Channels
from node.net.wire import block_from_pb

SYNC_BATCH = 500


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
        """Fetch and validate every block the entry node has beyond our head. Returns blocks added."""
        added = 0
        with self._sync_lock:
            stub = rpc_pb.LedgerStub(self.channels.get(self.entry_address, self.entry_id))
            while True:
                head = self.ledger.head()
                start = 0 if head is None else head.height + 1
                got = 0
                for message in stub.GetBlocks(pb.GetBlocksRequest(from_height=start, limit=SYNC_BATCH), timeout=60):
                    if self.ledger.add_block(block_from_pb(message)):
                        added += 1
                    got += 1
                after = self.ledger.head()
                if got < SYNC_BATCH or after is None or after.height < start:  # done, or no progress
                    return added
