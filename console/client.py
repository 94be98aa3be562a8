"""The console's connection to a supernode: mutual TLS with the console's certificate (made by
the entry node's CA, ``<entry home>/console/``), and every call carries the admin token.

Models fetched here are checked end to end: the GLOBAL_MODEL transaction must be signed by the
entry node (whose key comes from the genesis block), and the downloaded bytes must hash to the
value in it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.rules import TxKind, genesis_proposer
from node.net.channels import channel
from node.net.streams import receive
from node.net.tls import Credentials
from node.net.wire import block_from_pb, tx_from_pb


class ModelCheckFailed(RuntimeError):
    """A downloaded model does not match the chain."""


class NodeClient:
    def __init__(self, address: str, token: str, credentials: Credentials | None = None) -> None:
        """``credentials``: the console's certificate (None: plaintext, for ``--insecure`` nodes)."""
        self.address = address
        self._channel = channel(address, credentials)
        self._console = rpc_pb.ConsoleStub(self._channel)
        self._training = rpc_pb.TrainingStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Any = None, timeout: float = 60) -> Any:
        return getattr(self._console, method)(request if request is not None else pb.Empty(),
                                              metadata=self._metadata, timeout=timeout)

    def start_job(self, settings: dict[str, str]) -> pb.JobStatus:
        return self.call("StartJob", pb.JobRequest(settings=settings))

    def block(self, height: int) -> pb.Block:
        return self.call("GetBlock", pb.BlockRequest(height=height))

    def nodes(self, role: int) -> pb.NodeList:
        return self.call("ListNodes", pb.ListNodesRequest(role=role))

    def verified_global_model(self, status: pb.JobStatus) -> tuple[bytes, str]:
        """The job's latest global model bytes and hash, checked against its signed transaction."""
        if not status.HasField("global_model"):
            raise ModelCheckFailed("the job has no global model yet: run at least one round")
        entry_id, entry_key = genesis_proposer(block_from_pb(self.block(0)))
        tx = tx_from_pb(status.global_model)
        if tx.kind != TxKind.GLOBAL_MODEL or tx.sender != entry_id or \
                not tx.signed_by(entry_key):
            raise ModelCheckFailed("the GLOBAL_MODEL transaction is not signed by the entry node")
        expected = tx.payload["hash"]
        model = receive(self._training.DownloadModel(pb.ModelRequest(model_hash=expected), metadata=self._metadata,
                                                     timeout=300), 4 << 30)
        data = model.data
        if hashlib.sha256(data).hexdigest() != expected:
            raise ModelCheckFailed(f"the downloaded model does not hash to {expected[:16]}… as the chain says")
        return data, expected
