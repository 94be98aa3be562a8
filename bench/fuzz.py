"""Fuzz every RPC of every service on a running network, and count the answers by status code.

One copy of the fuzzer: the request generators (hypothesis strategies built from the wire
contract's descriptors), the callers, the judgement of each answer and the checks on the network
afterwards live here; ``tests/test_fuzz.py`` runs them in CI on ~1,400 requests, this script on as
many as you like and prints one table: service/method × status code.

What is sent. Every RPC of ``proto/data.proto``, found through ``pb.DESCRIPTOR`` (an RPC added to
the contract is fuzzed with no change here), through gRPC's generic calls with raw bytes: random
bytes; messages with random fields and boundary values (empty, huge and negative numbers, NaN,
very long and odd unicode strings, nested messages, long repeated fields, unknown enum values);
messages cut short, spliced with junk, of another type, over the 8 MiB message limit; wire-format
traps (lengths past the end, endless varints, groups nested deep); and messages signed by the
caller, so that the checks behind a valid signature run too. The two client-streaming RPCs
(UploadUpdate, DistributeModel) get malformed model streams: none, no header, the header twice,
data before it, a chunk over the message limit, a wrong size or hash, absurd announced sizes, and
consistent streams of valid and broken safetensors.

Who sends it. A supernode (the entry node and a second one) and an edge node are called by: an
enrolled edge node's certificate, an enrolled supernode's (both enrolled for the fuzzer, so their
registrations and heartbeats disturb none of the network's own nodes), the entry node's own (the
only caller a supernode takes blocks, models and rounds from), the console's without and with the
admin token, and a plaintext client (on the TLS port: refused at the handshake, UNAVAILABLE; on
the entry node's enrolment port: admitted to Enrolment only).

What passes. Any status but UNKNOWN and INTERNAL, within the call's deadline (a server's own
DEADLINE_EXCEEDED, answered at once, passes), and OK only for a caller that the README's "Who may
call what" admits. Afterwards every node must still run and answer health checks SERVING, both
supernodes' chains verify and agree, a one-round job completes, ``verify(recompute=True)`` holds
and no node logged a traceback.

    python bench/fuzz.py --requests 20000
    python bench/fuzz.py --requests 2000 --seed 7 --timeout 10
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from google.protobuf import message_factory  # noqa: E402
from google.protobuf.descriptor import Descriptor, FieldDescriptor  # noqa: E402
from google.protobuf.message import Message  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as fixed_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from base_package import data_pb2 as pb  # noqa: E402
from base_package import data_pb2_grpc as rpc_pb  # noqa: E402
from config import load_config, my_conf  # noqa: E402
from fl.federation import JobSpec  # noqa: E402
from node.chain.identity import Identity  # noqa: E402
from node.chain.rules import PAYLOAD_FIELDS, Block, ChainError, Transaction, TxKind, merkle_root, now_ms  # noqa: E402
from node.dev.launcher import NodeProcess, wait_until  # noqa: E402
from node.net import streams  # noqa: E402
from node.net.tls import NETWORK_NAME, Credentials, signing_request  # noqa: E402
from node.net.wire import WireError, signed_fields, tx_from_pb, tx_to_pb  # noqa: E402
from node.roles.enrolment import Token, enrol, enrolment_message, proof  # noqa: E402
from node.roles.jobs import job_payload, order_fields  # noqa: E402
from node.roles.membership import heartbeat_fields, register_transaction  # noqa: E402

TIMEOUT_S = 10.0  # every call's deadline: a call still open then counts as a hang
# the fuzzer's channels send and take up to 64 MiB, so a message over a node's 8 MiB limit reaches
# the node (which must refuse it) instead of being stopped by this client
FUZZ_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
JOB = {"dataset": "digits", "partition": "pathological", "batch_size": "16", "lr": "0.05", "rounds": "1",
       "local_epochs": "1"}  # the one-round job that must still complete after the fuzzing


# --- the wire contract -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Rpc:
    service: str
    method: str
    request: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def name(self) -> str:
        return f"{self.service}/{self.method}"

    @property
    def path(self) -> str:
        return f"/{pb.DESCRIPTOR.package}.{self.service}/{self.method}"


def all_rpcs() -> list[Rpc]:
    """Every RPC of every service, from the generated descriptor: a new RPC is fuzzed unasked."""
    return [Rpc(s.name, m.name, m.input_type, m.client_streaming, m.server_streaming)
            for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]


# --- who may get OK: the README's "Who may call what" ----------------------------------------------
# Roles a caller can hold: SN, EN (its certificate), entry (the entry node's certificate), console
# (the console's certificate), admin (that and the admin token), anyone (any caller at all).
_READERS = frozenset({"SN", "EN", "console"})
SUPERNODE_ADMITS: dict[str, frozenset[str]] = {
    "Enrolment/GetNetwork": frozenset({"anyone"}), "Enrolment/Enrol": frozenset({"anyone"}),
    "Membership/Register": frozenset({"SN", "EN"}), "Membership/Heartbeat": frozenset({"SN", "EN"}),
    "Membership/ListNodes": _READERS, "Membership/FindSupernode": frozenset({"EN"}),
    "Ledger/SubmitTransaction": frozenset({"SN"}), "Ledger/PushBlock": frozenset({"entry"}),
    "Ledger/GetBlocks": _READERS, "Ledger/GetHead": _READERS,
    "Training/UploadUpdate": frozenset({"EN"}), "Training/DistributeModel": frozenset({"entry"}),
    "Training/DownloadModel": frozenset({"SN", "EN", "admin"}), "Training/RunRound": frozenset({"entry"}),
    "Training/TrainRound": frozenset(),
    **{f"Console/{m.name}": frozenset({"admin"}) for m in pb.DESCRIPTOR.services_by_name["Console"].methods},
}
EDGE_ADMITS = {"Training/DistributeModel", "Training/TrainRound"}  # from its supernode only
ENTRY_ONLY = {"Enrolment/GetNetwork", "Enrolment/Enrol", "Membership/FindSupernode"}
NOT_ON_ENTRY = {"Ledger/PushBlock", "Training/DistributeModel", "Training/RunRound"}


@dataclass(frozen=True)
class Target:
    """A node being fuzzed."""

    name: str
    role: str  # SN or EN
    is_entry: bool
    node_id: str
    supernode: str = ""  # an edge node's: the caller role that serves it ("entry": the entry node)


@dataclass(frozen=True)
class Caller:
    """Who calls: the certificate presented (None: plaintext), the metadata sent, the roles the
    rules may admit it as, the key it signs payloads with, and the port it calls on."""

    name: str
    roles: frozenset[str]
    credentials: Credentials | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    identity: Identity | None = None
    enrol_port: bool = False

    @property
    def refused_at_tls(self) -> bool:
        """Plaintext on a mutual-TLS port: the handshake fails before any RPC exists."""
        return self.credentials is None and not self.enrol_port


def may_succeed(rpc: str, target: Target, caller: Caller) -> bool | None:
    """Whether the rules admit ``caller`` to ``rpc`` on ``target`` (so OK is possible); None for an
    RPC newer than the table, whose answers are judged by their codes alone."""
    if rpc not in SUPERNODE_ADMITS:
        return None
    if target.role == "EN":
        allowed = frozenset({target.supernode}) if rpc in EDGE_ADMITS else frozenset()
    elif (rpc in ENTRY_ONLY and not target.is_entry) or (rpc in NOT_ON_ENTRY and target.is_entry):
        allowed = frozenset()
    else:
        allowed = SUPERNODE_ADMITS[rpc]
    return bool(allowed & caller.roles)


Texts = st.SearchStrategy[str]
Signers = tuple[Identity, ...]


# --- scalar values, boundaries first ------------------------------------------------------------------
INT64_EDGES = (0, 1, -1, 2, 500, 501, 2**31 - 1, 2**31, -2**31, 2**32, 2**53, 2**53 + 1, 2**63 - 1, -2**63)
FLOAT_EDGES = (0.0, -0.0, 5e-324, 1e-300, 1.0, -1.0, 1e308, math.inf, -math.inf, math.nan)
LONG = (1_000, 70_000, 1 << 20)  # lengths of long strings and bytes (the last: megabytes of UTF-8)
CONFIG_KEYS = (*my_conf, "rounds", "clients", "lr", "batch_size", "local_epochs", "eval_every_round")
SPECIAL_TEXT = ("", " ", "\x00", "\u202e\ufeff\u200b", "日本語🙂", "../../../../etc/passwd", "C:\\con", "%s%n%x",
                "' OR '1'='1", "SN", "EN", "console", "train", "evaluate", "job-1", "nan", "inf", "-1", "1e309",
                "true", "0x7fffffff", "127.0.0.1:1", "[::1]:0", "localhost:99999", "mnist", "cifar", "pfllib",
                "fedavg", "krum", "median", "cuda", *TxKind, *CONFIG_KEYS)  # never 'digits': a fuzzed job would run
_PEM_JUNK = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
_DEEP_JSON = (b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
SPECIAL_BYTES = (b"", b"\x00", b"\x00" * 32, b"\xff" * 64, b"{}", b"[]", b"null", b'{"a":1.5}', b'{"a":NaN}',
                 b'{"n":' + b"9" * 5000 + b"}", b"\x80\x81", _PEM_JUNK, *_DEEP_JSON)


def integers(bits: int = 64, signed: bool = True) -> st.SearchStrategy[int]:
    lo, hi = (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
    edges = sorted({v for v in (*INT64_EDGES, lo, hi, hi - 1) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -3), 3))


def hex_text(length: int) -> st.SearchStrategy[str]:
    """A hash (64) or node id (32) by its shape: it passes the first format check."""
    return st.text("0123456789abcdef", min_size=length, max_size=length)


def texts(pool: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Strings: special ones, random unicode, hashes and ids by shape, names worth naming (``pool``),
    and now and then a long one (up to 4 MiB of UTF-8: rare, or every request would be refused for
    its size alone)."""
    options = [st.sampled_from(SPECIAL_TEXT), st.text(max_size=24), hex_text(64), hex_text(32)]
    if pool:
        options.append(st.sampled_from(tuple(pool)))
    long = st.tuples(st.characters(), st.sampled_from(LONG)).map(lambda t: t[0] * t[1])
    return either(*[st.one_of(options)] * 12, long)


def blobs() -> st.SearchStrategy[bytes]:
    long = st.tuples(st.binary(min_size=1, max_size=3), st.sampled_from(LONG)).map(lambda t: t[0] * t[1])
    return either(*[st.binary(max_size=48)] * 6, *[st.sampled_from(SPECIAL_BYTES)] * 3, long)


def timestamps() -> st.SearchStrategy[int]:
    """Epoch milliseconds: now (drawn when used), around now, and absurd."""
    return st.one_of(st.integers(-10_000, 10_000).map(lambda d: now_ms() + d), st.sampled_from(INT64_EDGES))


def either(*options: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``options`` with equal weight each (``st.one_of`` would flatten nested choices)."""
    return st.sampled_from(options).flatmap(lambda s: s)


def mostly(likely: st.SearchStrategy[Any], rest: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``likely`` three times in four: signed messages get past their first checks often enough to
    exercise the ones behind them."""
    return either(likely, likely, likely, rest)


def good_signatures() -> st.SearchStrategy[bool]:
    return mostly(st.just(True), st.just(False))


def recent() -> st.SearchStrategy[int]:
    """Timestamps a node accepts as fresh, mostly."""
    return mostly(st.integers(-2_000, 2_000).map(lambda d: now_ms() + d), timestamps())


# --- messages from their descriptors ---------------------------------------------------------------------
_T = FieldDescriptor
_UNSIGNED = {_T.TYPE_UINT32, _T.TYPE_FIXED32, _T.TYPE_UINT64, _T.TYPE_FIXED64}
_WIDE = {_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64, _T.TYPE_UINT64, _T.TYPE_FIXED64}


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def field_values(f: FieldDescriptor, text: st.SearchStrategy[str], depth: int) -> st.SearchStrategy[Any]:
    """Values for one field, repeated and map fields included."""
    if _is_map(f):
        key, value = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        return st.dictionaries(_single(key, text, depth), _single(value, text, depth), max_size=4)
    one = _single(f, text, depth)
    if not f.is_repeated:
        return one
    if f.message_type is None:
        return st.lists(one, max_size=4)
    cls = message_factory.GetMessageClass(f.message_type)
    return either(st.lists(one, max_size=3), st.sampled_from((501, 10_001)).map(lambda n: [cls() for _ in range(n)]))


def _single(f: FieldDescriptor, text: st.SearchStrategy[str], depth: int) -> st.SearchStrategy[Any]:
    kind = f.type
    if kind == _T.TYPE_MESSAGE:
        if depth <= 0:
            return st.just(message_factory.GetMessageClass(f.message_type)())
        return messages(f.message_type, text, depth - 1)
    if kind == _T.TYPE_ENUM:  # proto3 enums are open: unknown numbers travel too
        return st.one_of(st.sampled_from([v.number for v in f.enum_type.values]), integers(32))
    if kind == _T.TYPE_STRING:
        return text
    if kind == _T.TYPE_BYTES:
        return blobs()
    if kind == _T.TYPE_BOOL:
        return st.booleans()
    if kind == _T.TYPE_DOUBLE:
        return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats())
    if kind == _T.TYPE_FLOAT:
        return st.one_of(st.sampled_from((0.0, -0.0, math.inf, -math.inf, math.nan)), st.floats(width=32))
    return integers(64 if kind in _WIDE else 32, kind not in _UNSIGNED)


def build_message(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        f = msg.DESCRIPTOR.fields_by_name[name]
        slot = getattr(msg, name)
        if _is_map(f):
            for k, v in value.items():
                slot[k].CopyFrom(v) if isinstance(v, Message) else slot.__setitem__(k, v)
        elif f.is_repeated:
            slot.extend(value)
        elif f.message_type is not None:
            slot.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def messages(desc: Descriptor, text: st.SearchStrategy[str], depth: int = 3) -> st.SearchStrategy[Message]:
    """Messages of type ``desc``: any subset of fields set, each to a random or boundary value."""
    cls = message_factory.GetMessageClass(desc)
    optional = {f.name: field_values(f, text, depth) for f in desc.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: build_message(cls, values))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = b"\x0a" + _varint(len(inner)) + inner
    return inner


OVERSIZED = b"\x12" + _varint((9 << 20)) + b"\x00" * (9 << 20)  # one field of 9 MiB: over the 8 MiB limit
WIRE_TRAPS = (
    b"", b"\x00", b"\x07", b"\x0f\x00",  # field number 0, wire type 7, a bad group end
    b"\x0a\xff\xff\xff\xff\x0f",  # a length of 4 GiB, and nothing after it
    b"\x12\x05abc",  # a length past the end
    b"\x08" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
    b"\x0b" * 200 + b"\x0c" * 200, b"\x0b" * 1000,  # groups nested 200 deep; groups never closed
    _nested(120), _nested(5000),  # length-delimited fields nested past the parser's limit
    OVERSIZED,
)
_OTHER_TYPES = tuple(pb.DESCRIPTOR.message_types_by_name.values())


def _splice(t: tuple[bytes, int, bytes]) -> bytes:
    data, at, junk = t
    at %= len(data) + 1
    return data[:at] + junk + data[at + len(junk):]


def wire_requests(desc: Descriptor, text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """Request bytes for a method taking ``desc``: random fields, raw bytes, traps, damaged
    messages and messages of other types."""
    encoded = messages(desc, text).map(lambda m: m.SerializeToString())
    return either(
        encoded,
        st.binary(max_size=256),
        st.sampled_from(WIRE_TRAPS),
        st.tuples(encoded, st.integers(0, 1 << 20)).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)]),  # cut short
        st.tuples(encoded, st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)).map(_splice),
        st.sampled_from(_OTHER_TYPES).flatmap(lambda d: messages(d, text, 1)).map(lambda m: m.SerializeToString()),
    )


# --- model bytes ------------------------------------------------------------------------------------------
def safetensors(tensors: dict[str, Any], data: bytes, header: bytes | None = None, length: int | None = None) -> bytes:
    header = json.dumps(tensors).encode() if header is None else header
    return (len(header) if length is None else length).to_bytes(8, "little") + header + data


VALID_MODEL = safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8)
BIG_CHUNK = b"\x00" * ((8 << 20) + 1)  # one data message over the 8 MiB limit
BIG_CHUNK_SHA256 = hashlib.sha256(BIG_CHUNK).hexdigest()
_TENSOR = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(("F32", "F64", "I8", "BOOL", "X", "")), st.integers(), st.none()),
    "shape": st.one_of(st.lists(st.integers(-1, 2**64), max_size=4), st.text(max_size=3), st.none()),
    "data_offsets": st.one_of(st.lists(st.integers(-1, 2**64), max_size=3), st.integers(), st.none())})


@st.composite
def model_blobs(draw: st.DrawFn) -> bytes:
    """Model bytes: a valid safetensors model, broken ones (bad lengths, headers, entries, JSON nested
    deep), and random bytes."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return VALID_MODEL
    if choice == 1:
        return draw(st.binary(max_size=64))
    names = st.one_of(st.text(max_size=6), st.just("__metadata__"))
    tensors = draw(st.dictionaries(names, st.one_of(_TENSOR, st.integers(), st.text(max_size=4)), max_size=3))
    header = draw(either(st.just(json.dumps(tensors).encode()), st.sampled_from(_DEEP_JSON), st.binary(max_size=32)))
    length = draw(mostly(st.just(len(header)), st.one_of(st.sampled_from((0, 1, (100 << 20) + 1, 2**63, 2**64 - 1)),
                                                         st.integers(0, len(header) + 8))))
    return safetensors({}, draw(st.binary(max_size=32)), header, length)


STREAM_SHAPES = ("empty", "no header", "header only", "header twice", "data before header", "oversized chunk",
                 "wrong size", "wrong hash", "announced huge", "empty chunks", "bad hash text",
                 *["consistent"] * 8)  # consistent streams reach the model checks: most of them


@dataclass(frozen=True)
class HeaderDraft:
    """A model header's fields but its size and hash (they depend on the stream's shape)."""

    signer: Identity
    sender: str
    job_id: str
    round: int
    num_samples: int
    timestamp: int
    good_signature: bool

    def header(self, size: int, digest: str) -> pb.ModelHeader:
        h = pb.ModelHeader(job_id=self.job_id, round=self.round, model_hash=digest, size=size,
                           num_samples=self.num_samples, sender=self.sender, timestamp=self.timestamp)
        h.signature = sign(self.signer, lambda: signed_fields(streams._header_fields(h)), self.good_signature)
        return h


def model_stream(shape: str, draft: HeaderDraft, blob: bytes, cut: int, odd: int) -> list[bytes]:
    """The serialized messages of one model stream of ``shape``."""
    def head(size: int = len(blob), digest: str = hashlib.sha256(blob).hexdigest()) -> bytes:
        return pb.ModelChunk(header=draft.header(size, digest)).SerializeToString()

    def chunk(piece: bytes) -> bytes:
        return pb.ModelChunk(data=piece).SerializeToString()

    data = [chunk(blob[i:i + cut]) for i in range(0, len(blob), cut)]
    first = data[:1] or [chunk(b"x")]
    return {
        "empty": lambda: [],
        "no header": lambda: data or first,
        "header only": lambda: [head()],
        "header twice": lambda: [head(), head(), *data],
        "data before header": lambda: [*first, head(), *data],
        "oversized chunk": lambda: [head(len(BIG_CHUNK), BIG_CHUNK_SHA256), chunk(BIG_CHUNK)],
        "wrong size": lambda: [head(len(blob) + (odd or 1)), *data],
        "wrong hash": lambda: [head(digest=hashlib.sha256(blob + b"x").hexdigest()), *data],
        "announced huge": lambda: [head(size=(2**63 - 1, 1 << 40, 0, -1, -2**63)[odd % 5]), *data],
        "empty chunks": lambda: [head(), chunk(b""), *data, pb.ModelChunk().SerializeToString()],
        "bad hash text": lambda: [head(digest=("z" * 64, "A" * 64, "", "0" * 65, "../" * 21 + "x")[odd % 5]), *data],
        "consistent": lambda: [head(), *data],
    }[shape]()


# --- signed messages --------------------------------------------------------------------------------------
def sign(signer: Identity, message: Callable[[], bytes], good: bool = True) -> bytes:
    """``signer``'s signature of ``message()``; a spoiled one when not ``good``, or when the fields
    cannot be encoded canonically (a node cannot check those either)."""
    try:
        signature = signer.sign(message())
    except (ChainError, WireError, ValueError, TypeError, OverflowError):
        return b"\x00" * 64
    return signature if good else bytes(reversed(signature))


def signed_transaction(kind: str, sender: str, payload: dict[str, Any], timestamp: int, signer: Identity,
                       good: bool = True) -> tuple[pb.Transaction, str | None]:
    """(the transaction, its hash) signed by ``signer``; a payload that cannot be hashed (floats, …)
    travels as plain JSON, unsigned, and has no hash."""
    tx = Transaction(kind, sender, payload, timestamp)
    try:
        signed = tx_to_pb(tx)
        tx_hash = tx.hash
    except (ChainError, ValueError, TypeError, OverflowError):
        return pb.Transaction(kind=kind, sender=sender, payload=json.dumps(payload).encode(), timestamp=timestamp), None
    signed.signature = sign(signer, lambda: bytes.fromhex(tx_hash), good)
    return signed, tx_hash


def json_ints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from((0, 1, -1, 2**31 - 1, 2**53 - 1, 2**53, 2**63, -2**63, 10**30)),
                     st.integers(-5, 10**6))


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.none(), st.booleans(), json_ints(), text, hex_text(64), st.floats())
    return st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                        max_leaves=8)


@dataclass
class Context:
    """What requests may name to reach deeper than the first check: node ids, model hashes, the
    chain head, an enrolment token, keys to sign with."""

    entry_id: str
    ids: tuple[str, ...]  # node ids of the network and of the fuzzer's identities
    hashes: tuple[str, ...]  # model hashes worth asking for
    stranger: Identity  # enrolled nowhere: its messages are forgeries everywhere
    identities: tuple[Identity, ...]  # the fuzzer's enrolled identities (forged by the others)
    token: Token  # enrols edge nodes: Enrol requests with a valid proof
    head: Callable[[], pb.Head]  # the entry node's head now: blocks that link to it


def real_job_payload(participants: Sequence[str]) -> dict[str, Any]:
    """The JOB payload the entry node would sign for a digits job over ``participants``."""
    conf = load_config(env={}, overrides={"dataset": "digits"})
    spec = dataclasses.replace(JobSpec.from_config(conf), num_clients=len(participants))
    return job_payload("job-1", spec, list(participants), conf, [100] * len(participants))


class Requests:
    """Hypothesis strategies for each RPC's requests as a caller sends them: bytes, or for a
    client-streaming RPC a list of messages' bytes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._cache: dict[tuple[str, str], st.SearchStrategy[Any]] = {}
        self._job = real_job_payload(ctx.ids)
        self._signed = {"fedledger.Transaction": self.transactions, "fedledger.RegisterRequest": self.registrations,
                        "fedledger.HeartbeatRequest": self.heartbeats, "fedledger.Block": self.blocks,
                        "fedledger.RoundRequest": self.round_requests, "fedledger.EnrolRequest": self.enrol_requests,
                        "fedledger.ModelRequest": self.model_requests}

    def for_call(self, rpc: Rpc, caller: Caller) -> st.SearchStrategy[Any]:
        key = (rpc.name, caller.name)
        if key not in self._cache:
            self._cache[key] = self._build(rpc, caller)
        return self._cache[key]

    def text(self, rpc: Rpc) -> st.SearchStrategy[str]:
        """Strings for ``rpc``: console commands never name the network's nodes (a fuzzed revoke()
        that hit one would be obeyed: that is the operator's power, not a bug)."""
        return texts(() if rpc.service == "Console" else (*self.ctx.ids, *self.ctx.hashes))

    def signers(self, rpc: Rpc, caller: Caller) -> tuple[Identity, ...]:
        """Keys the caller's signed messages carry: its own (or, without one, the fuzzer's enrolled
        identities: forgeries of another node's messages) and a stranger's. The entry node's key
        signs no transaction for the chain: whatever it signs is the operator's word."""
        own = caller.identity
        if own is None:
            return (self.ctx.stranger, *self.ctx.identities)
        if own.node_id == self.ctx.entry_id and rpc.name == "Ledger/SubmitTransaction":
            return (self.ctx.stranger,)
        return (own, self.ctx.stranger)

    def _build(self, rpc: Rpc, caller: Caller) -> st.SearchStrategy[Any]:
        text, signers = self.text(rpc), self.signers(rpc, caller)
        if rpc.client_streaming:
            return self.streams(rpc, text, signers)
        make = self._signed.get(rpc.request.full_name)
        if make is None:
            return wire_requests(rpc.request, text)
        return either(wire_requests(rpc.request, text), make(rpc, text, signers).map(lambda m: m.SerializeToString()))

    def streams(self, rpc: Rpc, text: Texts, signers: Signers) -> st.SearchStrategy[list[bytes]]:
        @st.composite
        def drafts(draw: st.DrawFn) -> HeaderDraft:
            signer = draw(mostly(st.just(signers[0]), st.sampled_from(signers)))
            return HeaderDraft(signer, draw(mostly(st.just(signer.node_id), text)), draw(text), draw(integers()),
                               draw(integers()), draw(recent()), draw(good_signatures()))

        shaped = st.builds(model_stream, shape=st.sampled_from(STREAM_SHAPES), draft=drafts(), blob=model_blobs(),
                           cut=st.integers(1, 64), odd=st.integers(-8, 8))
        return mostly(shaped, st.lists(wire_requests(rpc.request, text), max_size=4))

    # each of these draws messages whose signatures are made with a key from ``signers``
    def payloads(self, kind: str, text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
        """A kind's required fields with typed (or not quite) values, and extra keys."""
        typed = {"int": json_ints(), "hash": st.one_of(hex_text(64), text), "str": text,
                 "list": st.lists(st.one_of(hex_text(64), text), max_size=3),
                 "dict": st.dictionaries(st.text(max_size=8), json_values(text), max_size=3)}
        fields = PAYLOAD_FIELDS.get(kind, {})  # TxKind is a StrEnum: its names look up as strings
        required = st.fixed_dictionaries({name: typed[t] for name, t in fields.items()})
        keys = st.one_of(st.sampled_from(sorted({k for f in PAYLOAD_FIELDS.values() for k in f})), st.text(max_size=8))
        extra = st.dictionaries(keys, json_values(text), max_size=3)
        return st.tuples(mostly(required, st.just({})), extra).map(lambda t: {**t[1], **t[0]})

    def kinds(self, text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return mostly(st.sampled_from([str(k) for k in TxKind]), text)

    def transactions(self, rpc: Rpc, text: Texts, signers: Signers) -> st.SearchStrategy[pb.Transaction]:
        @st.composite
        def build(draw: st.DrawFn) -> pb.Transaction:
            kind, signer = draw(self.kinds(text)), draw(mostly(st.just(signers[0]), st.sampled_from(signers)))
            sender = draw(mostly(st.just(signer.node_id), text))
            return signed_transaction(kind, sender, draw(self.payloads(kind, text)), draw(recent()), signer,
                                      draw(good_signatures()))[0]
        return build()

    def registrations(self, rpc: Rpc, text: Texts, signers: Signers) -> st.SearchStrategy[pb.RegisterRequest]:
        @st.composite
        def build(draw: st.DrawFn) -> pb.RegisterRequest:
            signer = draw(mostly(st.just(signers[0]), st.sampled_from(signers)))
            payload = {"public_key": draw(st.one_of(st.just(signer.public_key.hex()), hex_text(64), text)),
                       "role": draw(st.one_of(st.sampled_from(("SN", "EN", "console", "")), text)),
                       "address": draw(st.one_of(st.just("127.0.0.1:1"), text))}
            if draw(st.booleans()):
                payload["supernode"] = draw(st.one_of(st.sampled_from(self.ctx.ids), text))
            if draw(st.booleans()):
                payload["datasets"] = draw(st.lists(json_values(text), max_size=3))
            payload.update(draw(st.dictionaries(st.text(max_size=8), json_values(text), max_size=2)))
            kind = draw(st.one_of(st.just("REGISTER"), self.kinds(text)))
            tx, _ = signed_transaction(kind, signer.node_id, payload, draw(recent()), signer, draw(good_signatures()))
            return pb.RegisterRequest(registration=tx)
        return build()

    def heartbeats(self, rpc: Rpc, text: Texts, signers: Signers) -> st.SearchStrategy[pb.HeartbeatRequest]:
        @st.composite
        def build(draw: st.DrawFn) -> pb.HeartbeatRequest:
            signer = draw(mostly(st.just(signers[0]), st.sampled_from(signers)))
            req = pb.HeartbeatRequest(node_id=draw(mostly(st.just(signer.node_id), text)),
                                      timestamp=draw(recent()), head_height=draw(integers()),
                                      edge_nodes=draw(st.lists(st.one_of(st.sampled_from(self.ctx.ids), text),
                                                               max_size=3)))
            req.signature = sign(signer, lambda: heartbeat_fields(req), draw(good_signatures()))
            return req
        return build()

    def blocks(self, rpc: Rpc, text: Texts, signers: Signers) -> st.SearchStrategy[pb.Block]:
        """Blocks that link to the head now, or not. The entry node's key signs only blocks that
        cannot link (a block it signs that links is a block of the chain: the operator's word)."""
        @st.composite
        def build(draw: st.DrawFn) -> pb.Block:
            signer, head = draw(mostly(st.just(signers[0]), st.sampled_from(signers))), self.ctx.head()
            txs = draw(st.lists(self.transactions(rpc, text, signers), max_size=3))
            height = draw(st.one_of(st.just(head.height + 1), integers(), st.integers(-1, head.height + 2)))
            links = draw(st.booleans()) and signer.node_id != self.ctx.entry_id
            prev_hash = head.hash if links else draw(st.one_of(hex_text(64), text))
            try:
                root = merkle_root([tx_from_pb(t).hash for t in txs])
            except (WireError, ChainError, ValueError):
                root = draw(hex_text(64))
            if not draw(good_signatures()):  # a Merkle root that does not fit, now and then
                root = draw(hex_text(64))
            proposer = draw(st.one_of(st.just(signer.node_id), st.just(self.ctx.entry_id), text))
            block = Block(height, prev_hash, root, draw(recent()), proposer)
            signature = sign(signer, lambda: bytes.fromhex(block.hash), draw(good_signatures()))
            return pb.Block(height=height, prev_hash=prev_hash, merkle_root=root, timestamp=block.timestamp,
                            proposer=proposer, signature=signature, transactions=txs)
        return build()

    def round_requests(self, rpc: Rpc, text: Texts, signers: Signers) -> st.SearchStrategy[pb.RoundRequest]:
        """A JOB, a ROUND (or GLOBAL_MODEL) and an order, each signed, and more or less agreeing."""
        @st.composite
        def build(draw: st.DrawFn) -> pb.RoundRequest:
            signer, good = draw(mostly(st.just(signers[0]), st.sampled_from(signers))), draw(good_signatures())
            round_ = draw(json_ints())
            job_payload = draw(mostly(self.job_payloads(text), self.junk_job_payloads(text)))
            job_id = job_payload.get("job_id") if isinstance(job_payload.get("job_id"), str) else draw(text)
            job, _ = signed_transaction(draw(mostly(st.just("JOB"), self.kinds(text))), signer.node_id, job_payload,
                                        draw(recent()), signer, good)
            kind = draw(mostly(st.sampled_from(("ROUND", "GLOBAL_MODEL")), self.kinds(text)))
            # an edge node holds what its supernode distributed (the fuzzer's valid model among it);
            # a supernode given a model it holds would run a real round for the fuzzed job: not here
            held = st.sampled_from(self.ctx.hashes) if rpc.name == "Training/TrainRound" else hex_text(64)
            model = draw(either(held, hex_text(64)))
            authority_payload = {"job_id": job_id, "round": round_, "global_hash": model, "hash": model,
                                 "samples": draw(json_ints())}
            authority_payload.update(draw(st.dictionaries(st.sampled_from(("config", "aggregates", "round")),
                                                          json_values(text), max_size=1)))
            for key in draw(st.lists(st.sampled_from(sorted(authority_payload)), max_size=2)):
                if not draw(good_signatures()):  # now and then a field goes missing
                    authority_payload.pop(key, None)
            authority, authority_hash = signed_transaction(kind, signer.node_id, authority_payload, draw(recent()),
                                                           signer, good)
            issued = draw(recent())
            order = pb.Order(action=draw(st.one_of(st.sampled_from(("train", "evaluate")), text)),
                             job_id=draw(st.one_of(st.just(job_id), text)),
                             round=round_ if -2**63 <= round_ < 2**63 else 0,
                             authority=authority_hash or draw(hex_text(64)), evaluate_first=draw(st.booleans()),
                             issued_ms=issued, deadline_ms=draw(mostly(st.integers(1, 60_000).map(
                                 lambda d: min(issued + d, 2**63 - 1)), timestamps())))
            order.signature = sign(signer, lambda: order_fields(order), draw(good_signatures()))
            return pb.RoundRequest(job=job, authority=authority, order=order)
        return build()

    def job_payloads(self, text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
        """A real JOB payload (digits, the network's edge nodes) with up to three fields changed or
        removed: the spec, the options, the participants, the sample counts, the job id."""
        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            payload = json.loads(json.dumps(self._job))
            for _ in range(draw(st.integers(0, 3))):
                inner = draw(st.sampled_from(("spec", "options", "samples")))
                table = payload.get(inner) if draw(st.booleans()) else payload
                if not isinstance(table, dict):
                    continue
                key = draw(st.sampled_from(sorted(table) + ["extra"]))
                if draw(st.booleans()):
                    table.pop(key, None)
                else:
                    table[key] = draw(either(json_values(text), text, json_ints()))
            return payload
        return build()

    def junk_job_payloads(self, text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {"job_id": st.one_of(st.sampled_from(("job-1", "job-0")), text),
             "spec": st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values(text), max_size=4),
             "participants": st.lists(st.one_of(st.sampled_from(self.ctx.ids), text), max_size=3)},
            optional={k: json_values(text) for k in ("samples", "options", "own_data", "round_timeout")})

    def enrol_requests(self, rpc: Rpc, text: Texts, signers: Signers) -> st.SearchStrategy[pb.EnrolRequest]:
        """Requests for the fuzzer's enrolment token, with a valid proof and signature or not."""
        @st.composite
        def build(draw: st.DrawFn) -> pb.EnrolRequest:
            me = Identity(Ed25519PrivateKey.from_private_bytes(draw(st.binary(min_size=32, max_size=32))))
            token_id = draw(st.one_of(st.just(self.ctx.token.token_id), text))
            public_key = draw(st.one_of(st.just(me.public_key), blobs()))
            csr = draw(blobs())
            if draw(st.booleans()):
                key = ec.derive_private_key(draw(st.integers(1, 2**255)), ec.SECP256R1())
                name = draw(st.one_of(st.just(me.node_id), st.text(min_size=1, max_size=64)))
                try:
                    csr = signing_request(key, name)
                except ValueError:  # a name x509 cannot hold
                    pass
            message = enrolment_message(token_id, public_key, csr)
            return pb.EnrolRequest(
                token_id=token_id, public_key=public_key, csr=csr,
                proof=(proof(self.ctx.token.secret, token_id, public_key, csr) if draw(good_signatures())
                       else draw(blobs())),
                signature=me.sign(message) if draw(good_signatures()) else draw(blobs()))
        return build()

    def model_requests(self, rpc: Rpc, text: Texts, signers: Signers) -> st.SearchStrategy[pb.ModelRequest]:
        return st.builds(pb.ModelRequest, model_hash=st.one_of(st.sampled_from(self.ctx.hashes), hex_text(64), text))


# --- the network and the endpoints to call it through ------------------------------------------------------
@dataclass
class Endpoint:
    target: Target
    caller: Caller
    address: str
    channel: grpc.Channel = field(init=False)
    _calls: dict[str, Callable[..., Any]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        creds = self.caller.credentials
        self.channel = (grpc.insecure_channel(self.address, options=FUZZ_OPTIONS) if creds is None else
                        grpc.secure_channel(self.address, creds.channel(),
                                            options=[*FUZZ_OPTIONS, ("grpc.ssl_target_name_override", NETWORK_NAME)]))

    def call(self, rpc: Rpc) -> Callable[..., Any]:
        """gRPC's generic call for ``rpc``: bytes in, bytes out (no serializers)."""
        if rpc.name not in self._calls:
            kind = {(False, False): self.channel.unary_unary, (False, True): self.channel.unary_stream,
                    (True, False): self.channel.stream_unary, (True, True): self.channel.stream_stream}
            self._calls[rpc.name] = kind[(rpc.client_streaming, rpc.server_streaming)](rpc.path)
        return self._calls[rpc.name]


def enrolled_identity(tmp: Path, entry: NodeProcess, name: str, role: str) -> tuple[Identity, Credentials]:
    """An identity enrolled with ``role`` (a certificate of the network) that runs no node."""
    home = tmp / name
    identity = Identity.load_or_create(home)
    enrol(home, identity, entry.enrolment_token(role), entry.address)
    return identity, Credentials.load(home / "tls")


@dataclass
class FuzzNetwork:
    """A running network (an entry supernode, a second supernode, edge nodes) and the endpoints
    the fuzzer calls it through."""

    entry: NodeProcess
    sn: NodeProcess
    edges: list[NodeProcess]
    endpoints: list[Endpoint]
    context: Context
    timeout: float = TIMEOUT_S

    @property
    def nodes(self) -> list[NodeProcess]:
        return [self.entry, self.sn, *self.edges]

    @classmethod
    def attach(cls, tmp: Path, entry: NodeProcess, sn: NodeProcess, edges: list[NodeProcess],
               timeout: float = TIMEOUT_S) -> "FuzzNetwork":
        """Enrol the fuzzer's edge node and supernode, register the edge node with ``sn`` (so its
        uploads get past "not my edge node"), and open an endpoint per (target, caller)."""
        entry_id, sn_id = entry.status().node_id, sn.status().node_id
        edge_ids = {Identity.load_or_create(e.home).node_id: e for e in edges}
        on_entry = [n.node_id for n in entry.status().edge_nodes.nodes
                    if n.supernode == entry_id and n.node_id in edge_ids]
        en = edge_ids[on_entry[0]] if on_entry else edges[0]  # the entry node's certificate is its supernode's
        en_identity, en_creds = enrolled_identity(tmp, entry, "fuzz-en", "EN")
        sn_identity, sn_creds = enrolled_identity(tmp, entry, "fuzz-sn", "SN")
        _register_edge(sn, en_creds, en_identity, sn_id)
        console = Credentials.load(entry.console_dir, "console.key", "console.crt")
        admin = tuple(entry.admin())
        callers = [Caller("EN", frozenset({"EN", "anyone"}), en_creds, identity=en_identity),
                   Caller("SN", frozenset({"SN", "anyone"}), sn_creds, identity=sn_identity),
                   Caller("entry", frozenset({"SN", "entry", "anyone"}), Credentials.load(entry.home / "tls"),
                          identity=Identity.load_or_create(entry.home)),
                   Caller("console", frozenset({"console", "anyone"}), console),
                   Caller("console+token", frozenset({"console", "admin", "anyone"}), console, admin),
                   Caller("plaintext", frozenset())]
        targets = [(Target("entry", "SN", True, entry_id), entry.address),
                   (Target("sn", "SN", False, sn_id), sn.address),
                   (Target("en", "EN", False, Identity.load_or_create(en.home).node_id, "entry" if on_entry else "SN"),
                    en.address)]
        endpoints = [Endpoint(t, c, address) for t, address in targets for c in callers
                     if not (c.name == "entry" and t.is_entry)]
        no_cert = Caller("no-cert", frozenset({"anyone"}), enrol_port=True)
        endpoints.append(Endpoint(targets[0][0], no_cert, f"127.0.0.1:{entry.enrol_port}"))
        token = Token.parse(entry.enrolment_token("EN", uses=100_000))
        context = Context(entry_id, (entry_id, sn_id, *edge_ids, en_identity.node_id, sn_identity.node_id),
                          (hashlib.sha256(VALID_MODEL).hexdigest(),), Identity.generate(), (en_identity, sn_identity),
                          token, _cached_head(entry))
        return cls(entry, sn, edges, endpoints, context, timeout)

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.channel.close()


def _register_edge(sn: NodeProcess, creds: Credentials, identity: Identity, sn_id: str) -> None:
    """Register ``identity`` as an edge node of ``sn`` (at an address where nothing listens: it
    is dead to the network 1.5 s after its last heartbeat, and never joins a job)."""
    tx = tx_to_pb(register_transaction(identity, "EN", "127.0.0.1:1", supernode=sn_id))
    options = [("grpc.ssl_target_name_override", NETWORK_NAME)]
    with grpc.secure_channel(sn.address, creds.channel(), options=options) as ch:
        stub = rpc_pb.MembershipStub(ch)
        wait_until(lambda: stub.Register(pb.RegisterRequest(registration=tx), timeout=5), 20,
                   "the fuzzer's edge node to register (its ENROLL sealed first)")


def _cached_head(entry: NodeProcess, max_age: float = 0.5) -> Callable[[], pb.Head]:
    """The entry node's head, asked at most every ``max_age`` seconds."""
    cache: dict[str, Any] = {"at": -math.inf, "head": pb.Head(height=0, hash="0" * 64)}

    def head() -> pb.Head:
        if time.monotonic() - cache["at"] > max_age:
            try:
                cache["head"] = entry.head()
            except grpc.RpcError:
                pass
            cache["at"] = time.monotonic()
        return cache["head"]
    return head


# --- sending and judging ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    rpc: str
    target: str
    caller: str
    code: str
    seconds: float
    details: str


@dataclass(frozen=True)
class Finding:
    """An answer that breaks the rules, with the request that got it (to replay)."""

    outcome: Outcome
    problem: str
    request: bytes | tuple[bytes, ...]

    def describe(self) -> str:
        o = self.outcome
        return (f"{o.rpc} from {o.caller} to {o.target}: {self.problem} after {o.seconds:.2f} s "
                f"({o.code}: {o.details[:300]!r})\n    request: {render(self.request)}")


def render(request: bytes | Sequence[bytes], limit: int = 160) -> str:
    """A request's bytes, short enough to read, whole enough to replay the small ones."""
    if isinstance(request, bytes):
        return f"{len(request)} bytes {request[:limit]!r}{'…' if len(request) > limit else ''}"
    return f"stream of {len(request)} messages [" + ", ".join(render(m, 80) for m in request[:5]) + "]"


def send(endpoint: Endpoint, rpc: Rpc, request: bytes | Sequence[bytes], timeout: float) -> Outcome:
    """Call ``rpc`` with ``request`` and read every reply; the status it ends with."""
    started = time.monotonic()
    metadata = endpoint.caller.metadata or None
    try:
        message = iter(list(request)) if rpc.client_streaming else request
        reply = endpoint.call(rpc)(message, timeout=timeout, metadata=metadata)
        if rpc.server_streaming:
            for _ in reply:
                pass
        code, details = "OK", ""
    except grpc.RpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    return Outcome(rpc.name, endpoint.target.name, endpoint.caller.name, code, time.monotonic() - started, details)


def judge(outcome: Outcome, endpoint: Endpoint, timeout: float) -> str | None:
    """Why ``outcome`` breaks the rules, or None when it is a fine answer."""
    if endpoint.caller.refused_at_tls:
        return None if outcome.code == "UNAVAILABLE" else "plaintext on a TLS port was not refused at the handshake"
    if outcome.code in ("UNKNOWN", "INTERNAL"):
        return f"{outcome.code} (an unforeseen failure)"
    if outcome.code == "DEADLINE_EXCEEDED" and outcome.seconds >= 0.9 * timeout:
        return f"no answer within the {timeout:.0f} s deadline (a hang)"
    if outcome.code == "OK" and may_succeed(outcome.rpc, endpoint.target, endpoint.caller) is False:
        return "OK for a caller the rules refuse"
    return None


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    seed: int = 0

    def record(self, outcome: Outcome, problem: str | None, request: bytes | Sequence[bytes]) -> None:
        self.outcomes.append(outcome)
        if problem is not None:
            self.findings.append(Finding(outcome, problem, request if isinstance(request, bytes) else tuple(request)))

    def by_rpc(self) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for o in self.outcomes:
            counts[o.rpc][o.code] += 1
        return dict(counts)

    def codes(self) -> Counter[str]:
        return Counter(o.code for o in self.outcomes)

    def undeliverable(self) -> Counter[str]:
        """Per RPC, the refusals whose message was too long for gRPC to deliver (over its 16 KiB
        metadata limit): the caller got RESOURCE_EXHAUSTED "Stream removed" instead of the reason."""
        return Counter(o.rpc for o in self.outcomes if "metadata size exceeds" in o.details)


def deep_json_model(signer: Identity) -> list[bytes]:
    """A consistent model stream whose safetensors header is JSON nested 30,000 deep."""
    blob = safetensors({}, b"", _DEEP_JSON[0])
    return model_stream("consistent", HeaderDraft(signer, signer.node_id, "", 0, 0, now_ms(), True), blob, 1 << 20, 0)


def _round_request(signer: Identity, job: dict[str, Any], authority: dict[str, Any]) -> bytes:
    """A RoundRequest whose JOB and ROUND ``signer`` signed (its order is empty)."""
    job_tx, _ = signed_transaction("JOB", signer.node_id, job, now_ms(), signer)
    authority_tx, _ = signed_transaction("ROUND", signer.node_id, authority, now_ms(), signer)
    return pb.RoundRequest(job=job_tx, authority=authority_tx, order=pb.Order()).SerializeToString()


def job_without_id(signer: Identity) -> bytes:
    """The entry node's JOB for a digits job, without its job_id."""
    job = real_job_payload([signer.node_id])
    del job["job_id"]
    return _round_request(signer, job, {"job_id": "job-1", "round": 1, "global_hash": "0" * 64})


def round_without_number(signer: Identity) -> bytes:
    """The entry node's JOB for a digits job, and a ROUND of it without its round number."""
    return _round_request(signer, real_job_payload([signer.node_id]), {"job_id": "job-1", "global_hash": "0" * 64})


# Requests that found a bug once, sent first in every run (whatever the seed), so that a fix stays
# fixed: (RPC, caller, target, the request as that caller's key makes it).
REGRESSIONS: list[tuple[str, str, str, Callable[[Identity], bytes | list[bytes]]]] = [
    ("Training/DistributeModel", "entry", "sn", deep_json_model),  # fl/layout.py: RecursionError → INTERNAL
    ("Training/RunRound", "entry", "sn", job_without_id),  # node/roles/jobs.py Job.from_tx: KeyError → INTERNAL
    ("Training/TrainRound", "entry", "en", round_without_number),  # jobs.py authorised_model: KeyError → INTERNAL
]


def replay_regressions(net: FuzzNetwork, results: Results) -> None:
    """Send each of :data:`REGRESSIONS` once, judged as any other request."""
    rpcs = {rpc.name: rpc for rpc in all_rpcs()}
    for rpc_name, caller, target, make in REGRESSIONS:
        if rpc_name not in rpcs:  # gone from the contract
            continue
        endpoint = next(e for e in net.endpoints if (e.caller.name, e.target.name) == (caller, target))
        request = make(endpoint.caller.identity or net.context.stranger)
        outcome = send(endpoint, rpcs[rpc_name], request, net.timeout)
        results.record(outcome, judge(outcome, endpoint, net.timeout), request)


def fuzz(net: FuzzNetwork, requests: int, seed: int = 0, progress: Callable[[str, int], None] | None = None) -> Results:
    """The regressions, then at least ``requests`` generated calls spread evenly over every RPC
    (hypothesis, seeded: the same seed sends the same requests to the same network)."""
    rpcs = all_rpcs()
    generate = Requests(net.context)
    results = Results(seed=seed)
    started = time.monotonic()
    replay_regressions(net, results)
    for index, rpc in enumerate(rpcs):
        before = len(results.outcomes)
        fuzz_rpc(net, generate, rpc, math.ceil(requests / len(rpcs)), seed + index, results)
        if progress is not None:
            progress(rpc.name, len(results.outcomes) - before)
    results.seconds = time.monotonic() - started
    return results


def fuzz_rpc(net: FuzzNetwork, generate: Requests, rpc: Rpc, examples: int, seed: int, results: Results) -> None:
    """``examples`` calls of ``rpc``; half go to the endpoints the rules admit (when there are
    any), so that requests reach the checks behind the door as often as the door itself."""
    admitted = [e for e in net.endpoints if may_succeed(rpc.name, e.target, e.caller)]
    endpoints = st.sampled_from(net.endpoints)
    if admitted:
        endpoints = either(st.sampled_from(admitted), endpoints)

    @fixed_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate], print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_request(data: st.DataObject) -> None:
        endpoint = data.draw(endpoints, label="endpoint")
        request = data.draw(generate.for_call(rpc, endpoint.caller), label="request")
        outcome = send(endpoint, rpc, request, net.timeout)
        results.record(outcome, judge(outcome, endpoint, net.timeout), request)

    one_request()


# --- the network afterwards ---------------------------------------------------------------------------------
def check_network(net: FuzzNetwork, job_timeout: float = 120.0) -> list[str]:
    """Everything wrong with the network after the fuzzing (empty: it kept working)."""
    problems = exited(net) + unhealthy(net)
    checks = {"the chains": chain_problems, "the job": lambda n: job_problems(n, job_timeout)}
    for what, check in checks.items():
        try:
            problems += check(net)
        except (AssertionError, grpc.RpcError) as exc:  # a wait that timed out, a refused call
            problems.append(f"{what}: {exc}")
    return problems + tracebacks(net)


def exited(net: FuzzNetwork) -> list[str]:
    return [f"{n.name} exited with {n.proc.returncode}" for n in net.nodes if n.proc.poll() is not None]


def unhealthy(net: FuzzNetwork) -> list[str]:
    """Nodes that do not answer a health check SERVING. Each check opens a fresh channel, as
    ``python -m node.health`` does: the launcher's long-lived channels are sent GOAWAY
    "too_many_pings" after ~90 s idle (node/net/channels.py: keepalive pings every 30 s, the
    server's default floor is 5 min), and a check racing that GOAWAY fails UNAVAILABLE."""
    problems = []
    for node in net.nodes:
        creds = Credentials.load(node.console_dir, "console.key", "console.crt")
        try:
            with grpc.secure_channel(node.address, creds.channel(),
                                     options=[("grpc.ssl_target_name_override", NETWORK_NAME)]) as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                problems.append(f"{node.name} answers the health check {reply.status}, not SERVING")
        except grpc.RpcError as exc:
            problems.append(f"{node.name} does not answer the health check: {exc.code().name} {exc.details()}")
    return problems


def chain_problems(net: FuzzNetwork) -> list[str]:
    """Both supernodes hold the same chain, and it verifies on each."""
    entry, sn = net.entry, net.sn
    wait_until(lambda: entry.status().pending_transactions == 0 and sn.head() == entry.head(), 20,
               "both supernodes to hold the same head")
    problems = []
    for node in (entry, sn):
        reply = node.console("Verify", pb.VerifyRequest())
        if not reply.ok:
            problems.append(f"{node.name}'s chain does not verify: height {reply.bad_height}: {reply.reason}")
    return problems


def job_problems(net: FuzzNetwork, timeout: float = 120.0) -> list[str]:
    """A one-round digits job on the network's own edge nodes completes, and its aggregates
    recompute."""
    entry = net.entry
    own = {Identity.load_or_create(e.home).node_id for e in net.edges}
    wait_until(lambda: {n.node_id for n in entry.status().edge_nodes.nodes if n.alive} == own, 30,
               "only the network's own edge nodes to be alive (the fuzzer's is silent)")
    if entry.console("GetJob").state in ("running", "pausing"):  # a fuzzed StartJob or Resume got through
        entry.console("Pause")
        wait_until(lambda: entry.console("GetJob").state in ("paused", "done", "failed"), timeout,
                   "a fuzzed job to stop")
    entry.console("StartJob", pb.JobRequest(settings=JOB))
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, timeout, "the job")
    if done.state != "done":
        return [f"the one-round job after the fuzzing ended {done.state}: {done.error}"]
    report = entry.console("Verify", pb.VerifyRequest(recompute=True), timeout=60)
    if not (report.ok and report.recompute.ok):
        return [f"verify(recompute=True) after the job: {report.reason or report.recompute.reason}"]
    return []


def tracebacks(net: FuzzNetwork) -> list[str]:
    """Every traceback in the nodes' logs, each with the log line before it (what the node was
    doing) and up to the next log line: one problem each, so a known one hides no other."""
    problems = []
    for node in net.nodes:
        lines = node.log.read_text(errors="replace").splitlines()
        for start in (i for i, line in enumerate(lines) if line.startswith("Traceback")):
            end = next((j for j in range(start + 1, len(lines)) if _LOG_LINE.match(lines[j])), len(lines))
            problems.append(f"{node.name}'s log holds a traceback:\n" + "\n".join(lines[max(0, start - 1):end]))
    return problems


# a log line starts with the time: main.py's format, or gRPC's own (I1205 12:00:00.000000 …)
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|[IWEF]\d{4} \d\d:\d\d:\d\d")


# --- the report ------------------------------------------------------------------------------------------------
def table(results: Results) -> Any:
    """One table: service/method × status code, with totals and requests per second."""
    from rich.table import Table

    counts = results.by_rpc()
    order = {c.name: c.value[0] for c in grpc.StatusCode}
    codes = sorted(results.codes(), key=lambda c: order.get(c, 99))
    slowest = defaultdict(float)
    for o in results.outcomes:
        slowest[o.rpc] = max(slowest[o.rpc], o.seconds)
    n = len(results.outcomes)
    rate = n / results.seconds if results.seconds else 0.0
    out = Table(title=f"Fuzzing: {n:,} requests in {results.seconds:.1f} s ({rate:,.0f} requests/s), "
                      f"seed {results.seed}")
    out.add_column("service/method", no_wrap=True)
    for code in codes:
        out.add_column(code, justify="right")
    out.add_column("total", justify="right")
    out.add_column("slowest (s)", justify="right")
    for rpc in all_rpcs():
        row = counts.get(rpc.name, Counter())
        out.add_row(rpc.name, *[f"{row[c]:,}" if row[c] else "" for c in codes], f"{sum(row.values()):,}",
                    f"{slowest[rpc.name]:.2f}")
    total = results.codes()
    out.add_row("total", *[f"{total[c]:,}" for c in codes], f"{n:,}", f"{max(slowest.values(), default=0):.2f}",
                style="bold")
    return out


def grouped_findings(findings: Sequence[Finding]) -> list[tuple[int, Finding]]:
    """One example per (RPC, caller, target, code, reason without its numbers), with its count."""
    groups: dict[tuple[str, ...], list[Finding]] = defaultdict(list)
    for f in findings:
        o = f.outcome
        groups[(o.rpc, o.caller, o.target, o.code, re.sub(r"\d+", "#", o.details[:120]))].append(f)
    return sorted(((len(g), min(g, key=lambda f: len(render(f.request)))) for g in groups.values()),
                  key=lambda t: -t[0])


def grouped_problems(problems: Sequence[str]) -> list[tuple[int, str]]:
    """Tracebacks of the same node, innermost project frame and exception counted as one."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for problem in problems:
        lines = problem.splitlines()
        frames = [line for line in lines if re.search(r'File ".*/(node|fl)/', line)]
        groups[(lines[0], frames[-1] if frames else problem, re.sub(r"\d+", "#", lines[-1]))].append(problem)
    return sorted(((len(g), g[0]) for g in groups.values()), key=lambda t: -t[0])


def main() -> int:
    from rich.console import Console
    from rich.text import Text

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import start_network  # the network the tests use
    from node.dev.launcher import stop_all

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000, help="at least this many requests, spread over every RPC")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a new one, printed)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="each call's deadline in seconds")
    p.add_argument("--edge-nodes", type=int, default=2)
    args = p.parse_args()
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    console = Console(width=None if sys.stdout.isatty() else 200)
    nodes: list[NodeProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            console.print(f"starting 2 supernodes and {args.edge_nodes} edge nodes …")
            entry, sn, edges = start_network(Path(tmp), lambda name: None, nodes, args.edge_nodes)
            net = FuzzNetwork.attach(Path(tmp), entry, sn, edges, args.timeout)
            try:
                results = fuzz(net, args.requests, seed, lambda rpc, n: console.print(f"  {rpc}: {n:,} requests"))
                console.print("checking the network afterwards (health, chains, a one-round job, logs) …")
                problems = check_network(net)
            finally:
                net.close()
        finally:
            stop_all(nodes, timeout=5)
    console.print(table(results))
    for rpc, n in results.undeliverable().items():
        console.print(f"{rpc}: {n} refusal(s) quoted so much of the request that the status message went over "
                      f"gRPC's 16 KiB limit (the caller got RESOURCE_EXHAUSTED instead of the reason)")
    for count, finding in grouped_findings(results.findings):
        console.print(Text.assemble(("FINDING", "red"), f" ×{count}: {finding.describe()}"))
    for count, problem in grouped_problems(problems):
        console.print(Text.assemble(("AFTERWARDS", "red"), f" ×{count}: {problem}"))
    if not results.findings and not problems:
        console.print("every answer was a proper status in time, and the network kept working")
    return 1 if results.findings or problems else 0


if __name__ == "__main__":
    sys.exit(main())
