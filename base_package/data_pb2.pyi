from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    SN: _ClassVar[Role]
    EN: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
SN: Role
EN: Role

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("kind", "sender", "payload", "timestamp", "signature")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    sender: str
    payload: bytes
    timestamp: int
    signature: bytes
    def __init__(self, kind: _Optional[str] = ..., sender: _Optional[str] = ..., payload: _Optional[bytes] = ..., timestamp: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("height", "prev_hash", "merkle_root", "timestamp", "proposer", "signature", "transactions")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    MERKLE_ROOT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    height: int
    prev_hash: str
    merkle_root: str
    timestamp: int
    proposer: str
    signature: bytes
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, height: _Optional[int] = ..., prev_hash: _Optional[str] = ..., merkle_root: _Optional[str] = ..., timestamp: _Optional[int] = ..., proposer: _Optional[str] = ..., signature: _Optional[bytes] = ..., transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...

class Head(_message.Message):
    __slots__ = ("height", "hash")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    height: int
    hash: str
    def __init__(self, height: _Optional[int] = ..., hash: _Optional[str] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("tx_hash",)
    TX_HASH_FIELD_NUMBER: _ClassVar[int]
    tx_hash: str
    def __init__(self, tx_hash: _Optional[str] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("head", "stored")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    head: Head
    stored: bool
    def __init__(self, head: _Optional[_Union[Head, _Mapping]] = ..., stored: _Optional[bool] = ...) -> None: ...

class GetBlocksRequest(_message.Message):
    __slots__ = ("from_height", "limit")
    FROM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    from_height: int
    limit: int
    def __init__(self, from_height: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class BlockRequest(_message.Message):
    __slots__ = ("height",)
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    height: int
    def __init__(self, height: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "role", "address", "alive", "load", "supernode", "seen_ms_ago", "public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    SUPERNODE_FIELD_NUMBER: _ClassVar[int]
    SEEN_MS_AGO_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: Role
    address: str
    alive: bool
    load: int
    supernode: str
    seen_ms_ago: int
    public_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., load: _Optional[int] = ..., supernode: _Optional[str] = ..., seen_ms_ago: _Optional[int] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class NodeList(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("registration",)
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    registration: Transaction
    def __init__(self, registration: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("entry_id", "supernode_id", "supernodes", "head")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERNODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERNODES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    supernode_id: str
    supernodes: NodeList
    head: Head
    def __init__(self, entry_id: _Optional[str] = ..., supernode_id: _Optional[str] = ..., supernodes: _Optional[_Union[NodeList, _Mapping]] = ..., head: _Optional[_Union[Head, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "timestamp", "edge_nodes", "head_height", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    EDGE_NODES_FIELD_NUMBER: _ClassVar[int]
    HEAD_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    timestamp: int
    edge_nodes: _containers.RepeatedScalarFieldContainer[str]
    head_height: int
    signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., timestamp: _Optional[int] = ..., edge_nodes: _Optional[_Iterable[str]] = ..., head_height: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known", "supernodes", "head")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    SUPERNODES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    known: bool
    supernodes: NodeList
    head: Head
    def __init__(self, known: _Optional[bool] = ..., supernodes: _Optional[_Union[NodeList, _Mapping]] = ..., head: _Optional[_Union[Head, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: Role
    def __init__(self, role: _Optional[_Union[Role, str]] = ...) -> None: ...

class FindSupernodeRequest(_message.Message):
    __slots__ = ("node_id", "exclude")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    exclude: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., exclude: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("job_id", "round", "model_hash", "size", "num_samples", "sender", "timestamp", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    model_hash: str
    size: int
    num_samples: int
    sender: str
    timestamp: int
    signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., model_hash: _Optional[str] = ..., size: _Optional[int] = ..., num_samples: _Optional[int] = ..., sender: _Optional[str] = ..., timestamp: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TransferReceipt(_message.Message):
    __slots__ = ("model_hash", "size")
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    model_hash: str
    size: int
    def __init__(self, model_hash: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("model_hash",)
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    model_hash: str
    def __init__(self, model_hash: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("node_id", "role", "entry", "address", "head", "final_height", "pending_transactions", "supernodes", "edge_nodes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    FINAL_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PENDING_TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    SUPERNODES_FIELD_NUMBER: _ClassVar[int]
    EDGE_NODES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: Role
    entry: bool
    address: str
    head: Head
    final_height: int
    pending_transactions: int
    supernodes: NodeList
    edge_nodes: NodeList
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., entry: _Optional[bool] = ..., address: _Optional[str] = ..., head: _Optional[_Union[Head, _Mapping]] = ..., final_height: _Optional[int] = ..., pending_transactions: _Optional[int] = ..., supernodes: _Optional[_Union[NodeList, _Mapping]] = ..., edge_nodes: _Optional[_Union[NodeList, _Mapping]] = ...) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("ok", "blocks", "transactions", "head", "bad_height", "reason")
    OK_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    BAD_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    blocks: int
    transactions: int
    head: Head
    bad_height: int
    reason: str
    def __init__(self, ok: _Optional[bool] = ..., blocks: _Optional[int] = ..., transactions: _Optional[int] = ..., head: _Optional[_Union[Head, _Mapping]] = ..., bad_height: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
