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
    __slots__ = ("entry_id", "supernode_id", "supernodes", "head", "admin_token_sha256")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERNODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERNODES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    ADMIN_TOKEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    supernode_id: str
    supernodes: NodeList
    head: Head
    admin_token_sha256: str
    def __init__(self, entry_id: _Optional[str] = ..., supernode_id: _Optional[str] = ..., supernodes: _Optional[_Union[NodeList, _Mapping]] = ..., head: _Optional[_Union[Head, _Mapping]] = ..., admin_token_sha256: _Optional[str] = ...) -> None: ...

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

class RoundRequest(_message.Message):
    __slots__ = ("job", "authority", "order")
    JOB_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    job: Transaction
    authority: Transaction
    order: Order
    def __init__(self, job: _Optional[_Union[Transaction, _Mapping]] = ..., authority: _Optional[_Union[Transaction, _Mapping]] = ..., order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("action", "job_id", "round", "authority", "evaluate_first", "issued_ms", "deadline_ms", "signature")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIRST_FIELD_NUMBER: _ClassVar[int]
    ISSUED_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    action: str
    job_id: str
    round: int
    authority: str
    evaluate_first: bool
    issued_ms: int
    deadline_ms: int
    signature: bytes
    def __init__(self, action: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., authority: _Optional[str] = ..., evaluate_first: _Optional[bool] = ..., issued_ms: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EvalMetrics(_message.Message):
    __slots__ = ("correct", "num_samples", "loss_sum")
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    correct: int
    num_samples: int
    loss_sum: float
    def __init__(self, correct: _Optional[int] = ..., num_samples: _Optional[int] = ..., loss_sum: _Optional[float] = ...) -> None: ...

class EdgeResult(_message.Message):
    __slots__ = ("node_id", "update", "eval", "train_loss", "seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    update: Transaction
    eval: EvalMetrics
    train_loss: float
    seconds: float
    def __init__(self, node_id: _Optional[str] = ..., update: _Optional[_Union[Transaction, _Mapping]] = ..., eval: _Optional[_Union[EvalMetrics, _Mapping]] = ..., train_loss: _Optional[float] = ..., seconds: _Optional[float] = ...) -> None: ...

class SplitMessage(_message.Message):
    __slots__ = ("job_id", "round", "model_hash", "tensors", "finish", "loss", "node_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    model_hash: str
    tensors: bytes
    finish: bool
    loss: float
    node_id: str
    attempt: str
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., model_hash: _Optional[str] = ..., tensors: _Optional[bytes] = ..., finish: _Optional[bool] = ..., loss: _Optional[float] = ..., node_id: _Optional[str] = ..., attempt: _Optional[str] = ...) -> None: ...

class Exclusion(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SupernodeResult(_message.Message):
    __slots__ = ("node_id", "partial_hash", "num_samples", "edges", "excluded", "aggregate", "exclusion_records")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_HASH_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    EXCLUSION_RECORDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    partial_hash: str
    num_samples: int
    edges: _containers.RepeatedCompositeFieldContainer[EdgeResult]
    excluded: _containers.RepeatedCompositeFieldContainer[Exclusion]
    aggregate: Transaction
    exclusion_records: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, node_id: _Optional[str] = ..., partial_hash: _Optional[str] = ..., num_samples: _Optional[int] = ..., edges: _Optional[_Iterable[_Union[EdgeResult, _Mapping]]] = ..., excluded: _Optional[_Iterable[_Union[Exclusion, _Mapping]]] = ..., aggregate: _Optional[_Union[Transaction, _Mapping]] = ..., exclusion_records: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...

class PrivacyRound(_message.Message):
    __slots__ = ("round", "record")
    class RecordEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    round: int
    record: _containers.ScalarMap[str, str]
    def __init__(self, round: _Optional[int] = ..., record: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JobPrivacy(_message.Message):
    __slots__ = ("job_id", "rounds", "stopped")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rounds: _containers.RepeatedCompositeFieldContainer[PrivacyRound]
    stopped: str
    def __init__(self, job_id: _Optional[str] = ..., rounds: _Optional[_Iterable[_Union[PrivacyRound, _Mapping]]] = ..., stopped: _Optional[str] = ...) -> None: ...

class PrivacyReport(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobPrivacy]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobPrivacy, _Mapping]]] = ...) -> None: ...

class EdgeScore(_message.Message):
    __slots__ = ("node_id", "samples", "rounds", "flb", "has_marginal", "marginal", "flags")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    FLB_FIELD_NUMBER: _ClassVar[int]
    HAS_MARGINAL_FIELD_NUMBER: _ClassVar[int]
    MARGINAL_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    samples: int
    rounds: int
    flb: float
    has_marginal: bool
    marginal: float
    flags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., samples: _Optional[int] = ..., rounds: _Optional[int] = ..., flb: _Optional[float] = ..., has_marginal: _Optional[bool] = ..., marginal: _Optional[float] = ..., flags: _Optional[_Iterable[str]] = ...) -> None: ...

class JobScores(_message.Message):
    __slots__ = ("job_id", "method", "rounds", "edges")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    method: str
    rounds: int
    edges: _containers.RepeatedCompositeFieldContainer[EdgeScore]
    def __init__(self, job_id: _Optional[str] = ..., method: _Optional[str] = ..., rounds: _Optional[int] = ..., edges: _Optional[_Iterable[_Union[EdgeScore, _Mapping]]] = ...) -> None: ...

class ScoreReport(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobScores]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobScores, _Mapping]]] = ...) -> None: ...

class NetworkInfo(_message.Message):
    __slots__ = ("ca_certificate", "entry_id", "genesis_hash")
    CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    GENESIS_HASH_FIELD_NUMBER: _ClassVar[int]
    ca_certificate: bytes
    entry_id: str
    genesis_hash: str
    def __init__(self, ca_certificate: _Optional[bytes] = ..., entry_id: _Optional[str] = ..., genesis_hash: _Optional[str] = ...) -> None: ...

class EnrolRequest(_message.Message):
    __slots__ = ("token_id", "public_key", "csr", "proof", "signature")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    public_key: bytes
    csr: bytes
    proof: bytes
    signature: bytes
    def __init__(self, token_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., csr: _Optional[bytes] = ..., proof: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EnrolReply(_message.Message):
    __slots__ = ("certificate", "role", "network")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    role: str
    network: NetworkInfo
    def __init__(self, certificate: _Optional[bytes] = ..., role: _Optional[str] = ..., network: _Optional[_Union[NetworkInfo, _Mapping]] = ...) -> None: ...

class EnrolmentRequest(_message.Message):
    __slots__ = ("role", "uses", "hours", "max_samples")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    role: str
    uses: int
    hours: float
    max_samples: int
    def __init__(self, role: _Optional[str] = ..., uses: _Optional[int] = ..., hours: _Optional[float] = ..., max_samples: _Optional[int] = ...) -> None: ...

class EnrolmentToken(_message.Message):
    __slots__ = ("token", "token_id", "role", "uses", "expires_ms", "max_samples")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    role: str
    uses: int
    expires_ms: int
    max_samples: int
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., role: _Optional[str] = ..., uses: _Optional[int] = ..., expires_ms: _Optional[int] = ..., max_samples: _Optional[int] = ...) -> None: ...

class EnrolledNode(_message.Message):
    __slots__ = ("node_id", "role", "token_id", "enrolled_height", "revoked", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    token_id: str
    enrolled_height: int
    revoked: bool
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., token_id: _Optional[str] = ..., enrolled_height: _Optional[int] = ..., revoked: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class EnrolmentList(_message.Message):
    __slots__ = ("tokens", "nodes")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[EnrolmentToken]
    nodes: _containers.RepeatedCompositeFieldContainer[EnrolledNode]
    def __init__(self, tokens: _Optional[_Iterable[_Union[EnrolmentToken, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[EnrolledNode, _Mapping]]] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

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

class JobRequest(_message.Message):
    __slots__ = ("settings",)
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: _containers.ScalarMap[str, str]
    def __init__(self, settings: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RoundMetrics(_message.Message):
    __slots__ = ("round", "acc_weighted", "acc_mean", "acc_min", "acc_max", "loss", "train_loss", "seconds", "participants", "excluded", "global_hash")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACC_WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    ACC_MEAN_FIELD_NUMBER: _ClassVar[int]
    ACC_MIN_FIELD_NUMBER: _ClassVar[int]
    ACC_MAX_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_HASH_FIELD_NUMBER: _ClassVar[int]
    round: int
    acc_weighted: float
    acc_mean: float
    acc_min: float
    acc_max: float
    loss: float
    train_loss: float
    seconds: float
    participants: int
    excluded: _containers.RepeatedCompositeFieldContainer[Exclusion]
    global_hash: str
    def __init__(self, round: _Optional[int] = ..., acc_weighted: _Optional[float] = ..., acc_mean: _Optional[float] = ..., acc_min: _Optional[float] = ..., acc_max: _Optional[float] = ..., loss: _Optional[float] = ..., train_loss: _Optional[float] = ..., seconds: _Optional[float] = ..., participants: _Optional[int] = ..., excluded: _Optional[_Iterable[_Union[Exclusion, _Mapping]]] = ..., global_hash: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "round", "rounds", "metrics", "error", "job", "global_model")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_MODEL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    round: int
    rounds: int
    metrics: _containers.RepeatedCompositeFieldContainer[RoundMetrics]
    error: str
    job: Transaction
    global_model: Transaction
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., round: _Optional[int] = ..., rounds: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[RoundMetrics, _Mapping]]] = ..., error: _Optional[str] = ..., job: _Optional[_Union[Transaction, _Mapping]] = ..., global_model: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class EdgeEval(_message.Message):
    __slots__ = ("node_id", "supernode", "accuracy", "loss", "num_samples")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SUPERNODE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    supernode: str
    accuracy: float
    loss: float
    num_samples: int
    def __init__(self, node_id: _Optional[str] = ..., supernode: _Optional[str] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., num_samples: _Optional[int] = ...) -> None: ...

class EvalReport(_message.Message):
    __slots__ = ("job_id", "round", "edges", "acc_weighted", "acc_mean", "loss", "excluded")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    ACC_WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    ACC_MEAN_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    edges: _containers.RepeatedCompositeFieldContainer[EdgeEval]
    acc_weighted: float
    acc_mean: float
    loss: float
    excluded: _containers.RepeatedCompositeFieldContainer[Exclusion]
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., edges: _Optional[_Iterable[_Union[EdgeEval, _Mapping]]] = ..., acc_weighted: _Optional[float] = ..., acc_mean: _Optional[float] = ..., loss: _Optional[float] = ..., excluded: _Optional[_Iterable[_Union[Exclusion, _Mapping]]] = ...) -> None: ...

class SaveRequest(_message.Message):
    __slots__ = ("job_id", "model_hash", "path")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_hash: str
    path: str
    def __init__(self, job_id: _Optional[str] = ..., model_hash: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("recompute",)
    RECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    recompute: bool
    def __init__(self, recompute: _Optional[bool] = ...) -> None: ...

class RecomputeReport(_message.Message):
    __slots__ = ("ok", "jobs", "rounds", "updates", "job_id", "bad_round", "bad_node", "reason", "seconds", "missing", "skipped_jobs")
    OK_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BAD_ROUND_FIELD_NUMBER: _ClassVar[int]
    BAD_NODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_JOBS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    jobs: int
    rounds: int
    updates: int
    job_id: str
    bad_round: int
    bad_node: str
    reason: str
    seconds: float
    missing: bool
    skipped_jobs: int
    def __init__(self, ok: _Optional[bool] = ..., jobs: _Optional[int] = ..., rounds: _Optional[int] = ..., updates: _Optional[int] = ..., job_id: _Optional[str] = ..., bad_round: _Optional[int] = ..., bad_node: _Optional[str] = ..., reason: _Optional[str] = ..., seconds: _Optional[float] = ..., missing: _Optional[bool] = ..., skipped_jobs: _Optional[int] = ...) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("ok", "blocks", "transactions", "head", "bad_height", "reason", "recompute")
    OK_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    BAD_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    blocks: int
    transactions: int
    head: Head
    bad_height: int
    reason: str
    recompute: RecomputeReport
    def __init__(self, ok: _Optional[bool] = ..., blocks: _Optional[int] = ..., transactions: _Optional[int] = ..., head: _Optional[_Union[Head, _Mapping]] = ..., bad_height: _Optional[int] = ..., reason: _Optional[str] = ..., recompute: _Optional[_Union[RecomputeReport, _Mapping]] = ...) -> None: ...
