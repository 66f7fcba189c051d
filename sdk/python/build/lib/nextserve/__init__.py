"""nextserve: Python client for the nextserve model server (gRPC, nextserve.v1.Inference)."""

from nextserve._request import Retry
from nextserve.aio import AsyncClient, AsyncStream
from nextserve.client import Client, Stream
from nextserve.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    NextserveError,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from nextserve.types import Delta, ModelInfo, Result, TokenLogprob, TopLogprob, Usage

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncStream",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "Delta",
    "InternalError",
    "InvalidArgument",
    "ModelInfo",
    "NextserveError",
    "Overloaded",
    "PermissionDenied",
    "Result",
    "Retry",
    "Stream",
    "TokenLogprob",
    "TopLogprob",
    "Unauthenticated",
    "Unavailable",
    "Usage",
]
