"""Conversions between chain objects and their protobuf messages, with checks on the way in.

Everything arriving from the network is untrusted: payload bytes must be a JSON object with no
floats (so re-encoding gives the signed bytes back), sizes are bounded, and a malformed message
raises :class:`WireError`, which services turn into INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
from typing import Any

from base_package import data_pb2 as pb
from node.chain.rules import Block, ChainError, Head, Transaction, TxKind, canonical_bytes

MAX_PAYLOAD_BYTES = 64 * 1024
# a JOB names every participant (and its sample cap), an AGGREGATE every update its supernode
# checked: ~75 bytes an edge node, so these grow with the network (1 MiB: ~14,000 edge nodes)
MAX_LISTING_PAYLOAD_BYTES = 1 << 20
LISTING_KINDS = frozenset({TxKind.JOB, TxKind.AGGREGATE})
LISTED_HASH_BYTES = 67  # one listed transaction hash: 64 hex digits, quotes and a comma
MAX_BLOCK_TRANSACTIONS = 10_000


class WireError(ValueError):
    """A message from the network is malformed."""


def _no_floats(text: str) -> Any:
    raise WireError(f"payload holds a float ({text}); hashed data carries numbers as integers or strings")


def tx_to_pb(tx: Transaction) -> pb.Transaction:
    return pb.Transaction(kind=tx.kind, sender=tx.sender, payload=canonical_bytes(tx.payload),
                          timestamp=tx.timestamp, signature=tx.signature)


def tx_from_pb(msg: pb.Transaction) -> Transaction:
    limit = MAX_LISTING_PAYLOAD_BYTES if msg.kind in LISTING_KINDS else MAX_PAYLOAD_BYTES
    if len(msg.payload) > limit:
        raise WireError(f"{msg.kind[:32]} transaction payload is {len(msg.payload)} bytes; the limit is {limit}")
    try:
        payload = json.loads(msg.payload.decode("utf-8"), parse_float=_no_floats,
                             parse_constant=_no_floats)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge integers, deep nesting
        raise WireError(f"transaction payload is not usable JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise WireError(f"transaction payload must be a JSON object, got {type(payload).__name__}")
    if msg.kind == TxKind.AGGREGATE and len(msg.payload) > MAX_PAYLOAD_BYTES:  # large only by what it lists
        listed = payload.get("updates")
        allowed = MAX_PAYLOAD_BYTES + LISTED_HASH_BYTES * (len(listed) if isinstance(listed, list) else 0)
        if len(msg.payload) > allowed:
            raise WireError(f"AGGREGATE payload is {len(msg.payload)} bytes; listing {len(listed or [])} updates "
                            f"it may be {allowed}")
    return Transaction(msg.kind, msg.sender, payload, msg.timestamp, bytes(msg.signature))


def block_to_pb(block: Block) -> pb.Block:
    return pb.Block(height=block.height, prev_hash=block.prev_hash, merkle_root=block.merkle_root,
                    timestamp=block.timestamp, proposer=block.proposer, signature=block.signature,
                    transactions=[tx_to_pb(t) for t in block.transactions])


def block_from_pb(msg: pb.Block) -> Block:
    if len(msg.transactions) > MAX_BLOCK_TRANSACTIONS:
        raise WireError(f"block holds {len(msg.transactions)} transactions; the limit is {MAX_BLOCK_TRANSACTIONS}")
    return Block(msg.height, msg.prev_hash, msg.merkle_root, msg.timestamp, msg.proposer, bytes(msg.signature),
                 tuple(tx_from_pb(t) for t in msg.transactions))


def head_to_pb(head: Head | None) -> pb.Head:
    return pb.Head(height=-1, hash="") if head is None else pb.Head(height=head.height, hash=head.hash)


def signed_fields(fields: dict[str, Any]) -> bytes:
    """The bytes a node signs for a non-transaction message (heartbeat, model header)."""
    try:
        return canonical_bytes(fields)
    except ChainError as exc:
        raise WireError(str(exc)) from None
