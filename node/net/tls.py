"""Mutual TLS: the network's certificate authority, each node's certificate, gRPC credentials,
and who is on the other end of a call.

Design (README, "Enrolment and TLS"): the entry node's operator keeps a network CA (ECDSA P-256,
made with ``cryptography``'s x509 on the entry node's first start). Each node has, besides its
Ed25519 identity (whose hash is its node id and which signs everything on the chain), a P-256
TLS key; at enrolment the CA issues a certificate for it whose common name is the node id, whose
organisational unit is its role (``SN``, ``EN``, or ``console`` for the operator's console) and
whose DNS names are the node id and :data:`NETWORK_NAME`. The node proves that it holds the
Ed25519 key of that id by signing its enrolment request, so a certificate binds a TLS key to a
chain identity.

Every link is mutual TLS against that CA. A client that knows which node it is calling checks the
server's certificate names that node id (gRPC's target-name override), otherwise that it is any
node of the network; the server reads the caller's verified id and role from the handshake
(:func:`peer_of`). ECDSA rather than Ed25519 certificates: every TLS stack verifies them.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NETWORK_NAME = "fedledger"  # a DNS name in every node certificate: "any node of this network"
CONSOLE_ROLE = "console"
CERT_ROLES = ("SN", "EN", CONSOLE_ROLE)
CA_DIR, TLS_DIR, CONSOLE_DIR = "ca", "tls", "console"
CA_KEY, CA_CERT = "ca.key", "ca.crt"
NODE_KEY, NODE_CERT = "node.key", "node.crt"
CONSOLE_KEY, CONSOLE_CERT = "console.key", "console.crt"
CA_YEARS = 10


class TlsError(ValueError):
    """A key, certificate or signing request cannot be used; the message says which and why."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (never overwriting one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_sha256(cert: x509.Certificate) -> str:
    """The hex SHA-256 of a certificate's DER bytes: what a token pins and ENROLL records."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_cert(data: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise TlsError(f"{what} is not a PEM certificate: {exc}") from None


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from ``path``, created (mode 0600) when missing."""
    if not path.exists():
        try:
            _write_private(path, _key_pem(ec.generate_private_key(ec.SECP256R1())))
        except FileExistsError:
            pass  # another process made it first: read that one
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{path} is not a readable PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{path} holds a {type(key).__name__}, not an elliptic-curve key")
    return key


def signing_request(key: ec.EllipticCurvePrivateKey, node_id: str) -> bytes:
    """A PEM certificate signing request for ``key`` naming ``node_id`` (proves the key is held)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Authority:
    """The network CA: issues node and console certificates. Lives in the entry node's home."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def load_or_create(cls, home: Path, name: str) -> "Authority":
        """``<home>/ca/``: read the CA, or create it on the entry node's first start."""
        folder = Path(home) / CA_DIR
        key = load_or_create_key(folder / CA_KEY)
        cert_path = folder / CA_CERT
        if cert_path.exists():
            cert = load_cert(cert_path.read_bytes(), str(cert_path))
            if cert.public_key() != key.public_key():
                raise TlsError(f"{cert_path} does not belong to {folder / CA_KEY}")
            return cls(key, cert)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedLedger"),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"FedLedger network CA {name}")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        tmp = folder / f".{CA_CERT}.{os.getpid()}"
        tmp.write_bytes(cert_pem(cert))
        try:
            os.link(tmp, cert_path)  # exclusive: two processes making the CA at once agree on one certificate
        except FileExistsError:
            return cls.load_or_create(home, name)
        finally:
            tmp.unlink()
        return cls(key, cert)

    @property
    def sha256(self) -> str:
        return cert_sha256(self.cert)

    def issue(self, csr_pem: bytes, node_id: str, role: str, days: int) -> x509.Certificate:
        """A certificate for the key in ``csr_pem``, naming ``node_id`` and ``role``."""
        if role not in CERT_ROLES:
            raise TlsError(f"role {role!r} is not one of {', '.join(CERT_ROLES)}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise TlsError(f"the certificate signing request is not PEM: {exc}") from None
        if not csr.is_signature_valid:
            raise TlsError("the certificate signing request is not signed by its own key")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise TlsError("the TLS key must be an ECDSA P-256 key")
        now = _now()
        names = [x509.DNSName(node_id), x509.DNSName(NETWORK_NAME)]
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                                         x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
                .issuer_name(self.cert.subject).public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))


def check_issued(cert: x509.Certificate, ca: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                 node_id: str) -> None:
    """Raise :class:`TlsError` unless ``ca`` issued ``cert`` for ``key`` and ``node_id``."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"the certificate was not issued by the network CA: {exc}") from None
    if cert.public_key() != key.public_key():
        raise TlsError("the certificate is for another key than this node's TLS key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != node_id:
        raise TlsError(f"the certificate names {names[0].value if names else 'nobody'}, not {node_id}")


@dataclass(frozen=True)
class Credentials:
    """What one end of a TLS link presents and trusts: its key and certificate, and the CA."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    @classmethod
    def load(cls, folder: Path, key_file: str = NODE_KEY, cert_file: str = NODE_CERT) -> "Credentials":
        folder = Path(folder)
        paths = [folder / key_file, folder / cert_file, folder / CA_CERT]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise TlsError(f"TLS credentials missing: {', '.join(missing)}")
        creds = cls(*(p.read_bytes() for p in paths))
        load_cert(creds.cert_pem, str(paths[1]))
        load_cert(creds.ca_pem, str(paths[2]))
        return creds

    @property
    def certificate(self) -> x509.Certificate:
        return load_cert(self.cert_pem, "this node's certificate")

    def server(self) -> grpc.ServerCredentials:
        """Server side: present this certificate, require a client certificate from the CA."""
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem,
                                           require_client_auth=True)

    def channel(self) -> grpc.ChannelCredentials:
        """Client side: present this certificate, trust only the network CA."""
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)


@dataclass(frozen=True)
class HostCredentials:
    """The credentials of several nodes behind one server (virtual edge nodes, ``--count``): the
    handshake presents the certificate of the node the caller asks for. A caller names the node
    it expects as its TLS target (``grpc.ssl_target_name_override``), which gRPC also sends as
    the server name (SNI); the server picks the certificate whose names match it, so each node
    still proves its own id, and a node this server does not hold fails the handshake."""

    members: tuple[Credentials, ...]

    def server(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(c.key_pem, c.cert_pem) for c in self.members],
                                           root_certificates=self.members[0].ca_pem, require_client_auth=True)


def save_node_credentials(folder: Path, cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Write a node's certificate and the CA's next to its TLS key (``node.key``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CA_CERT).write_bytes(cert_pem(ca))
    (folder / NODE_CERT).write_bytes(cert_pem(cert))


def issue_console_credentials(authority: Authority, home: Path, days: int) -> Path:
    """``<home>/console/``: a key and certificate (role ``console``) for the operator's console,
    with the CA; made once, on the entry node's first start. Returns the folder."""
    folder = Path(home) / CONSOLE_DIR
    if (folder / CONSOLE_CERT).exists():
        return folder
    key = load_or_create_key(folder / CONSOLE_KEY)
    cert = authority.issue(signing_request(key, CONSOLE_ROLE), CONSOLE_ROLE, CONSOLE_ROLE, days)
    (folder / CA_CERT).write_bytes(cert_pem(authority.cert))
    (folder / CONSOLE_CERT).write_bytes(cert_pem(cert))
    return folder


# --- who is calling ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """The caller of an RPC as the TLS handshake proved it: a node id and its role; or nobody
    (a plaintext call on the entry node's enrolment port); or, on a node started with
    ``--insecure``, anyone: no caller can be told from another, so every claim is taken as made."""

    node_id: str = ""
    role: str = ""
    insecure: bool = False

    @property
    def authenticated(self) -> bool:
        return bool(self.node_id)

    def is_node(self, node_id: str) -> bool:
        """The caller is ``node_id`` (always true without TLS: nothing tells otherwise)."""
        return self.insecure or self.node_id == node_id

    def __str__(self) -> str:
        if self.insecure:
            return "a caller (plaintext, not authenticated)"
        return f"{self.role} {self.node_id}" if self.authenticated else "an unauthenticated caller"


ANONYMOUS = Peer()
INSECURE = Peer(insecure=True)


def peer_of(context: grpc.ServicerContext) -> Peer:
    """The verified certificate's common name and organisational unit, from the handshake."""
    auth = context.auth_context()
    subject = auth.get("x509_subject")
    names = auth.get("x509_common_name")
    if not subject or not names:
        return ANONYMOUS
    role = ""
    for part in subject[0].decode(errors="replace").split(","):
        field, _, value = part.partition("=")
        if field.strip() == "OU":
            role = value.strip()
    return Peer(names[0].decode(errors="replace"), role)
