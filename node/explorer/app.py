"""The explorer's routes: thin handlers that ask the read model (``views``) and render a
template. Only GET pages, the login form and the verify button; every page needs the operator
(``access``); every response carries a strict content security policy (no script runs, nothing
is loaded from another site)."""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.chain.rules import TxKind
from node.chain.store import StoreError
from node.explorer.access import COOKIE, SESSION_SECONDS, OperatorSessions, RequireOperator, safe_next
from node.explorer.charts import curves_svg
from node.explorer.views import ExplorerData
from node.roles.supernode import Supernode

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
HASH = re.compile(r"[0-9a-f]{64}")
NODE_ID = re.compile(r"[0-9a-f]{32}")
LINKED = re.compile(r"\b([0-9a-f]{64}|[0-9a-f]{32})\b")  # hashes and node ids in a payload become links
MAX_FORM_BYTES = 4096
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def explorer_app(node: Supernode, secure_cookies: bool) -> Starlette:
    """The explorer of ``node`` (``secure_cookies``: served over TLS)."""
    data = ExplorerData(node)
    sessions = OperatorSessions(lambda: node.admin_token_hash)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(when=_when, short=_short, linkify=_linkify, pct=_pct, num=_num, size=_size)
    templates.env.globals["node_id"] = node.node_id

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def not_found(what: str) -> HTTPException:
        return HTTPException(404, what)

    def login_form(request: Request) -> Response:
        return page(request, "login.html", next=safe_next(request.query_params.get("next")), error="",
                    ready=bool(node.admin_token_hash))

    async def login(request: Request) -> Response:
        body = await _bounded_body(request, MAX_FORM_BYTES)
        if body is None:
            return Response(f"a login form is at most {MAX_FORM_BYTES} bytes\n", status_code=413, media_type="text/plain")
        form = parse_qs(body.decode("utf-8", "replace"))
        target = safe_next(form.get("next", ["/"])[0])
        session = sessions.open(form.get("token", [""])[0].strip())
        if session is None:
            log.warning("explorer: a failed login from %s", request.client.host if request.client else "?")
            error = ("this supernode has not learnt the admin token yet; retry in a moment"
                     if not node.admin_token_hash else "that is not the admin token")
            return page(request, "login.html", status_code=401, next=target, error=error,
                        ready=bool(node.admin_token_hash))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session, max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                            secure=secure_cookies)
        return response

    def logout(request: Request) -> Response:
        sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    def overview(request: Request) -> Response:
        return page(request, "overview.html", **data.overview())

    def blocks(request: Request) -> Response:
        below = _int(request.query_params.get("below"))
        rows, next_below = data.blocks(below)
        return page(request, "blocks.html", rows=rows, next_below=next_below)

    def block(request: Request) -> Response:
        height = request.path_params["height"]
        found = data.block(height) if height <= MAX_HEIGHT else None
        if found is None:
            raise not_found(f"no block at height {request.path_params['height']} on this supernode's chain")
        return page(request, "block.html", **found)

    def transaction(request: Request) -> Response:
        found = data.transaction(_hash(request.path_params["tx_hash"], "transaction"))
        if found is None:
            raise not_found(f"no transaction {request.path_params['tx_hash']} on this supernode's chain")
        payload = json.dumps(found["tx"].payload, indent=2, sort_keys=True)
        return page(request, "tx.html", payload=payload, **found)

    def search(request: Request) -> Response:
        query = request.query_params.get("q", "")[:200]
        found = data.find(query)
        if len(found) == 1:
            return RedirectResponse(_link(*found[0]), status_code=303)
        return page(request, "search.html", query=query, found=[(kind, key, _link(kind, key)) for kind, key in found])

    def verify_page(request: Request) -> Response:
        return page(request, "verify.html", verified=data.verified)

    def verify_now(request: Request) -> Response:
        data.verify()
        return RedirectResponse("/verify", status_code=303)

    def models(request: Request) -> Response:
        job, kind = request.query_params.get("job", ""), request.query_params.get("kind", "")
        page_number = min(_int(request.query_params.get("page")) or 0, 10**6)
        rows, more = data.models(job, kind, page_number)
        kinds = (TxKind.MODEL_UPDATE, TxKind.AGGREGATE, TxKind.GLOBAL_MODEL, TxKind.SAVE)
        return page(request, "models.html", rows=rows, more=more, page=page_number, job=job, kind=kind, kinds=kinds,
                    jobs=data.job_ids())

    def model(request: Request) -> Response:
        found = data.model(_hash(request.path_params["model_hash"], "model"))
        if found is None:
            raise not_found(f"no model {request.path_params['model_hash']} is recorded on this supernode's chain")
        return page(request, "model.html", **found)

    def download(request: Request) -> Response:
        model_hash = _hash(request.path_params["model_hash"], "model")
        content = data.model_bytes(model_hash)
        if content is None:
            raise not_found(f"this supernode does not hold model {model_hash}; the supernode that recorded it may")
        return Response(content, media_type="application/octet-stream", headers={
            "content-disposition": f'attachment; filename="{model_hash}.safetensors"',
            "x-model-sha256": model_hash})

    def jobs(request: Request) -> Response:
        rows = data.jobs()
        return page(request, "jobs.html", rows=rows, compare=sum(1 for j in rows if j["rounds_done"]) > 1)

    def job(request: Request) -> Response:
        found = data.job(request.path_params["job_id"])
        if found is None:
            raise not_found(f"no job {request.path_params['job_id']!r} on this supernode's chain")
        return page(request, "job.html", job=found)

    def curves(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        drawn = data.curves(job_id)
        if drawn is None:
            raise not_found(f"no job {job_id!r} on this supernode's chain")
        rounds, finals = drawn
        return Response(curves_svg(f"job {job_id}", f"job {job_id}", {job_id: rounds}, {job_id: finals}),
                        media_type="image/svg+xml")

    def compared_curves(request: Request) -> Response:
        return Response(curves_svg("jobs", "every job", data.compared()), media_type="image/svg+xml")

    def network(request: Request) -> Response:
        return page(request, "network.html", **data.network())

    def node_page(request: Request) -> Response:
        node_id = request.path_params["node_id"]
        found = data.node_page(node_id) if NODE_ID.fullmatch(node_id) else None
        if found is None:
            raise not_found(f"no node {node_id} is known to this supernode")
        return page(request, "node.html", **found)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        title = {404: "Not found", 405: "Not allowed"}.get(exc.status_code, "Refused")
        return page(request, "error.html", status_code=exc.status_code, title=title, message=exc.detail)

    async def store_error(request: Request, exc: Exception) -> Response:
        log.warning("explorer: %s: the ledger database failed: %s", request.url.path, exc)
        return page(request, "error.html", status_code=503, title="Not available",
                    message=f"this supernode's ledger database did not answer ({exc}); retry in a moment")

    routes = [
        Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", overview), Route("/blocks", blocks), Route("/block/{height:int}", block),
        Route("/tx/{tx_hash}", transaction), Route("/search", search),
        Route("/verify", verify_page, methods=["GET"]), Route("/verify", verify_now, methods=["POST"]),
        Route("/models", models), Route("/model/{model_hash}", model),
        Route("/model/{model_hash}/download", download),
        Route("/jobs", jobs), Route("/jobs/curves.svg", compared_curves), Route("/job/{job_id}", job),
        Route("/job/{job_id}/curves.svg", curves),
        Route("/network", network), Route("/node/{node_id}", node_page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders), Middleware(RequireOperator, sessions)],
                     exception_handlers={HTTPException: http_error, StoreError: store_error})


class SecurityHeaders:
    """ASGI middleware: the same protective headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it passes ``limit`` bytes (read no further: anyone may
    post to the login page)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _link(kind: str, key: str) -> str:
    return {"block": f"/block/{key}", "tx": f"/tx/{key}", "model": f"/model/{key}", "node": f"/node/{key}",
            "job": f"/job/{key}"}[kind]


def _hash(value: str, what: str) -> str:
    if not HASH.fullmatch(value):
        raise HTTPException(404, f"{value[:80]!r} is not a {what} hash (64 hex digits)")
    return value


MAX_HEIGHT = 2**63 - 1  # the ledger's BIGINT


def _int(value: str | None) -> int | None:
    """A non-negative integer the ledger can hold, else None."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number <= MAX_HEIGHT else None


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(value: str | None, n: int = 12) -> str:
    return "" if not value else (value if len(value) <= n else value[:n] + "…")


def _linkify(text: str) -> Markup:
    """Escaped text whose hashes and node ids link to the search (which finds what they name)."""
    return Markup(LINKED.sub(lambda m: f'<a href="/search?q={m.group(1)}">{m.group(1)}</a>', str(escape(text))))


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f} %"


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
