"""Models on the wire: a signed header, then the safetensors bytes in chunks.

A stream is ``ModelHeader`` followed by ``data`` chunks of at most 1 MiB, so no model size ever
meets gRPC's message-size ceiling, and the receiver can refuse an oversized model from the
header alone, before reading a byte of it. The receiver hashes as it copies and checks the
SHA-256 against the header (the hash that goes on the chain); the bytes are decoded with
safetensors only (never pickle) by whoever uses them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc

from base_package import data_pb2 as pb
from node.chain import now_ms
from node.identity import Identity, verify_signature
from node.rpc import CHUNK_BYTES, refuse
from node.wire import signed_fields

HEADER_MAX_AGE_MS = 10 * 60 * 1000  # a signed header older than this is refused (replays)


@dataclass(frozen=True)
class ReceivedModel:
    header: pb.ModelHeader
    data: bytes


def _header_fields(h: pb.ModelHeader) -> dict[str, object]:
    return {"job_id": h.job_id, "round": h.round, "model_hash": h.model_hash, "size": h.size,
            "num_samples": h.num_samples, "sender": h.sender, "timestamp": h.timestamp}


def make_header(identity: Identity, data: bytes, job_id: str = "", round: int = 0, num_samples: int = 0,
                model_hash: str | None = None) -> pb.ModelHeader:
    """A header for ``data``, signed by ``identity``."""
    header = pb.ModelHeader(job_id=job_id, round=round, size=len(data), num_samples=num_samples,
                            model_hash=model_hash or hashlib.sha256(data).hexdigest(),
                            sender=identity.node_id, timestamp=now_ms())
    header.signature = identity.sign(signed_fields(_header_fields(header)))
    return header


def chunks(header: pb.ModelHeader, data: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.ModelChunk]:
    yield pb.ModelChunk(header=header)
    view = memoryview(data)
    for start in range(0, len(data), chunk_bytes):
        yield pb.ModelChunk(data=view[start:start + chunk_bytes].tobytes())


def check_header_signature(header: pb.ModelHeader, public_key: bytes) -> None:
    if not verify_signature(public_key, header.signature, signed_fields(_header_fields(header))):
        raise refuse(grpc.StatusCode.UNAUTHENTICATED,
                     f"the model header's signature does not verify for node {header.sender}")
    if abs(now_ms() - header.timestamp) > HEADER_MAX_AGE_MS:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                     "the model header is more than 10 minutes old (or from the future): check the clocks")


def receive(stream: Iterable[pb.ModelChunk], max_bytes: int, authorise=None) -> ReceivedModel:
    """Read a header and its bytes from ``stream``; ``authorise(header)`` runs before any data is
    read (it raises to refuse). The result's bytes match the header's size and SHA-256."""
    it = iter(stream)
    first = next(it, None)
    if first is None or first.WhichOneof("part") != "header":
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "a model stream must start with a ModelHeader")
    header = first.header
    if header.size <= 0 or header.size > max_bytes:
        raise refuse(grpc.StatusCode.RESOURCE_EXHAUSTED if header.size > max_bytes else grpc.StatusCode.INVALID_ARGUMENT,
                     f"model size {header.size} bytes is outside 1..{max_bytes} (raise max_model_mb to accept more)")
    if len(header.model_hash) != 64:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "model_hash must be a 64-digit SHA-256 hex digest")
    if authorise is not None:
        authorise(header)
    buffer = bytearray(header.size)
    digest = hashlib.sha256()
    filled = 0
    for chunk in it:
        if chunk.WhichOneof("part") != "data":
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "a model stream has exactly one header, first")
        piece = chunk.data
        end = filled + len(piece)
        if end > header.size:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"the stream carries more than the {header.size} bytes its header announced")
        buffer[filled:end] = piece
        digest.update(piece)
        filled = end
    if filled != header.size:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                     f"the stream ended after {filled} of the {header.size} bytes its header announced")
    if digest.hexdigest() != header.model_hash:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                     f"the model bytes hash to {digest.hexdigest()[:16]}…, not {header.model_hash[:16]}… as announced")
    return ReceivedModel(header, bytes(buffer))


class ModelCache:
    """Recent models by hash, bounded in total bytes (oldest dropped first)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, ReceivedModel] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, model: ReceivedModel) -> None:
        with self._lock:
            old = self._models.pop(model.header.model_hash, None)
            if old is not None:
                self._size -= len(old.data)
            self._models[model.header.model_hash] = model
            self._size += len(model.data)
            while self._size > self.max_bytes and len(self._models) > 1:
                _, dropped = self._models.popitem(last=False)
                self._size -= len(dropped.data)

    def get(self, model_hash: str) -> ReceivedModel | None:
        with self._lock:
            return self._models.get(model_hash)
