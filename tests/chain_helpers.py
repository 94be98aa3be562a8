"""Build signed test chains: a proposer, some registered edge nodes, model-update blocks."""

from __future__ import annotations

import hashlib

from node.chain.rules import Transaction, TxKind, fixed
from node.chain.identity import Identity
from node.chain.ledger import Ledger


def register(identity: Identity, role: str = "EN", address: str = "127.0.0.1:9000") -> Transaction:
    return Transaction.create(TxKind.REGISTER, {"public_key": identity.public_key.hex(), "role": role,
                                                "address": address}, identity)


def enroll(proposer: Identity, identity: Identity, role: str = "EN") -> Transaction:
    """The entry node's ENROLL of ``identity`` (what it records when the node enrols with a token)."""
    return Transaction.create(TxKind.ENROLL, {"node": identity.node_id, "public_key": identity.public_key.hex(),
                                              "role": role, "token": "0badc0de", "certificate": "ab" * 32}, proposer)


def admit(proposer: Identity, identity: Identity, role: str = "EN", address: str = "127.0.0.1:9000") -> list[Transaction]:
    """ENROLL then REGISTER: how a node joins the chain."""
    return [enroll(proposer, identity, role), register(identity, role, address)]


def model_update(identity: Identity, round: int, n: int, job_id: str = "job1") -> Transaction:
    digest = hashlib.sha256(f"{identity.node_id}/{round}/{n}".encode()).hexdigest()
    return Transaction.create(TxKind.MODEL_UPDATE, {
        "job_id": job_id, "round": round, "hash": digest, "samples": 100 + n, "size": 4096,
        "metrics": {"loss": fixed(0.5 / (n + 1)), "acc": fixed(0.9)}}, identity)


def build_chain(ledger: Ledger, proposer: Identity, blocks: int, txs_per_block: int = 3,
                senders: int = 2) -> list[Identity]:
    """Genesis, a block registering ``senders`` edge nodes, then ``blocks`` blocks of updates."""
    ledger.create_genesis(proposer, "127.0.0.1:8080")
    nodes = [Identity.generate() for _ in range(senders)]
    ledger.propose([tx for i, n in enumerate(nodes) for tx in admit(proposer, n, address=f"127.0.0.1:{9000 + i}")],
                   proposer)
    for b in range(blocks):
        ledger.propose([model_update(nodes[i % senders], b, i) for i in range(txs_per_block)], proposer)
    return nodes
