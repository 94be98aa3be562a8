"""One server interceptor for what every call shares: who may call it, how its bytes are read,
and what a failure becomes.

Every RPC of ``proto/data.proto`` has a :class:`Rule` in a node's table (the server refuses to
start otherwise). A rule names the certificate roles that may call (``SN``, ``EN``, ``console``;
none: anyone, even without a certificate), optionally a check of the call itself (the admin
token, or "the entry node only"), or refuses outright (a method this role does not serve, with
a status that says where to go instead). The caller is who the mutual-TLS handshake proved
(:func:`node.net.tls.peer_of`); a revoked node is refused whatever the rule. Servicers that bind
a signed payload to its sender read the caller with :func:`caller`.

Requests are decoded here, so a message that does not parse is INVALID_ARGUMENT, not INTERNAL.
Whatever a servicer raises becomes a gRPC status with a message a person can act on
(:func:`node.net.errors.status_for`) and one log line (WARNING with the peer for refused input,
no traceback); only a failure nobody foresaw is logged with its traceback, as INTERNAL.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from base_package import data_pb2 as pb
from node.net.errors import ServiceError, refuse, status_for
from node.net.limits import StreamLimits, peer_key
from node.net.tls import ANONYMOUS, INSECURE, Peer, peer_of

log = logging.getLogger(__name__)

PACKAGE = pb.DESCRIPTOR.package
_CALLER: contextvars.ContextVar[Peer] = contextvars.ContextVar("caller", default=ANONYMOUS)
# refusals that say the caller sent something wrong: logged as WARNING (peer, method, reason)
_CALLER_FAULTS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE,
                  grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class Rule:
    """Who may call a method. ``who`` says it for people (the README's table lists it);
    ``roles``: the certificate roles admitted (None: anyone, even without a certificate);
    ``check`` enforces the rest from the call before the servicer runs; ``refusal`` answers
    every call at once with that status and message."""

    who: str
    roles: frozenset[str] | None = None
    check: Callable[[grpc.ServicerContext, Peer], None] | None = None
    refusal: tuple[grpc.StatusCode, str] | None = None


def anyone(who: str) -> Rule:
    return Rule(who)


def certified(who: str, *roles: str, check: Callable[[grpc.ServicerContext, Peer], None] | None = None) -> Rule:
    return Rule(who, frozenset(roles), check)


def refused(code: grpc.StatusCode, message: str) -> Rule:
    return Rule(f"nobody ({code.name})", refusal=(code, message))


def caller() -> Peer:
    """Who is calling the RPC this thread serves (set by the guard)."""
    return _CALLER.get()


@contextlib.contextmanager
def calls_from(peer: Peer) -> Iterator[None]:
    """Run a node's methods in-process as if ``peer`` called them over the network (tests, tools)."""
    token = _CALLER.set(peer)
    try:
        yield
    finally:
        _CALLER.reset(token)


def require_caller(node_id: str, what: str) -> None:
    """Refuse unless the authenticated caller is ``node_id``: a signed message is accepted only
    from the node that signed it, so a copy replayed by anyone else is refused."""
    peer = caller()
    if not peer.is_node(node_id):
        raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"{what} of node {node_id} must come from that node, not from {peer}")


def method_path(service: str, method: str) -> str:
    """``/fedledger.Console/Status``: how gRPC names a method to an interceptor."""
    return f"/{PACKAGE}.{service}/{method}"


def all_methods() -> list[tuple[str, str]]:
    """(service, method) for every RPC in the wire contract."""
    return [(s.name, m.name) for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]


class Guard(grpc.ServerInterceptor):
    """Applies ``rules`` (keyed by :func:`method_path`) to every call of the contract's services.
    Health checking and reflection are public and pass untouched.

    ``tls``: callers are known by their certificates (else every caller is :data:`INSECURE`);
    ``revoked(node_id)``: whether the chain revoked a node; ``limits``: how many streams a caller
    (and everyone) may hold at once, and for how long without moving."""

    def __init__(self, rules: Mapping[str, Rule], tls: bool = True,
                 revoked: Callable[[str], bool] = lambda node_id: False, limits: StreamLimits | None = None) -> None:
        missing = [method_path(s, m) for s, m in all_methods() if method_path(s, m) not in rules]
        if missing:
            raise ValueError(f"every RPC needs a rule; none for {', '.join(missing)}")
        self.rules = dict(rules)
        self.tls = tls
        self.revoked = revoked
        self.limits = limits or StreamLimits(per_peer=4, total=24, idle_seconds=30.0)
        self._methods = {method_path(s.name, m.name): m for s in pb.DESCRIPTOR.services_by_name.values()
                         for m in s.methods}

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        rule = self.rules.get(details.method)
        if rule is None:
            return continuation(details)
        method = self._methods[details.method]
        if rule.refusal is not None:
            return _refusing_handler(method.client_streaming, method.server_streaming, *rule.refusal)
        handler = continuation(details)
        return None if handler is None else self._guarded(handler, rule, details.method)

    def admit(self, context: grpc.ServicerContext, rule: Rule) -> Peer:
        """The caller, once ``rule`` admits it (else a refusal)."""
        peer = peer_of(context) if self.tls else INSECURE
        _CALLER.set(peer)
        if rule.roles is not None and self.tls:
            if not peer.authenticated:
                raise refuse(grpc.StatusCode.UNAUTHENTICATED,
                             "this call needs a certificate of this network (mutual TLS): enrol the node with a "
                             "token from the operator first")
            if peer.role not in rule.roles:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"this call is for {rule.who}, not for {peer}")
            if self.revoked(peer.node_id):
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"node {peer.node_id} was revoked by the operator")
        if rule.check is not None:
            rule.check(context, peer)
        return peer

    def _guarded(self, handler: Any, rule: Rule, method: str) -> Any:
        """The same handler with the rule first, requests decoded here, and every exception
        mapped to a status."""
        decode = handler.request_deserializer or (lambda raw: raw)
        wrap = {"response_serializer": handler.response_serializer}  # requests arrive as bytes

        def parse(raw: bytes) -> Any:
            try:
                return decode(raw)
            except (DecodeError, ValueError, TypeError) as exc:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                             f"the request is not a valid message for {method}: {exc}") from None

        enter = functools.partial(self.admit, rule=rule)

        def hold(context: grpc.ServicerContext) -> contextlib.AbstractContextManager[Callable[[], None]]:
            return self.limits.stream(peer_key(caller().node_id, context), context)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary_unary(raw: bytes, context: grpc.ServicerContext) -> Any:
                try:
                    enter(context)
                    return inner(parse(raw), context)
                except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                    _fail(context, exc, method)
            return grpc.unary_unary_rpc_method_handler(unary_unary, **wrap)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def unary_stream(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    enter(context)
                    with hold(context) as moved:
                        for response in inner_stream(parse(raw), context):
                            yield response
                            moved()
                except Exception as exc:  # noqa: BLE001
                    _fail(context, exc, method)
            return grpc.unary_stream_rpc_method_handler(unary_stream, **wrap)
        if handler.stream_unary is not None:
            inner_upload = handler.stream_unary

            def stream_unary(raws: Iterator[bytes], context: grpc.ServicerContext) -> Any:
                try:
                    enter(context)
                    with hold(context) as moved:
                        return inner_upload(_parsed(raws, parse, moved), context)
                except Exception as exc:  # noqa: BLE001
                    _fail(context, exc, method)
            return grpc.stream_unary_rpc_method_handler(stream_unary, **wrap)
        inner_both = handler.stream_stream

        def stream_stream(raws: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                enter(context)
                with hold(context) as moved:
                    for response in inner_both(_parsed(raws, parse, moved), context):
                        yield response
                        moved()
            except Exception as exc:  # noqa: BLE001
                _fail(context, exc, method)
        return grpc.stream_stream_rpc_method_handler(stream_stream, **wrap)


def _parsed(raws: Iterator[bytes], parse: Callable[[bytes], Any], moved: Callable[[], None]) -> Iterator[Any]:
    """A client stream's requests, decoded, each one marking the stream as moving."""
    for raw in raws:
        moved()
        yield parse(raw)


MAX_REASON = 1000  # UTF-8 bytes of a refusal's reason sent and logged (it may quote what the caller sent;
                   # gRPC percent-encodes other bytes than ASCII, and refuses a status over 16 KiB)


def _fail(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_for(exc)
    if len(message.encode()) > MAX_REASON:
        message = message.encode()[:MAX_REASON].decode(errors="ignore") + "…"
    if code == grpc.StatusCode.INTERNAL and not isinstance(exc, ServiceError):
        log.exception("%s failed", method)
    elif code in _CALLER_FAULTS:
        log.warning("%s from %s (%s) refused: %s: %s", method, context.peer(), caller(), code.name, message)
    else:
        log.info("%s refused: %s: %s", method, code.name, message)
    context.abort(code, message)


def _refusing_handler(client_streaming: bool, server_streaming: bool, code: grpc.StatusCode,
                      message: str) -> Any:
    """A handler of the method's shape that answers ``code`` with ``message`` (request unread)."""

    def answer(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if client_streaming and server_streaming:
        return grpc.stream_stream_rpc_method_handler(answer)
    if client_streaming:
        return grpc.stream_unary_rpc_method_handler(answer)
    if server_streaming:
        return grpc.unary_stream_rpc_method_handler(answer)
    return grpc.unary_unary_rpc_method_handler(answer)
