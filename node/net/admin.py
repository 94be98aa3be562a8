"""The admin credential: a random token the entry node creates on its first start.

The entry node keeps it in ``<home>/admin.token`` (mode 0600) and prints it once; supernodes
learn only its SHA-256 when they register. The console sends it as gRPC metadata
``authorization: Bearer <token>``; every console call checks it in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import grpc

from node.net.errors import refuse

TOKEN_FILE = "admin.token"
TOKEN_ENV = "FEDLEDGER_TOKEN"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_or_create_token(home: Path) -> tuple[str, bool]:
    """(token, created): read ``<home>/admin.token`` or create it (0600) on first start."""
    path = Path(home) / TOKEN_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    token = secrets.token_hex(32)  # hex: never starts with '-', which a command line would take for a flag
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, True


def require_admin(context: grpc.ServicerContext, expected_hash: str | None) -> None:
    """Refuse the call unless it carries the admin token."""
    if not expected_hash:
        raise refuse(grpc.StatusCode.UNAVAILABLE, "this supernode has not learnt the admin credential yet; retry")
    metadata = dict(context.invocation_metadata())
    value = metadata.get("authorization", "")
    if not value.startswith("Bearer ") or not value[7:].strip():
        raise refuse(grpc.StatusCode.UNAUTHENTICATED,
                     f"console commands need the admin token: pass --token or set {TOKEN_ENV} "
                     f"(the entry node keeps it in <home>/{TOKEN_FILE})")
    if not hmac.compare_digest(token_hash(value[7:].strip()), expected_hash):
        raise refuse(grpc.StatusCode.UNAUTHENTICATED, "the admin token is wrong")
