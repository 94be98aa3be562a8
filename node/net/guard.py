"""One server interceptor for what every call shares: who may call it, and what a failure becomes.

Every RPC of ``proto/data.proto`` has a :class:`Rule` in a node's table (the server refuses to
start otherwise). A rule either enforces itself from the call's metadata before the servicer
runs (the admin token), refuses outright (a method this role does not serve, with a status
that says where to go instead), or names the check the servicer makes against the signed
payload (a registered key signed it), which needs the node's state to decide.

Whatever a servicer raises becomes a gRPC status with a message a person can act on
(:func:`node.net.errors.status_for`) and one log line; a failure nobody foresaw is logged with
its traceback and answered INTERNAL. Servicers stay thin: decode, call the node, encode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from base_package import data_pb2 as pb
from node.net.errors import ServiceError, status_for

log = logging.getLogger(__name__)

PACKAGE = pb.DESCRIPTOR.package


@dataclass(frozen=True)
class Rule:
    """Who may call a method. ``who`` says it for people (the README's table lists it);
    ``check`` enforces it from the call context before the servicer runs; ``refusal`` answers
    every call at once with that status and message."""

    who: str
    check: Callable[[grpc.ServicerContext], None] | None = None
    refusal: tuple[grpc.StatusCode, str] | None = None


def refused(code: grpc.StatusCode, message: str) -> Rule:
    return Rule(f"nobody ({code.name})", refusal=(code, message))


def method_path(service: str, method: str) -> str:
    """``/fedledger.Console/Status``: how gRPC names a method to an interceptor."""
    return f"/{PACKAGE}.{service}/{method}"


def all_methods() -> list[tuple[str, str]]:
    """(service, method) for every RPC in the wire contract."""
    return [(s.name, m.name) for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]


class Guard(grpc.ServerInterceptor):
    """Applies ``rules`` (keyed by :func:`method_path`) to every call of the contract's services.
    Health checking and reflection are public and pass untouched."""

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        missing = [method_path(s, m) for s, m in all_methods() if method_path(s, m) not in rules]
        if missing:
            raise ValueError(f"every RPC needs a rule; none for {', '.join(missing)}")
        self.rules = dict(rules)
        self._streaming = {method_path(s.name, m.name): (m.client_streaming, m.server_streaming)
                           for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        rule = self.rules.get(details.method)
        if rule is None:
            return continuation(details)
        if rule.refusal is not None:
            return _refusing_handler(*self._streaming[details.method], *rule.refusal)
        handler = continuation(details)
        return None if handler is None else _guarded(handler, rule, details.method)


def _fail(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL and not isinstance(exc, ServiceError):
        log.exception("%s failed", method)
    else:
        log.info("%s refused: %s: %s", method, code.name, message)
    context.abort(code, message)


def _guarded(handler: Any, rule: Rule, method: str) -> Any:
    """The same handler with the rule's check first and every exception mapped to a status."""
    check = rule.check or (lambda context: None)
    wrap = {"request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                check(context)
                return inner(request, context)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                _fail(context, exc, method)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **wrap)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                check(context)
                yield from inner_stream(request, context)
            except Exception as exc:  # noqa: BLE001
                _fail(context, exc, method)
        return grpc.unary_stream_rpc_method_handler(unary_stream, **wrap)
    if handler.stream_unary is not None:
        inner_upload = handler.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            try:
                check(context)
                return inner_upload(requests, context)
            except Exception as exc:  # noqa: BLE001
                _fail(context, exc, method)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **wrap)
    raise ValueError(f"{method}: bidirectional streams are not part of the contract")


def _refusing_handler(client_streaming: bool, server_streaming: bool, code: grpc.StatusCode,
                      message: str) -> Any:
    """A handler of the method's shape that answers ``code`` with ``message`` (request unread)."""

    def answer(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if client_streaming:
        return grpc.stream_unary_rpc_method_handler(answer)
    if server_streaming:
        return grpc.unary_stream_rpc_method_handler(answer)
    return grpc.unary_unary_rpc_method_handler(answer)
