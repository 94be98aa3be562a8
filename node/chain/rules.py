"""Chain rules: transactions, blocks, their hashes and signatures, and block validation.

Everything hashed goes through one canonical encoding (JSON with sorted keys, fixed separators,
UTF-8, and no floats: a float has more than one textual form, so metrics travel as fixed-point
strings made by :func:`fixed`). A transaction's hash is the SHA-256 of its canonical body and
its sender signs those 32 bytes; a block's hash is the SHA-256 of its canonical header (which
holds the Merkle root of its transactions) and its proposer signs that.

The entry supernode creates the genesis block, whose proposer becomes the chain's only
authorised proposer (proof of authority). Every node validates a block against its own copy
of the chain before storing it; :func:`validate_block` raises :class:`InvalidBlock` with the
reason and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

from node.chain.identity import Identity, node_id_for, verify_signature

ZERO_HASH = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NODE_ID = re.compile(r"[0-9a-f]{32}")


class TxKind(StrEnum):
    REGISTER = "REGISTER"  # a node joins (or changes its address): carries its public key
    JOB = "JOB"  # a federated job and its settings
    ROUND = "ROUND"  # the entry node opens a round with the global base's hash
    MODEL_UPDATE = "MODEL_UPDATE"  # an edge node's base-layer update
    AGGREGATE = "AGGREGATE"  # a supernode's partial aggregate of its edge nodes' updates
    GLOBAL_MODEL = "GLOBAL_MODEL"  # the entry node's combined global base for the next round
    SCORE = "SCORE"  # a node's contribution score in a round
    SAVE = "SAVE"  # a saved model file's hash
    EXCLUDED = "EXCLUDED"  # a node left out of a round, and why
    ENROLL = "ENROLL"  # the operator admitted a node (its key and role) and certified its TLS key
    REVOKE = "REVOKE"  # the operator expelled a node: nothing of it is valid from here on
    ROUND_FAILED = "ROUND_FAILED"  # an attempt at a round failed, and why; the entry node tries it again


# Required payload fields and their types, per kind; other fields may be added freely.
_STR, _INT, _HASH, _LIST, _DICT = "str", "int", "hash", "list", "dict"
PAYLOAD_FIELDS: dict[TxKind, dict[str, str]] = {
    TxKind.REGISTER: {"public_key": _HASH, "role": _STR, "address": _STR},
    TxKind.JOB: {"job_id": _STR, "spec": _DICT},
    TxKind.ROUND: {"job_id": _STR, "round": _INT, "global_hash": _HASH},
    TxKind.MODEL_UPDATE: {"job_id": _STR, "round": _INT, "hash": _HASH, "samples": _INT, "size": _INT},
    TxKind.AGGREGATE: {"job_id": _STR, "round": _INT, "samples": _INT, "updates": _LIST},
    TxKind.GLOBAL_MODEL: {"job_id": _STR, "round": _INT, "hash": _HASH, "samples": _INT},
    TxKind.SCORE: {"job_id": _STR, "round": _INT, "node": _STR, "score": _STR},
    TxKind.SAVE: {"job_id": _STR, "hash": _HASH, "path": _STR},
    TxKind.EXCLUDED: {"job_id": _STR, "round": _INT, "node": _STR, "reason": _STR},
    TxKind.ENROLL: {"node": _STR, "public_key": _HASH, "role": _STR, "token": _STR, "certificate": _HASH},
    TxKind.REVOKE: {"node": _STR, "reason": _STR},
    TxKind.ROUND_FAILED: {"job_id": _STR, "round": _INT, "attempt": _INT, "reason": _STR},
}
# Optional fields, checked when present. An AGGREGATE has a partial (its hash) only when the job's
# rule decomposes (a mean); for a median or Krum it lists the updates it checked.
# A GLOBAL_MODEL names the AGGREGATE transactions it combined (their hashes), so an auditor uses
# exactly those. Lists of hashes hold 64-hex strings only.
OPTIONAL_FIELDS: dict[TxKind, dict[str, str]] = {TxKind.AGGREGATE: {"hash": _HASH},
                                                 TxKind.GLOBAL_MODEL: {"aggregates": _LIST},
                                                 TxKind.REGISTER: {"datasets": _LIST},  # an edge node's data
                                                 TxKind.ENROLL: {"max_samples": _INT},  # the operator's cap on it
                                                 TxKind.JOB: {"sample_caps": _DICT}}  # own-data jobs: per edge node
HASH_LISTS = {(TxKind.AGGREGATE, "updates"), (TxKind.GLOBAL_MODEL, "aggregates")}
ROLES = ("SN", "EN")
# Who may send what: the entry node (the proposer) runs jobs and admits or expels nodes,
# supernodes aggregate and report, edge nodes send updates; an enrolled node registers itself.
PROPOSER_KINDS = {TxKind.JOB, TxKind.ROUND, TxKind.GLOBAL_MODEL, TxKind.SAVE, TxKind.ENROLL, TxKind.REVOKE,
                  TxKind.ROUND_FAILED}
KIND_ROLES: dict[TxKind, str] = {TxKind.AGGREGATE: "SN", TxKind.EXCLUDED: "SN", TxKind.SCORE: "SN",
                                 TxKind.MODEL_UPDATE: "EN"}
MAX_INT = 2**53  # exact in every JSON reader
MAX_ROUND = 2**31 - 1
_JOB_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # lower case: MySQL compares case-insensitively
_MAX_TEXT = {"address": 255, "reason": 1000, "path": 1024, "score": 64, "token": 64}


class ChainError(ValueError):
    """Something about a transaction or block breaks the chain rules."""


class InvalidTransaction(ChainError):
    pass


class InvalidBlock(ChainError):
    pass


# --- canonical encoding -------------------------------------------------------------------------
_SCALARS = (str, int, bool, type(None))


def _non_canonical(value: Any) -> str | None:
    """Why ``value`` cannot be encoded canonically, or None. Iterative, with exact type tests:
    it runs on every payload a node hashes, so it must be cheap."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is float:
            return f"floats are not allowed in hashed data ({item!r}); use fixed(x) for a fixed-point string"
        if isinstance(item, Mapping):
            for key, child in item.items():
                if type(key) is not str:
                    return f"keys must be strings, got {key!r}"
                stack.append(child)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif not isinstance(item, _SCALARS):
            return f"{type(item).__name__} cannot be hashed canonically"
    return None


def canonical_bytes(value: Any) -> bytes:
    """The one byte encoding of ``value`` that is hashed and signed."""
    if (problem := _non_canonical(value)) is not None:
        raise ChainError(problem)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fixed(x: float, digits: int = 6) -> str:
    """A metric as a fixed-point string, so the same number always hashes the same way."""
    return f"{x:.{digits}f}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def merkle_root(tx_hashes: Sequence[str]) -> str:
    """Merkle root over hex transaction hashes (leaf and node hashes domain-separated; an odd
    node is carried up unchanged). An empty block's root is SHA-256 of nothing."""
    if not tx_hashes:
        return sha256_hex(b"")
    level = [hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest() for h in tx_hashes]
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


# --- transactions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transaction:
    kind: str
    sender: str  # node id of the signer
    payload: Mapping[str, Any]
    timestamp: int  # milliseconds since the epoch
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"kind": self.kind, "sender": self.sender, "payload": self.payload, "timestamp": self.timestamp}

    @cached_property
    def hash(self) -> str:
        return sha256_hex(canonical_bytes(self.body()))

    @classmethod
    def create(
        cls, kind: str, payload: Mapping[str, Any], identity: Identity, timestamp: int | None = None
    ) -> "Transaction":
        """A transaction signed by ``identity``; its payload is checked against its kind."""
        unsigned = cls(str(TxKind(kind)), identity.node_id, dict(payload), now_ms() if timestamp is None else timestamp)
        check_payload(unsigned)
        return cls(unsigned.kind, unsigned.sender, unsigned.payload, unsigned.timestamp,
                   identity.sign(bytes.fromhex(unsigned.hash)))

    def signed_by(self, public_key: bytes) -> bool:
        """True when ``public_key`` made this transaction's signature (over its hash)."""
        return verify_signature(public_key, self.signature, bytes.fromhex(self.hash))

    @property
    def round(self) -> int | None:
        value = self.payload.get("round")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def _field_ok(value: Any, kind: str) -> bool:
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_INT
    if kind == _HASH:
        return isinstance(value, str) and bool(_HEX64.fullmatch(value))
    return isinstance(value, {_STR: str, _LIST: (list, tuple), _DICT: Mapping}[kind])


def check_payload(tx: Transaction) -> None:
    """Raise :class:`InvalidTransaction` unless ``tx`` is well formed for its kind."""
    try:
        kind = TxKind(tx.kind)
    except ValueError:
        raise InvalidTransaction(f"unknown transaction kind {tx.kind!r}; known: {', '.join(TxKind)}") from None
    if not isinstance(tx.sender, str) or not _NODE_ID.fullmatch(tx.sender):
        raise InvalidTransaction(f"sender {tx.sender!r} is not a node id (32 hex digits)")
    if isinstance(tx.timestamp, bool) or not isinstance(tx.timestamp, int) or tx.timestamp < 0:
        raise InvalidTransaction(f"timestamp {tx.timestamp!r} is not a non-negative integer (ms)")
    if not isinstance(tx.payload, Mapping):
        raise InvalidTransaction(f"{kind} payload must be a mapping, got {type(tx.payload).__name__}")
    for name, expected in PAYLOAD_FIELDS[kind].items():
        if name not in tx.payload:
            raise InvalidTransaction(f"{kind} payload lacks {name!r}")
        if not _field_ok(tx.payload[name], expected):
            raise InvalidTransaction(f"{kind} payload field {name!r}={tx.payload[name]!r} is not a valid {expected}")
    for name, expected in OPTIONAL_FIELDS.get(kind, {}).items():
        if name in tx.payload and not _field_ok(tx.payload[name], expected):
            raise InvalidTransaction(f"{kind} payload field {name!r}={tx.payload[name]!r} is not a valid {expected}")
    _check_limits(kind, tx.payload)
    try:
        tx.hash  # noqa: B018 - encodes the body canonically once (then cached), refusing floats
    except (ChainError, ValueError, RecursionError) as exc:
        raise InvalidTransaction(f"{kind} payload cannot be encoded canonically: {exc}") from None
    if kind is TxKind.REGISTER:
        if tx.payload["role"] not in ROLES:
            raise InvalidTransaction(f"REGISTER role {tx.payload['role']!r} must be one of {ROLES}")
        if node_id_for(bytes.fromhex(tx.payload["public_key"])) != tx.sender:
            raise InvalidTransaction("REGISTER public key does not belong to the sender id")
        supernode = tx.payload.get("supernode", "")
        if not isinstance(supernode, str) or (supernode and not _NODE_ID.fullmatch(supernode)):
            raise InvalidTransaction(f"REGISTER supernode {supernode!r} is not a node id")
        datasets = tx.payload.get("datasets", [])
        if len(datasets) > 16 or not all(isinstance(d, str) and 0 < len(d) <= 32 for d in datasets):
            raise InvalidTransaction("REGISTER datasets must be at most 16 names of at most 32 characters")
    elif kind is TxKind.ENROLL:
        if tx.payload["role"] not in ROLES:
            raise InvalidTransaction(f"ENROLL role {tx.payload['role']!r} must be one of {ROLES}")
        if node_id_for(bytes.fromhex(tx.payload["public_key"])) != tx.payload["node"]:
            raise InvalidTransaction("ENROLL public key does not belong to the enrolled node id")


def _check_limits(kind: TxKind, payload: Mapping[str, Any]) -> None:
    """Bounds every database backend can store alike (lengths, integer ranges, id formats)."""
    for name in (n for k, n in HASH_LISTS if k == kind and n in payload):
        if not all(isinstance(h, str) and _HEX64.fullmatch(h) for h in payload[name]):
            raise InvalidTransaction(f"{kind} {name} must list 64-hex-digit hashes")
    job_id = payload.get("job_id")
    if job_id is not None and (not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id)):
        raise InvalidTransaction(f"{kind} job_id {job_id!r} must be 1-64 lower-case letters, digits, '.', '_' or '-'")
    if "round" in payload and isinstance(payload["round"], int) and payload["round"] > MAX_ROUND:
        raise InvalidTransaction(f"{kind} round {payload['round']} is out of range")
    for name, limit in _MAX_TEXT.items():
        if isinstance(payload.get(name), str) and len(payload[name]) > limit:
            raise InvalidTransaction(f"{kind} {name} is longer than {limit} characters")
    node = payload.get("node")
    if node is not None and (not isinstance(node, str) or not _NODE_ID.fullmatch(node)):
        raise InvalidTransaction(f"{kind} node {node!r} is not a node id")


def check_sender_role(tx: Transaction, role: str | None, proposer: str | None) -> None:
    """Raise :class:`InvalidTransaction` unless the sender's role may send this kind."""
    kind = TxKind(tx.kind)
    if kind in PROPOSER_KINDS and tx.sender != proposer:
        raise InvalidTransaction(f"only the entry node may send {kind} transactions")
    wanted = KIND_ROLES.get(kind)
    if wanted is not None and role != wanted:
        raise InvalidTransaction(f"{kind} transactions come from {'supernodes' if wanted == 'SN' else 'edge nodes'}; "
                                 f"{tx.sender} is {'an unknown node' if role is None else f'a {role}'}")


def register_key(tx: Transaction) -> bytes | None:
    """The public key a well-formed REGISTER transaction introduces, else None."""
    if tx.kind != TxKind.REGISTER:
        return None
    return bytes.fromhex(tx.payload["public_key"])


# --- blocks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    height: int
    prev_hash: str
    merkle_root: str
    timestamp: int
    proposer: str
    signature: bytes = b""
    transactions: tuple[Transaction, ...] = field(default=())

    def header(self) -> dict[str, Any]:
        return {"height": self.height, "prev_hash": self.prev_hash, "merkle_root": self.merkle_root,
                "timestamp": self.timestamp, "proposer": self.proposer}

    @cached_property
    def hash(self) -> str:
        return sha256_hex(canonical_bytes(self.header()))

    @classmethod
    def create(
        cls,
        height: int,
        prev_hash: str,
        transactions: Iterable[Transaction],
        identity: Identity,
        timestamp: int | None = None,
    ) -> "Block":
        txs = tuple(transactions)
        unsigned = cls(height, prev_hash, merkle_root([t.hash for t in txs]),
                       now_ms() if timestamp is None else timestamp, identity.node_id)
        return cls(unsigned.height, unsigned.prev_hash, unsigned.merkle_root, unsigned.timestamp,
                   unsigned.proposer, identity.sign(bytes.fromhex(unsigned.hash)), txs)


def genesis_block(identity: Identity, address: str, timestamp: int | None = None) -> Block:
    """Block 0: the entry supernode registers itself and so becomes the chain's proposer."""
    register = Transaction.create(
        TxKind.REGISTER, {"public_key": identity.public_key.hex(), "role": "SN", "address": address,
                          "proposer": True}, identity, timestamp)
    return Block.create(0, ZERO_HASH, [register], identity, timestamp)


@dataclass(frozen=True)
class Head:
    height: int
    hash: str


@dataclass(frozen=True)
class Registration:
    """What the chain says about a node: the key it registered and its role."""

    public_key: bytes
    role: str


@dataclass(frozen=True)
class Enrolment:
    """What the chain says about a node's admission: the key and role the operator enrolled, and
    whether the operator has revoked it since."""

    public_key: bytes
    role: str
    revoked: bool = False


@dataclass
class Membership:
    """The chain's membership as far as a walk over it has got: registered keys and roles,
    enrolments. Block validation fills it from its view for the nodes a block names; the audit
    carries it from genesis."""

    keys: dict[str, bytes] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    enrolled: dict[str, Enrolment] = field(default_factory=dict)

    def admit(self, tx: Transaction, proposer: str | None) -> bytes:
        """Apply the membership rules to ``tx`` (the next transaction in chain order), learn what
        it changes, and return the key its signature must verify with. Raises
        :class:`InvalidTransaction` with the reason."""
        kind, sender, p = TxKind(tx.kind), tx.sender, tx.payload
        standing = self.enrolled.get(sender)
        if standing is not None and standing.revoked:
            raise InvalidTransaction(f"node {sender} was revoked; nothing it sends is valid")
        if kind is TxKind.REGISTER:
            key, role = bytes.fromhex(p["public_key"]), p["role"]
            if self.keys.setdefault(sender, key) != key:
                raise InvalidTransaction(f"node {sender} is registered with another key")
            if self.roles.setdefault(sender, role) != role:
                raise InvalidTransaction(f"node {sender} cannot change its role")
            if sender != proposer and (standing is None or standing.public_key != key or standing.role != role):
                raise InvalidTransaction(f"node {sender} registers as {role} without an ENROLL of that key and role")
        elif sender not in self.keys:
            raise InvalidTransaction(f"sender {sender} is not a registered node")
        check_sender_role(tx, self.roles.get(sender), proposer)
        if kind is TxKind.ENROLL:
            node, key, role = p["node"], bytes.fromhex(p["public_key"]), p["role"]
            before = self.enrolled.get(node)
            if node == proposer:
                raise InvalidTransaction("the entry node is admitted by the genesis block, not by ENROLL")
            if before is not None and (before.revoked or before.role != role):
                raise InvalidTransaction(f"node {node} is {'revoked' if before.revoked else f'enrolled as {before.role}'}; "
                                         f"it cannot be enrolled as {role}")
            self.enrolled[node] = Enrolment(key, role)
        elif kind is TxKind.REVOKE:
            node = p["node"]
            if node not in self.enrolled:
                raise InvalidTransaction(f"REVOKE names node {node}, which was never enrolled")
            self.enrolled[node] = Enrolment(self.enrolled[node].public_key, self.enrolled[node].role, True)
        return self.keys[sender]


class ChainView(Protocol):
    """What validation needs to know about the chain a block would extend."""

    def head(self) -> Head | None: ...

    def proposer(self) -> str | None: ...

    def registrations(self, node_ids: Iterable[str]) -> dict[str, Registration]: ...

    def enrolments(self, node_ids: Iterable[str]) -> dict[str, Enrolment]: ...

    def existing_transactions(self, tx_hashes: Iterable[str]) -> set[str]: ...

    def existing_jobs(self, job_ids: Iterable[str]) -> set[str]: ...


def validate_block(block: Block, view: ChainView) -> None:
    """Raise :class:`InvalidBlock` (with the reason) unless ``block`` may extend ``view``'s head."""
    _check_header_fields(block)
    head = view.head()
    if head is None:
        if block.height != 0 or block.prev_hash != ZERO_HASH:
            raise InvalidBlock(f"the chain is empty: expected genesis (height 0), got height {block.height}")
        proposer = block.proposer
    else:
        if block.height != head.height + 1:
            raise InvalidBlock(f"height {block.height} does not follow the head at height {head.height}")
        if block.prev_hash != head.hash:
            raise InvalidBlock(f"prev_hash {block.prev_hash[:16]}… is not the head's hash {head.hash[:16]}…")
        proposer = view.proposer()
        if block.proposer != proposer:
            raise InvalidBlock(f"proposer {block.proposer} is not the chain's authorised proposer {proposer}")
    for index, tx in enumerate(block.transactions):
        try:
            check_payload(tx)
        except InvalidTransaction as exc:
            raise InvalidBlock(f"block {block.height} transaction {index}: {exc}") from None
    hashes = [t.hash for t in block.transactions]
    if merkle_root(hashes) != block.merkle_root:
        raise InvalidBlock(f"block {block.height}: the Merkle root does not match its transactions")
    if len(set(hashes)) != len(hashes):
        raise InvalidBlock(f"block {block.height} holds the same transaction twice")
    if existing := view.existing_transactions(hashes):
        raise InvalidBlock(f"block {block.height} repeats transaction {sorted(existing)[0][:16]}… already on the chain")
    job_ids = [t.payload["job_id"] for t in block.transactions if t.kind == TxKind.JOB]
    if repeated := sorted({j for j in job_ids if job_ids.count(j) > 1} | view.existing_jobs(job_ids)):
        raise InvalidBlock(f"block {block.height} starts job {repeated[0]!r} again: a job id is used once")

    senders = {t.sender for t in block.transactions} | {block.proposer}
    named = {t.payload["node"] for t in block.transactions if t.kind in (TxKind.ENROLL, TxKind.REVOKE)}
    known = view.registrations(senders)
    members = Membership({n: r.public_key for n, r in known.items()}, {n: r.role for n, r in known.items()},
                         view.enrolments(senders | named))
    for index, tx in enumerate(block.transactions):
        try:
            key = members.admit(tx, proposer)
        except InvalidTransaction as exc:
            raise InvalidBlock(f"block {block.height} transaction {index}: {exc}") from None
        if not tx.signed_by(key):
            raise InvalidBlock(f"block {block.height} transaction {index} ({tx.kind}): bad signature")
    if head is None and not any(t.kind == TxKind.REGISTER and t.sender == proposer for t in block.transactions):
        raise InvalidBlock("the genesis block must register its proposer")
    proposer_key = members.keys.get(block.proposer)
    if proposer_key is None or not verify_signature(proposer_key, block.signature, bytes.fromhex(block.hash)):
        raise InvalidBlock(f"block {block.height}: bad proposer signature")


def _check_header_fields(block: Block) -> None:
    if isinstance(block.height, bool) or not isinstance(block.height, int) or block.height < 0:
        raise InvalidBlock(f"height {block.height!r} is not a non-negative integer")
    for name in ("prev_hash", "merkle_root"):
        if not isinstance(getattr(block, name), str) or not _HEX64.fullmatch(getattr(block, name)):
            raise InvalidBlock(f"{name} is not a 64-digit lower-case hex hash")
    if not isinstance(block.proposer, str) or not _NODE_ID.fullmatch(block.proposer):
        raise InvalidBlock(f"proposer {block.proposer!r} is not a node id")
    if isinstance(block.timestamp, bool) or not isinstance(block.timestamp, int) or block.timestamp < 0:
        raise InvalidBlock(f"timestamp {block.timestamp!r} is not a non-negative integer (ms)")
    try:
        block.hash
    except ChainError as exc:
        raise InvalidBlock(str(exc)) from None


def genesis_proposer(genesis: Block) -> tuple[str, bytes]:
    """The entry node's id and key from a genesis block, checked (its REGISTER of the proposer
    and the proposer's signature): the trust anchor for everything the entry node signs."""
    if genesis.height != 0:
        raise InvalidBlock(f"block {genesis.height} is not a genesis block")
    for tx in genesis.transactions:
        key = register_key(tx)
        if key is not None and tx.sender == genesis.proposer and node_id_for(key) == genesis.proposer \
                and verify_signature(key, genesis.signature, bytes.fromhex(genesis.hash)):
            return genesis.proposer, key
    raise InvalidBlock("the genesis block does not register its proposer with a valid signature")
