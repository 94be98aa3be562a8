"""Chain rules without a database: encoding, hashes, Merkle roots and block validation."""

from dataclasses import replace

import pytest

from chain_helpers import admit, enroll, model_update, register
from node.chain.rules import Block, ChainError, Head, InvalidBlock, InvalidTransaction, Membership, Registration, Transaction, TxKind, ZERO_HASH, canonical_bytes, genesis_block, merkle_root, validate_block
from node.chain.identity import Identity


class MemoryView:
    """The smallest ChainView: a list of blocks and the keys they registered."""

    def __init__(self) -> None:
        self.chain: list[Block] = []
        self.keys: dict[str, bytes] = {}
        self.role: dict[str, str] = {}

    def head(self):
        return Head(self.chain[-1].height, self.chain[-1].hash) if self.chain else None

    def proposer(self):
        return self.chain[0].proposer if self.chain else None

    def registrations(self, ids):
        return {i: Registration(self.keys[i], self.role[i]) for i in ids if i in self.keys}

    def enrolments(self, ids):
        members = Membership()
        for block in self.chain:
            for tx in block.transactions:
                members.admit(tx, self.proposer())
        return {i: e for i, e in members.enrolled.items() if i in set(ids)}

    def existing_transactions(self, hashes):
        on_chain = {t.hash for b in self.chain for t in b.transactions}
        return set(hashes) & on_chain

    def existing_jobs(self, job_ids):
        on_chain = {t.payload["job_id"] for b in self.chain for t in b.transactions if t.kind == TxKind.JOB}
        return set(job_ids) & on_chain

    def add(self, block):
        validate_block(block, self)
        self.chain.append(block)
        for tx in block.transactions:
            if tx.kind == TxKind.REGISTER:
                self.keys[tx.sender] = bytes.fromhex(tx.payload["public_key"])
                self.role[tx.sender] = tx.payload["role"]


@pytest.fixture
def setup():
    view, proposer, edge = MemoryView(), Identity.generate(), Identity.generate()
    view.add(genesis_block(proposer, "127.0.0.1:8080"))
    view.add(Block.create(1, view.head().hash, admit(proposer, edge), proposer))
    return view, proposer, edge


def test_canonical_encoding_is_sorted_compact_and_refuses_floats():
    assert canonical_bytes({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    with pytest.raises(ChainError, match="floats are not allowed"):
        canonical_bytes({"loss": 0.1})


def test_transaction_hash_covers_every_field_and_signature_is_over_it():
    me = Identity.generate()
    tx = model_update(me, 1, 0)
    assert tx.hash == Transaction(tx.kind, tx.sender, dict(tx.payload), tx.timestamp).hash
    for changed in (replace(tx, timestamp=tx.timestamp + 1), replace(tx, payload={**tx.payload, "samples": 1}),
                    replace(tx, kind="GLOBAL_MODEL")):
        assert changed.hash != tx.hash


def test_payload_rules_per_kind():
    me = Identity.generate()
    with pytest.raises(InvalidTransaction, match="lacks 'samples'"):
        Transaction.create(TxKind.MODEL_UPDATE, {"job_id": "j", "round": 1, "hash": "0" * 64, "size": 1}, me)
    with pytest.raises(InvalidTransaction, match="'hash'='xyz' is not a valid hash"):
        Transaction.create(TxKind.GLOBAL_MODEL, {"job_id": "j", "round": 1, "hash": "xyz", "samples": 1}, me)
    with pytest.raises(ValueError):
        Transaction.create("MINT", {}, me)
    other = Identity.generate()
    with pytest.raises(InvalidTransaction, match="does not belong to the sender"):
        Transaction.create(TxKind.REGISTER, {"public_key": other.public_key.hex(), "role": "EN", "address": "x"}, me)


def test_merkle_root_depends_on_every_leaf_and_order():
    hashes = [f"{i:064x}" for i in range(5)]
    root = merkle_root(hashes)
    assert merkle_root(hashes) == root and len(root) == 64
    assert merkle_root(hashes[::-1]) != root
    assert merkle_root(hashes[:4]) != root
    assert merkle_root(hashes + hashes[-1:]) != root  # no duplicate-last collision
    assert merkle_root([]) != merkle_root([ZERO_HASH])


def test_valid_chain_is_accepted(setup):
    view, proposer, edge = setup
    view.add(Block.create(2, view.head().hash, [model_update(edge, 1, 0), model_update(edge, 1, 1)], proposer))
    assert view.head().height == 2


@pytest.mark.parametrize("breakage, reason", [
    ("height", "does not follow the head"),
    ("prev_hash", "is not the head's hash"),
    ("merkle", "Merkle root does not match"),
    ("proposer", "is not the chain's authorised proposer"),
    ("block_signature", "bad proposer signature"),
    ("tx_signature", "bad signature"),
    ("unknown_sender", "is not a registered node"),
    ("duplicate_in_block", "holds the same transaction twice"),
    ("already_on_chain", "already on the chain"),
    ("altered_payload", "bad signature"),
    ("job_twice_in_block", "starts job 'j1' again"),
    ("job_already_on_chain", "starts job 'j1' again"),
])
def test_invalid_blocks_are_refused_with_the_reason(setup, breakage, reason):
    view, proposer, edge = setup
    head = view.head()
    tx = model_update(edge, 1, 0)
    txs, height, prev, signer = [tx], head.height + 1, head.hash, proposer
    if breakage == "height":
        height += 1
    elif breakage == "prev_hash":
        prev = ZERO_HASH
    elif breakage == "proposer":
        signer = edge
    elif breakage == "unknown_sender":
        txs = [model_update(Identity.generate(), 1, 0)]
    elif breakage == "duplicate_in_block":
        txs = [tx, tx]
    elif breakage == "already_on_chain":
        txs = [view.chain[1].transactions[0]]
    elif breakage == "tx_signature":
        txs = [replace(tx, signature=Identity.generate().sign(bytes.fromhex(tx.hash)))]
    elif breakage == "altered_payload":  # payload changed after signing: hash moves, signature no longer fits
        txs = [replace(tx, payload={**tx.payload, "samples": 10**6})]
    elif breakage.startswith("job_"):  # a job id names one job: two JOBs with it would split its records
        def job(n: int) -> Transaction:
            return Transaction.create(TxKind.JOB, {"job_id": "j1", "spec": {"n": n}}, proposer)

        if breakage == "job_already_on_chain":
            view.add(Block.create(head.height + 1, head.hash, [job(1)], proposer))
            height, prev, txs = head.height + 2, view.head().hash, [job(2)]
        else:
            txs = [job(1), job(2)]
    block = Block.create(height, prev, txs, signer)
    if breakage == "merkle":
        block = replace(block, transactions=(model_update(edge, 1, 5),))
    elif breakage == "block_signature":
        block = replace(block, signature=Identity.generate().sign(bytes.fromhex(block.hash)))
    before = list(view.chain)
    with pytest.raises(InvalidBlock, match=reason):
        view.add(block)
    assert view.chain == before


def test_genesis_must_register_its_proposer():
    view, proposer = MemoryView(), Identity.generate()
    with pytest.raises(InvalidBlock, match="must register its proposer"):
        view.add(Block.create(0, ZERO_HASH, [], proposer))
    with pytest.raises(InvalidBlock, match="expected genesis"):
        view.add(Block.create(1, ZERO_HASH, [], proposer))


def test_each_kind_comes_only_from_its_role(setup):
    view, proposer, edge = setup
    head = view.head()
    order = Transaction.create(TxKind.ROUND, {"job_id": "j", "round": 1, "global_hash": "a" * 64}, edge)
    with pytest.raises(InvalidBlock, match="only the entry node may send ROUND"):
        view.add(Block.create(head.height + 1, head.hash, [order], proposer))
    aggregate = Transaction.create(TxKind.AGGREGATE, {"job_id": "j", "round": 1, "hash": "a" * 64, "samples": 1,
                                                      "updates": []}, edge)
    with pytest.raises(InvalidBlock, match="AGGREGATE transactions come from supernodes"):
        view.add(Block.create(head.height + 1, head.hash, [aggregate], proposer))
    flip = register(edge, role="SN")
    with pytest.raises(InvalidBlock, match="cannot change its role"):
        view.add(Block.create(head.height + 1, head.hash, [flip], proposer))


def test_payload_limits_keep_backends_alike():
    me = Identity.generate()
    for payload, reason in [({"job_id": "Job", "round": 1, "global_hash": "a" * 64}, "lower-case"),
                            ({"job_id": "j", "round": 2**40, "global_hash": "a" * 64}, "out of range")]:
        with pytest.raises(InvalidTransaction, match=reason):
            Transaction.create(TxKind.ROUND, payload, me)
