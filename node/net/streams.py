"""Models on the wire: a signed header, then the safetensors bytes in chunks.

A stream is ``ModelHeader`` followed by ``data`` chunks of at most 1 MiB, so no model size ever
meets gRPC's message-size ceiling, and the receiver can refuse an oversized model from the
header alone, before reading a byte of it. The receiver hashes as it copies and checks the
SHA-256 against the header (the hash that goes on the chain); the bytes are decoded with
safetensors only (never pickle) by whoever uses them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc
from base_package import data_pb2 as pb
from fl.layout import TensorLayout, header_size, read_layout
from node.chain.rules import now_ms
from node.chain.identity import Identity, verify_signature
from node.net.channels import CHUNK_BYTES
from node.net.errors import refuse
from node.net.wire import signed_fields

log = logging.getLogger(__name__)

HEADER_MAX_AGE_MS = 10 * 60 * 1000  # a signed header older than this is refused (replays)
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")


@dataclass
class ReceivedModel:
    """A model as it arrived: its header and its chunks. Joining the chunks into one buffer costs
    a fresh allocation as large as the model (page faults included: a third of the transfer time
    of a 100 MB model), so it happens only when the bytes are used, once; the joined buffer then
    replaces the chunks, so a cached model is held once, not twice."""

    header: pb.ModelHeader
    pieces: tuple[bytes, ...]
    _joining: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, header: pb.ModelHeader, data: bytes) -> "ReceivedModel":
        return cls(header, (data,))

    @property
    def data(self) -> bytes:
        with self._joining:  # the senders of a round all want it at once: one join, not one each
            if len(self.pieces) > 1:
                self.pieces = (b"".join(self.pieces),)
            return self.pieces[0]

    @property
    def size(self) -> int:
        return self.header.size

    def prefix(self, n: int) -> bytes:
        """The first ``n`` bytes, joining only the chunks they span."""
        out, have = [], 0
        for piece in self.pieces:
            if have >= n:
                break
            out.append(piece)
            have += len(piece)
        return b"".join(out)[:n]

    def layout(self) -> dict[str, TensorLayout]:
        """Tensor names, dtypes and shapes from the safetensors header, without decoding."""
        return read_layout(self.prefix(header_size(self.prefix(8))), self.size)

    def stream(self) -> Iterator[pb.ModelChunk]:
        """The header, then the bytes in chunks of at most ``CHUNK_BYTES`` (pieces received keep
        their size; a model made here, one piece, is cut: gRPC refuses messages over 8 MiB)."""
        yield pb.ModelChunk(header=self.header)
        for piece in self.pieces:
            if len(piece) <= CHUNK_BYTES:
                yield pb.ModelChunk(data=piece)
                continue
            view = memoryview(piece)
            for start in range(0, len(piece), CHUNK_BYTES):
                yield pb.ModelChunk(data=view[start:start + CHUNK_BYTES].tobytes())


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
    pieces: list[bytes] = []
    digest = hashlib.sha256()
    filled = 0
    for chunk in it:
        if chunk.WhichOneof("part") != "data":
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "a model stream has exactly one header, first")
        piece = chunk.data
        filled += len(piece)
        if filled > header.size:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"the stream carries more than the {header.size} bytes its header announced")
        hashing = _HASHER.submit(digest.update, piece)  # in order; overlaps receiving (no GIL)
        pieces.append(piece)
    if pieces:
        hashing.result()
    if filled != header.size:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                     f"the stream ended after {filled} of the {header.size} bytes its header announced")
    if digest.hexdigest() != header.model_hash:
        raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                     f"the model bytes hash to {digest.hexdigest()[:16]}…, not {header.model_hash[:16]}… as announced")
    return ReceivedModel(header, tuple(pieces))
