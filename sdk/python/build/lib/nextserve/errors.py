"""Typed exceptions for nextserve calls, mapped from gRPC status codes."""

from __future__ import annotations

import grpc


class NextserveError(Exception):
    """A call failed. `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgument(NextserveError):
    """The request is malformed or out of range (the message names the field)."""


class Overloaded(NextserveError):
    """The server's admission queue is full (RESOURCE_EXHAUSTED): retry later."""


class Unavailable(NextserveError):
    """No rank can serve the request now (or the connection failed)."""


class DeadlineExceeded(NextserveError):
    """The call's deadline passed."""


class Unauthenticated(NextserveError):
    """No API key, or one the server does not accept."""


class PermissionDenied(NextserveError):
    """The API key is not allowed to make this call."""


class Cancelled(NextserveError):
    """The call was cancelled."""


class InternalError(NextserveError):
    """The server failed (a bug or a broken rank): the message says where."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
}


def from_rpc_error(error: grpc.RpcError) -> NextserveError:
    """The typed exception for a failed gRPC call (sync or asyncio)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return _BY_CODE.get(code, NextserveError)(code, details or "")
