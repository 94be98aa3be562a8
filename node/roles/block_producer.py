"""The entry node's block production: the pool of admitted transactions, sealing them into
blocks, pushing each block to the other supernodes, and which height is final.

A transaction enters the pool only when its sender is registered (on the chain, or by a
registration still in the pool), its kind fits the sender's role, and its signature holds. The
pool is sealed every ``block_interval`` seconds or ``block_max_txs`` transactions, into blocks
small enough to push in one gRPC message; one bad transaction never costs the others their place.
Transactions submitted *together* (a round's updates, aggregates, exclusions and its global model)
go into one block, all of them or none: a block may exceed ``block_max_txs`` for them.
A block is final once a majority of the alive supernodes hold it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.identity import Identity
from node.chain.ledger import Ledger
from node.chain.rules import (InvalidBlock, InvalidTransaction, Registration, Transaction, TxKind, canonical_bytes,
                              check_payload, check_sender_role)
from node.chain.store import StoreError
from node.net.channels import Channels
from node.net.errors import refuse
from node.net.wire import block_to_pb
from node.roles.membership import Member, Members, edge_member
from node.roles.settings import NodeSettings

log = logging.getLogger(__name__)

MAX_PENDING = 20_000  # transactions waiting for a block; beyond that submitters are asked to retry
MAX_BLOCK_BYTES = 6 << 20  # a sealed block must fit one gRPC message (8 MiB) when pushed


RECENTLY_SEALED = 100_000  # transaction hashes remembered as sealed (for wait_sealed)

class BlockProducer:
    def __init__(self, identity: Identity, ledger: Ledger, members: Members, settings: NodeSettings,
                 channels: Channels) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.ledger = ledger
        self.members = members
        self.settings = settings
        self.channels = channels
        self._pool: list[Transaction] = []
        self._pool_hashes: set[str] = set()
        self._together: dict[str, int] = {}  # first transaction's hash -> how many are sealed as one unit
        self._pool_cond = threading.Condition()
        self._peer_heads: dict[str, int] = {}
        self._pushers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="push")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the entry node's check of a transaction's claims against the job (sample counts), set by
        # the supernode once its coordinator exists; raises to refuse
        self.check_claims: Callable[[Transaction], None] = lambda tx: None
        self._urgent = False  # seal what is pending now, without waiting for block_interval
        self._sealed_recently: OrderedDict[str, None] = OrderedDict()  # what wait_sealed() asks, without the database

    def start(self) -> None:
        self._thread = threading.Thread(target=self._block_loop, name="blocks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, then seal what is pending into a last block."""
        self._stop.set()
        with self._pool_cond:
            self._pool_cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self._seal_pending()
        except Exception:  # noqa: BLE001
            log.exception("could not seal the last pending transactions")
        self._pushers.shutdown(wait=True, cancel_futures=False)

    def submit_all(self, txs: list[Transaction], together: bool = False) -> list[str]:
        """Admit ``txs`` in order, with one database read for them all. A repeat is the same
        transaction; one already sealed is admitted again as a no-op. ``together``: every one of
        them is checked before any enters the pool, and they are sealed in one block (a round's
        records: all on the chain, or none)."""
        distinct = list({tx.hash: tx for tx in txs}.values())
        for tx in distinct:
            check_payload(tx)
        sealed = self.ledger.store.existing_transactions([tx.hash for tx in distinct])
        # database reads outside the lock
        registered = self.ledger.store.registrations(tx.sender for tx in distinct)
        fresh = [tx for tx in distinct if tx.hash not in sealed]
        if not together:
            for tx in fresh:
                self._admit([tx], registered)
        elif fresh:
            if sum(_block_bytes(tx) for tx in fresh) > MAX_BLOCK_BYTES:
                raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{len(fresh)} transactions to seal together do not fit one block")
            self._admit(fresh, registered)
        return [tx.hash for tx in txs]

    def _admit(self, unit: list[Transaction], registered: dict[str, Registration]) -> None:
        """Check every transaction of ``unit`` (one, or several sealed together), then pool them."""
        with self._pool_cond:
            unit = [tx for tx in unit if tx.hash not in self._pool_hashes]
            if not unit:
                return
            if len(self._pool) + len(unit) > MAX_PENDING:
                raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{len(self._pool)} transactions are waiting for a block; retry shortly")
            for tx in unit:
                self._check(tx, registered.get(tx.sender))
            for tx in unit:
                if tx.kind == TxKind.REGISTER and tx.payload["role"] == "EN":  # where it lives now
                    self.members.add(edge_member(tx, bytes.fromhex(tx.payload["public_key"])))
                if tx.kind == TxKind.REVOKE:
                    self.ledger.mark_revoked(tx.payload["node"])
                    self.members.remove(tx.payload["node"])
            if len(unit) > 1:
                self._together[unit[0].hash] = len(unit)
            self._pool.extend(unit)
            self._pool_hashes.update(tx.hash for tx in unit)
            self._pool_cond.notify_all()

    def _check(self, tx: Transaction, stored: Registration | None) -> None:
        """Raise the gRPC refusal for a transaction the pool must not take."""
        key, role = self._pending_identity(tx, stored)
        if key is None:
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"sender {tx.sender} is not a registered node")
        try:
            check_sender_role(tx, role, self.node_id)
        except InvalidTransaction as exc:
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        if not tx.signed_by(key):
            raise refuse(grpc.StatusCode.UNAUTHENTICATED, f"transaction {tx.hash[:16]}… has a bad signature")
        self.check_claims(tx)

    def _pending_identity(self, tx: Transaction, stored: Registration | None) -> tuple[bytes | None, str | None]:
        """The sender's key and role: from the chain, or from a registration still in the pool.
        A revoked sender, or a registration without an enrolment, is refused here, before the
        pool, rather than by block validation later."""
        if self.ledger.is_revoked(tx.sender):
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"node {tx.sender} was revoked by the operator")
        key, role = (stored.public_key, stored.role) if stored else (None, None)
        if tx.kind == TxKind.REGISTER:
            if role is not None and role != tx.payload["role"]:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"node {tx.sender} is registered as {role}")
            if tx.sender != self.node_id and not self._enrolled(tx):
                raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                             f"node {tx.sender} is not enrolled as {tx.payload['role']}: ask the operator for an "
                             f"enrolment token (console: enrol(role='{tx.payload['role']}')) and start the node with it")
            return bytes.fromhex(tx.payload["public_key"]), tx.payload["role"]
        for pending in self._pool:
            if pending.kind == TxKind.REGISTER and pending.sender == tx.sender:
                return bytes.fromhex(pending.payload["public_key"]), pending.payload["role"]
        return key, role

    def _enrolled(self, register: Transaction) -> bool:
        """An ENROLL of the registering key and role is on the chain or in the pool."""
        key, role = register.payload["public_key"], register.payload["role"]
        for pending in self._pool:
            if pending.kind == TxKind.ENROLL and pending.payload["node"] == register.sender:
                return pending.payload["public_key"] == key and pending.payload["role"] == role
        on_chain = self.ledger.enrolment(register.sender)
        return on_chain is not None and on_chain.public_key.hex() == key and on_chain.role == role

    def wait_sealed(self, tx_hash: str, timeout: float) -> bool:
        """Seal what is pending now and wait until ``tx_hash`` has left the pool: True once it is
        in a block, False when it was dropped or ``timeout`` passed (the database is down)."""
        deadline = time.monotonic() + timeout
        with self._pool_cond:
            self._urgent = True
            self._pool_cond.notify_all()
            while tx_hash in self._pool_hashes:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._pool_cond.wait(left)
            return tx_hash in self._sealed_recently

    def is_pending(self, tx_hash: str) -> bool:
        with self._pool_cond:
            return tx_hash in self._pool_hashes

    def pending_count(self) -> int:
        with self._pool_cond:
            return len(self._pool)

    def _block_loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            with self._pool_cond:
                self._pool_cond.wait_for(lambda: self._pool or self._stop.is_set())
                deadline = time.monotonic() + max(self.settings.block_interval, backoff)
                while (len(self._pool) < self.settings.block_max_txs and not self._stop.is_set()
                       and not self._urgent and (left := deadline - time.monotonic()) > 0):
                    self._pool_cond.wait(left)
                self._urgent = False
            if self._stop.is_set():
                return
            try:
                self._seal_pending()
                backoff = 0.0
            except StoreError as exc:  # the database is down: keep the pool, try again later
                backoff = min(max(1.0, 2 * backoff), 30.0)
                log.error("could not seal a block (%s); %d transactions kept, retrying in %.0f s",
                          exc, self.pending_count(), backoff)
            except Exception:  # noqa: BLE001 - the block loop must survive anything
                log.exception("sealing a block failed")
                self._stop.wait(1.0)

    def _next_batch(self) -> list[list[Transaction]]:
        """Pending units (a transaction, or several submitted together) for one block: at most
        block_max_txs transactions, and few enough bytes that the block fits one gRPC message when
        pushed to the other supernodes; a unit is never split."""
        batch: list[list[Transaction]] = []
        count = size = 0
        with self._pool_cond:
            pool, i = self._pool, 0
            while i < len(pool):
                unit = pool[i:i + self._together.get(pool[i].hash, 1)]
                unit_size = sum(_block_bytes(tx) for tx in unit)
                if batch and (count + len(unit) > self.settings.block_max_txs or size + unit_size > MAX_BLOCK_BYTES):
                    break
                batch.append(unit)
                count, size, i = count + len(unit), size + unit_size, i + len(unit)
        return batch

    def _seal_pending(self) -> None:
        units = self._next_batch()
        if not units:
            return
        batch = [tx for unit in units for tx in unit]
        try:
            block = self.ledger.propose(batch, self.identity)
            stored = {t.hash for t in batch}
        except InvalidBlock as exc:  # one bad transaction: never lose the others to it
            log.error("sealing %d transactions failed (%s); sealing them unit by unit", len(batch), exc)
            block, stored = None, set()
            for unit in units:
                try:
                    self.ledger.propose(unit, self.identity)
                    stored.update(tx.hash for tx in unit)
                except InvalidBlock as one:
                    hashes = [tx.hash for tx in unit]
                    if len(self.ledger.store.existing_transactions(hashes)) == len(hashes):
                        stored.update(hashes)  # sealed before (an earlier try whose answer was lost)
                        continue
                    log.error("dropped %d transaction(s) sealed as one, the first %s (%s): %s",
                              len(unit), unit[0].hash[:16], unit[0].kind, one)
        with self._pool_cond:
            sealed = {t.hash for t in batch}
            self._pool = [t for t in self._pool if t.hash not in sealed]
            self._pool_hashes -= sealed
            for unit in units:
                self._together.pop(unit[0].hash, None)
            for tx_hash in stored:
                self._sealed_recently[tx_hash] = None
            while len(self._sealed_recently) > RECENTLY_SEALED:
                self._sealed_recently.popitem(last=False)
            self._pool_cond.notify_all()  # wakes wait_sealed()
        if block is not None:
            log.debug("sealed block %d with %d transactions", block.height, len(block.transactions))
        try:
            head = self.ledger.head()
            if head is not None:
                self._push_head(head.height)
        except StoreError as exc:  # sealed all the same; the supernodes catch up by themselves
            log.warning("block sealed, but not pushed to the supernodes: %s", exc)

    def _push_head(self, height: int) -> None:
        """Push the new block to every alive supernode (in parallel; laggards catch up themselves)."""
        block = self.ledger.store.block(height)
        if block is None:
            return
        message = block_to_pb(block)
        for sn in self.members.of_role("SN", alive_only=True):
            if sn.node_id != self.node_id:
                self._pushers.submit(self._push_to, sn, message)

    def _push_to(self, sn: Member, message: pb.Block) -> None:
        try:
            reply = rpc_pb.LedgerStub(self.channels.get(sn.address, sn.node_id)).PushBlock(message, timeout=10)
            self._peer_heads[sn.node_id] = max(self._peer_heads.get(sn.node_id, -1), reply.head.height)
        except grpc.RpcError as exc:
            log.info("push of block %d to %s failed: %s", message.height, sn.address, exc.code().name)

    def peer_holds(self, node_id: str, height: int) -> None:
        """A supernode reported (in its heartbeat) the height it holds."""
        self._peer_heads[node_id] = height

    def final_height(self) -> int:
        """The highest block a majority of the alive supernodes (this one included) hold."""
        head = self.ledger.head()
        own = head.height if head else -1
        peers = [min(own, self._peer_heads.get(m.node_id, -1)) for m in self.members.of_role("SN", alive_only=True)
                 if m.node_id != self.node_id]  # a peer cannot hold more than we made
        heights = sorted([own, *peers], reverse=True)
        return heights[len(heights) // 2]


def _block_bytes(tx: Transaction) -> int:
    """A transaction's share of a pushed block's bytes (its payload and the envelope around it)."""
    return len(canonical_bytes(tx.payload)) + 512
