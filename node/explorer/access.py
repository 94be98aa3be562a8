"""Who may read the explorer, enforced in one place: the operator, as for the console.

The chain, the models and the network are what the console shows, so the explorer asks for the
same credential, the admin token (``node.net.admin``), checked in constant time against the hash
this supernode holds. A browser gives it once on the login page and gets a session cookie
(random, HttpOnly, SameSite=Strict, Secure over TLS, 8 hours); scripts may send it as
``Authorization: Bearer <token>`` on every request. Sessions live in this process only: a restart
logs everyone out. Every request without a valid session is sent to the login page (pages) or
refused with 401 (anything else).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from node.net.admin import token_hash

log = logging.getLogger(__name__)

COOKIE = "fedledger_session"
SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 256  # the oldest goes first
OPEN_PATHS = ("/login", "/static/")  # what a visitor without a session may fetch


class OperatorSessions:
    """Browser sessions opened with the admin token. ``expected_hash`` returns the token's hash
    as this supernode knows it now (learnt at registration; empty before)."""

    def __init__(self, expected_hash: Callable[[], str | None]) -> None:
        self.expected_hash = expected_hash
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def token_ok(self, token: str) -> bool:
        expected = self.expected_hash()
        return bool(expected and token) and hmac.compare_digest(token_hash(token), expected)

    def open(self, token: str) -> str | None:
        """A new session id for the right token, else None."""
        if not self.token_ok(token):
            return None
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session] = time.monotonic() + SESSION_SECONDS
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        with self._lock:
            expires = self._sessions.get(session)
            if expires is None:
                return False
            if expires < time.monotonic():
                del self._sessions[session]
                return False
            return True

    def close(self, session: str | None) -> None:
        with self._lock:
            self._sessions.pop(session or "", None)


class RequireOperator:
    """ASGI middleware: every request but the login page and the style sheet needs a session
    cookie or the admin token as a bearer token."""

    def __init__(self, app: ASGIApp, sessions: OperatorSessions) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["method"] not in ("GET", "HEAD") and not _same_origin(headers):
            await _refusal("a form posted from another site or port is refused", 403)(scope, receive, send)
            return
        bearer = headers.get("authorization")
        if bearer is not None:  # a script: the token on every request, right or refused
            if bearer.startswith("Bearer ") and self.sessions.token_ok(bearer[7:].strip()):
                await self.app(scope, receive, send)
                return
            log.warning("explorer: a wrong admin token from %s", _client(scope))
            response: Response = _refusal("that is not the admin token")
        elif scope["path"].startswith(OPEN_PATHS) or self.sessions.valid(_cookie(headers.get("cookie", ""), COOKIE)):
            await self.app(scope, receive, send)
            return
        elif scope["method"] in ("GET", "HEAD") and ("text/html" in headers.get("accept", "") or scope["path"] == "/"):
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + (f"?{query}" if query else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = _refusal("the explorer needs the admin token: log in at /login or send "
                                "'Authorization: Bearer <token>'")
        await response(scope, receive, send)


def _refusal(message: str, status: int = 401) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return Response(message + "\n", status_code=status, media_type="text/plain", headers=headers)


def _same_origin(headers: dict[str, str]) -> bool:
    """A POST (log in, log out, verify) comes from this explorer's own pages: browsers say where
    a request comes from (``Sec-Fetch-Site``, ``Origin``); SameSite cookies alone would still let
    another port of the same host post here. Scripts that send neither are judged by the token."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = headers.get("origin")  # ("null" under this site's no-referrer policy)
    return origin in (None, "null") or origin.split("://", 1)[-1] == headers.get("host", "")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
