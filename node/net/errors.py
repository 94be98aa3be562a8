"""Refusals and the status code every failure maps to.

A servicer or anything it calls refuses a request by raising :func:`refuse` (a code and a reason
a person can act on). Exceptions of the project's other layers are mapped by the name of their
class (or of a base class), so this module imports neither torch nor SQLAlchemy: the console and
``python -m node.health`` stay light, and the layers below know nothing of gRPC.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """A request was refused: carries the gRPC status code and the reason."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def refuse(code: grpc.StatusCode, message: str) -> ServiceError:
    return ServiceError(code, message)


# module.ClassName -> status; the first class in an exception's MRO found here decides
_CODES: dict[str, grpc.StatusCode] = {
    "node.chain.store.BlockConflict": grpc.StatusCode.ABORTED,
    "node.chain.store.LedgerUnavailable": grpc.StatusCode.UNAVAILABLE,
    "node.chain.store.StoreError": grpc.StatusCode.INTERNAL,
    "node.net.wire.WireError": grpc.StatusCode.INVALID_ARGUMENT,
    "node.chain.rules.ChainError": grpc.StatusCode.INVALID_ARGUMENT,
    "node.chain.identity.IdentityError": grpc.StatusCode.INVALID_ARGUMENT,
    "fl.layout.SerializationError": grpc.StatusCode.INVALID_ARGUMENT,
    "node.net.tls.TlsError": grpc.StatusCode.INVALID_ARGUMENT,
    "node.roles.enrolment.EnrolmentError": grpc.StatusCode.INVALID_ARGUMENT,
    "fl.strategy.base.InvalidUpdate": grpc.StatusCode.INVALID_ARGUMENT,
}


# refusals another node gave to a call made on a caller's behalf keep their code when passed on
_FORWARDED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
              grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for ``exc``; INTERNAL for anything unforeseen."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    if isinstance(exc, grpc.RpcError):
        if not callable(getattr(exc, "code", None)):  # a request stream the caller cancelled (or its deadline)
            return grpc.StatusCode.CANCELLED, "the caller cancelled the call or its deadline passed"
        if exc.code() in _FORWARDED:  # another node's refusal stays a refusal (clients do not retry it)
            return exc.code(), exc.details() or exc.code().name
        return grpc.StatusCode.UNAVAILABLE, f"another node did not answer: {exc.code().name} {exc.details()}"
    for kind in type(exc).__mro__:
        code = _CODES.get(f"{kind.__module__}.{kind.__qualname__}")
        if code is not None:
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
