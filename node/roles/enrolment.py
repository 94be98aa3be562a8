"""Enrolment: only nodes the operator admitted join, and each gets a certificate for mutual TLS.

The operator (console ``enrol(role='EN', uses=1, hours=24)``, or ``python main.py token --home
ENTRY_HOME`` before the entry node runs) makes an **enrolment token**: ``FL1-`` and 54 bytes in
URL-safe base64 holding a token id, a 128-bit secret, the SHA-256 of the network CA's certificate
and the entry node's enrolment port. The token's role, expiry and remaining uses stay in the
entry node's home (``ca/tokens.json``, mode 0600), never on the wire.

A node started with a token (``--token`` or ``FEDLEDGER_ENROL_TOKEN``):
1. asks the entry node's enrolment port (plaintext: it has no certificate yet) for the network's
   CA certificate and refuses it unless its SHA-256 is the one in the token, so a man in the middle
   cannot hand it another network;
2. sends its Ed25519 public key, a signing request for a fresh P-256 TLS key, an HMAC of both
   under the token's secret (the secret itself never crosses the wire, and the proof is bound to
   this key and request, so an eavesdropper can neither reuse it nor enrol another key with it),
   and an Ed25519 signature over the same (it holds the key of its node id);
3. gets a certificate from the CA and keeps it in ``<home>/tls/``; it needs no token again.

The entry node checks the proof, the token's expiry and uses, and that the node was not revoked,
records an ENROLL transaction (node, key, role, token id, the certificate's hash) and issues the
certificate. A REGISTER is valid on the chain only after an ENROLL of that node with that key and
role; after a REVOKE nothing from that node is (chain rules), and every supernode refuses its
calls (the guard checks the revocations its copy of the chain holds).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from node.chain.identity import Identity, node_id_for, verify_signature
from node.chain.rules import ROLES, Enrolment, Transaction, TxKind, now_ms
from node.net.channels import split_address, url_host
from node.net.errors import refuse
from node.net.tls import (CA_DIR, NODE_KEY, TLS_DIR, Authority, TlsError, cert_pem, cert_sha256, check_issued,
                          load_cert, load_or_create_key, save_node_credentials, signing_request)

if TYPE_CHECKING:
    from node.roles.supernode import Supernode

TOKEN_PREFIX = "FL1-"
TOKENS_FILE = "tokens.json"
NETWORK_FILE = "network.json"
_ID_BYTES, _SECRET_BYTES, _HASH_BYTES = 4, 16, 32
MAX_USES = 100_000
MAX_HOURS = 24 * 365


class EnrolmentError(ValueError):
    """A token or an enrolment cannot be used; the message says why and what to do."""


# --- the token ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    token_id: str  # 8 hex digits
    secret: bytes
    ca_sha256: str
    enrol_port: int

    def __str__(self) -> str:
        raw = (bytes.fromhex(self.token_id) + self.secret + bytes.fromhex(self.ca_sha256)
               + self.enrol_port.to_bytes(2, "big"))
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> "Token":
        text = text.strip()
        if not text.startswith(TOKEN_PREFIX):
            raise EnrolmentError(f"an enrolment token starts with {TOKEN_PREFIX}; got {text[:8]!r}…")
        body = text[len(TOKEN_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            raise EnrolmentError("the enrolment token is damaged (not base64); copy it again") from None
        if len(raw) != _ID_BYTES + _SECRET_BYTES + _HASH_BYTES + 2:
            raise EnrolmentError("the enrolment token has the wrong length; copy it again")
        a, b, c = _ID_BYTES, _ID_BYTES + _SECRET_BYTES, _ID_BYTES + _SECRET_BYTES + _HASH_BYTES
        return cls(raw[:a].hex(), raw[a:b], raw[b:c].hex(), int.from_bytes(raw[c:], "big"))


def enrolment_message(token_id: str, public_key: bytes, csr: bytes) -> bytes:
    """What the proof (HMAC under the token's secret) and the node's signature cover."""
    return b"fedledger-enrol\x00" + token_id.encode() + b"\x00" + public_key + csr


def proof(secret: bytes, token_id: str, public_key: bytes, csr: bytes) -> bytes:
    return hmac.new(secret, enrolment_message(token_id, public_key, csr), hashlib.sha256).digest()


# --- tokens kept by the entry node -------------------------------------------------------------
@dataclass
class IssuedToken:
    """A token as the entry node keeps it (the secret stays here; only its holder has it too)."""

    token_id: str
    secret: str  # hex
    role: str
    uses: int  # remaining
    expires_ms: int
    created_ms: int
    max_samples: int = 0  # edge nodes: the most training samples each may claim in own-data jobs (0: none)


class TokenStore:
    """``<entry home>/ca/tokens.json``, shared by the running entry node and the offline
    ``main.py token`` command: every change holds an exclusive lock on the file's lock file."""

    def __init__(self, home: Path) -> None:
        self.folder = Path(home) / CA_DIR
        self.path = self.folder / TOKENS_FILE
        self._thread_lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[dict[str, IssuedToken]]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self.folder / (TOKENS_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tokens = self._read()
            before = {k: asdict(v) for k, v in tokens.items()}
            now = now_ms()
            for token_id in [k for k, t in tokens.items() if t.expires_ms <= now]:
                del tokens[token_id]  # expired tokens are forgotten
            try:
                yield tokens
            finally:  # a refusal after a change (an expired token dropped) keeps the change
                if {k: asdict(v) for k, v in tokens.items()} != before:
                    self._write(tokens)

    def _read(self) -> dict[str, IssuedToken]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return {k: IssuedToken(**v) for k, v in raw.items()}
        except (ValueError, TypeError) as exc:
            raise EnrolmentError(f"{self.path} is damaged ({exc}); remove it to start with no tokens") from None

    def _write(self, tokens: dict[str, IssuedToken]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in sorted(tokens.items())}, indent=1), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(self.path)

    def create(self, role: str, uses: int, hours: float, ca_sha256: str, enrol_port: int,
               max_samples: int = 0) -> tuple[Token, IssuedToken]:
        if role not in ROLES:
            raise EnrolmentError(f"a token enrols a supernode (SN) or an edge node (EN), not {role!r}")
        if not 1 <= uses <= MAX_USES:
            raise EnrolmentError(f"uses must be between 1 and {MAX_USES}, got {uses}")
        if not 0 < hours <= MAX_HOURS:
            raise EnrolmentError(f"hours must be more than 0 and at most {MAX_HOURS}, got {hours}")
        if not 0 <= max_samples < 2**31 or (max_samples and role != "EN"):
            raise EnrolmentError(f"max_samples caps an edge node's training samples: 0 (none) or up to 2**31 - 1 "
                                 f"for an EN token, got {max_samples} for {role}")
        with self._locked() as tokens:
            token_id = secrets.token_hex(_ID_BYTES)
            while token_id in tokens:
                token_id = secrets.token_hex(_ID_BYTES)
            secret = secrets.token_bytes(_SECRET_BYTES)
            now = now_ms()
            issued = IssuedToken(token_id, secret.hex(), role, uses, now + int(hours * 3_600_000), now, max_samples)
            tokens[token_id] = issued
        return Token(token_id, secret, ca_sha256, enrol_port), issued

    def list(self) -> list[IssuedToken]:
        with self._locked() as tokens:
            return sorted(tokens.values(), key=lambda t: t.created_ms)

    def remove(self, token_id: str) -> bool:
        with self._locked() as tokens:
            return tokens.pop(token_id, None) is not None

    def use(self, token_id: str, check: Callable[[IssuedToken], None], count: bool = True) -> IssuedToken:
        """Run ``check`` on the live token ``token_id`` and, when it passes, count one use
        (unless ``count`` is False: a node enrolled before, enrolling again)."""
        with self._locked() as tokens:
            token = tokens.get(token_id)
            if token is None:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"enrolment token {token_id} is unknown, expired, "
                                                                f"used up or withdrawn; ask the operator for a new one")
            check(token)
            if not count:
                return token
            token.uses -= 1
            if token.uses <= 0:
                del tokens[token_id]
            return token


def enrol_port_for(port: int) -> int:
    """The entry node's default enrolment port: ``port`` + 10000 (or − 10000 above 55535)."""
    return port + 10000 if port + 10000 < 65536 else port - 10000


def offline_token(home: Path, role: str, uses: int, hours: float, enrol_port: int, max_samples: int = 0) -> Token:
    """A token made in the entry node's home, whether or not the node runs (its key and CA are
    made when missing, race-safe against the node making them): ``main.py token``, the launcher."""
    identity = Identity.load_or_create(home)
    authority = Authority.load_or_create(home, identity.node_id[:8])
    return TokenStore(home).create(role, uses, hours, authority.sha256, enrol_port, max_samples)[0]


# --- the entry node's side ---------------------------------------------------------------------
@dataclass(frozen=True)
class Admission:
    """What the entry node admits nodes with: its CA, its tokens, the port nodes without a
    certificate enrol on, and how long the certificates it issues last."""

    authority: Authority
    tokens: TokenStore
    enrol_port: int
    cert_days: int


class Enroller:
    """Checks enrolment requests, records ENROLL and issues certificates; revokes (the entry node)."""

    def __init__(self, node: "Supernode", admission: Admission) -> None:
        self.node = node
        self.authority = admission.authority
        self.tokens = admission.tokens
        self.enrol_port = admission.enrol_port
        self.cert_days = admission.cert_days
        self._lock = threading.Lock()
        self._issued: dict[str, Enrolment] = {}  # ENROLLs submitted by this process

    def network(self) -> pb.NetworkInfo:
        genesis = self.node.ledger.store.block_hash(0) or ""
        return pb.NetworkInfo(ca_certificate=cert_pem(self.authority.cert), entry_id=self.node.node_id,
                              genesis_hash=genesis)

    def create_token(self, role: str, uses: int, hours: float, max_samples: int = 0) -> pb.EnrolmentToken:
        try:
            token, issued = self.tokens.create(role, uses or 1, hours or 24.0, self.authority.sha256, self.enrol_port,
                                               max_samples)
        except EnrolmentError as exc:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return pb.EnrolmentToken(token=str(token), token_id=issued.token_id, role=issued.role, uses=issued.uses,
                                 expires_ms=issued.expires_ms, max_samples=issued.max_samples)

    def enrol(self, request: pb.EnrolRequest) -> pb.EnrolReply:
        try:
            node_id = node_id_for(request.public_key)
        except ValueError as exc:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"public_key: {exc}") from None
        message = enrolment_message(request.token_id, request.public_key, request.csr)
        if not verify_signature(request.public_key, request.signature, message):
            raise refuse(grpc.StatusCode.UNAUTHENTICATED, f"the enrolment request is not signed by node {node_id}'s key")
        with self._lock:  # one enrolment at a time: uses are counted and ENROLL recorded in order
            known = self.enrolment(node_id)
            again = known is not None and not known.revoked  # its reply was lost, or its certificate expired
            issued = []

            def check(token: IssuedToken) -> None:  # the use counts only if all of it holds
                expected = proof(bytes.fromhex(token.secret), request.token_id, request.public_key, request.csr)
                if not hmac.compare_digest(expected, request.proof):
                    raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                                 f"the proof does not match enrolment token {request.token_id}: the token was copied wrongly")
                self._check_node(known, node_id, token.role)
                try:
                    issued.append(self.authority.issue(request.csr, node_id, token.role, self.cert_days))
                except TlsError as exc:
                    raise refuse(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

            token = self.tokens.use(request.token_id, check, count=not again)
            role, cert = token.role, issued[0]
            if not again:  # a node enrolled once is on the chain once, however often it fetches a certificate
                payload = {"node": node_id, "public_key": request.public_key.hex(), "role": role,
                           "token": request.token_id, "certificate": cert_sha256(cert)}
                if token.max_samples:  # the operator's cap on what this edge node may claim (own-data jobs)
                    payload["max_samples"] = token.max_samples
                tx = Transaction.create(TxKind.ENROLL, payload, self.node.identity)
                self.node.submit(tx)
                self._issued[node_id] = Enrolment(request.public_key, role, False)
        return pb.EnrolReply(certificate=cert_pem(cert), role=role, network=self.network())

    def enrolment(self, node_id: str) -> Enrolment | None:
        """What the chain (or an ENROLL of this process not yet sealed) says about ``node_id``."""
        on_chain = self.node.ledger.enrolment(node_id)
        return on_chain if on_chain is not None and on_chain.revoked else (self._issued.get(node_id) or on_chain)

    def revoke(self, target: str, reason: str) -> str:
        """Withdraw the token ``target``, or revoke the node ``target`` (a REVOKE on the chain,
        refused by this node at once and by every supernode once the block reaches it).
        Returns the REVOKE's hash, or "" for a withdrawn token."""
        target = target.strip().lower()
        if self.tokens.remove(target):
            return ""
        if target == self.node.node_id:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "the entry node cannot revoke itself")
        known = self.enrolment(target)
        if known is None:
            raise refuse(grpc.StatusCode.NOT_FOUND, f"{target!r} is neither a live token id nor an enrolled node id")
        if known.revoked:
            raise refuse(grpc.StatusCode.ALREADY_EXISTS, f"node {target} is already revoked")
        tx = Transaction.create(TxKind.REVOKE, {"node": target, "reason": (reason or "revoked by the operator")[:1000]},
                                self.node.identity)
        return self.node.submit(tx)

    @staticmethod
    def _check_node(known: Enrolment | None, node_id: str, role: str) -> None:
        if known is None:
            return
        if known.revoked:
            raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                         f"node {node_id} was revoked; a revoked node cannot enrol again (start it with a new --home)")
        if known.role != role:
            raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                         f"node {node_id} is enrolled as {known.role}; this token enrols a {role}")


# --- the joining node's side -------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkPin:
    """What a node learnt at enrolment and trusts from then on (``<home>/tls/network.json``)."""

    entry_id: str
    genesis_hash: str
    ca_sha256: str
    role: str

    @classmethod
    def load(cls, home: Path) -> "NetworkPin | None":
        path = Path(home) / TLS_DIR / NETWORK_FILE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise EnrolmentError(f"{path} is damaged ({exc}); enrol this node again with a new token") from None

    def save(self, home: Path) -> None:
        path = Path(home) / TLS_DIR / NETWORK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")


def pinned_genesis(home: Path) -> str:
    """The genesis block hash ``home``'s node pinned at enrolment, for ``verify_chain(...,
    genesis_hash=)``: a ledger that starts elsewhere belongs to another network. Empty when the
    home holds no pin, or pins none (the entry node makes the genesis block rather than learning it)."""
    pin = NetworkPin.load(home)
    return pin.genesis_hash if pin is not None else ""


def enrol(home: Path, identity: Identity, token_text: str, entry_address: str, timeout: float = 30.0) -> NetworkPin:
    """Enrol this node with the entry node using ``token_text``; keep the certificate in
    ``<home>/tls/``. Raises :class:`EnrolmentError` with what went wrong."""
    token = Token.parse(token_text)
    host, _ = split_address(entry_address)
    target = f"{url_host(host)}:{token.enrol_port}"
    with grpc.insecure_channel(target) as channel:
        stub = rpc_pb.EnrolmentStub(channel)
        try:
            network = stub.GetNetwork(pb.Empty(), timeout=timeout, wait_for_ready=True)
            ca = load_cert(network.ca_certificate, f"the CA certificate {target} sent")
            if cert_sha256(ca) != token.ca_sha256:
                raise EnrolmentError(f"{target} presents another network's CA than the token names: a wrong "
                                     f"--entry address, or someone in between; nothing was sent")
            key = load_or_create_key(Path(home) / TLS_DIR / NODE_KEY)
            csr = signing_request(key, identity.node_id)
            reply = stub.Enrol(pb.EnrolRequest(
                token_id=token.token_id, public_key=identity.public_key, csr=csr,
                proof=proof(token.secret, token.token_id, identity.public_key, csr),
                signature=identity.sign(enrolment_message(token.token_id, identity.public_key, csr))), timeout=timeout)
        except grpc.RpcError as exc:
            raise EnrolmentError(f"enrolment at {target} failed: {exc.code().name}: {exc.details()}") from None
    cert = load_cert(reply.certificate, "the issued certificate")
    check_issued(cert, ca, key, identity.node_id)
    save_node_credentials(Path(home) / TLS_DIR, cert, ca)
    pin = NetworkPin(reply.network.entry_id, reply.network.genesis_hash, token.ca_sha256, reply.role)
    pin.save(home)
    return pin
