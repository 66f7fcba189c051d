"""Builds protobuf requests from keyword arguments (shared by the sync and asyncio clients)."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import grpc

from nextserve.errors import Unavailable
from nextserve.types import ResultBuilder
from nextserve.v1 import inference_pb2 as pb

Message = Mapping[str, Any]

_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


def _json_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: not JSON-serialisable ({e})") from None


def _tool_call(call: Mapping[str, Any], where: str) -> pb.ToolCall:
    fn = call.get("function", call)  # OpenAI's {"type": "function", "function": {...}} or flat
    if "name" not in fn:
        raise TypeError(f"{where}: a tool call needs a name")
    return pb.ToolCall(
        name=fn["name"], arguments_json=_json_text(fn.get("arguments", {}), f"{where}.arguments")
    )


def _tool(tool: Mapping[str, Any], where: str) -> pb.Tool:
    fn = tool.get("function", tool)
    if "name" not in fn:
        raise TypeError(f"{where}: a tool needs a name")
    out = pb.Tool(name=fn["name"], description=fn.get("description", ""))
    if "parameters" in fn:
        out.parameters_json = _json_text(fn["parameters"], f"{where}.parameters")
    return out


def chat_pb(
    messages: Sequence[Message],
    tools: Optional[Sequence[Mapping[str, Any]]] = None,
    add_generation_prompt: Optional[bool] = None,
) -> pb.Chat:
    """messages: dicts with role, content and (assistant) tool_calls, (tool) tool_call_id/name."""
    chat = pb.Chat()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if "role" not in m:
            raise TypeError(f"{where}: 'role' is required")
        out = chat.messages.add(role=m["role"], content=m.get("content") or "")
        for k, call in enumerate(m.get("tool_calls") or ()):
            out.tool_calls.append(_tool_call(call, f"{where}.tool_calls[{k}]"))
        if m.get("tool_call_id"):
            out.tool_call_id = m["tool_call_id"]
        if m.get("name"):
            out.name = m["name"]
    for t, tool in enumerate(tools or ()):
        chat.tools.append(_tool(tool, f"tools[{t}]"))
    if add_generation_prompt is not None:
        chat.add_generation_prompt = add_generation_prompt
    return chat


def generate_pb(
    *,
    prompt: Union[str, Sequence[int], None] = None,
    chat: Optional[pb.Chat] = None,
    max_tokens: Optional[int] = None,
    min_tokens: Optional[int] = None,
    stop: Union[str, Iterable[str], None] = None,
    stop_token_ids: Optional[Iterable[int]] = None,
    logprobs: Optional[int] = None,
    logit_bias: Optional[Mapping[int, float]] = None,
    ignore_eos: bool = False,
    request_id: str = "",
    **sampling: Any,
) -> pb.GenerateRequest:
    """A GenerateRequest; unset sampling fields take the model's generation defaults."""
    unknown = set(sampling) - set(_SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unknown generation parameter(s): {', '.join(sorted(unknown))}")
    req = pb.GenerateRequest(request_id=request_id, ignore_eos=ignore_eos)
    if chat is not None:
        req.chat.CopyFrom(chat)
    elif isinstance(prompt, str):
        req.text = prompt
    elif prompt is not None:
        req.token_ids.ids.extend(int(t) for t in prompt)
    else:
        raise TypeError("a prompt (text or token ids) or chat messages are required")
    for name, value in sampling.items():
        if value is not None:
            setattr(req.sampling, name, value)
    for token, bias in (logit_bias or {}).items():
        req.sampling.logit_bias[int(token)] = float(bias)
    if max_tokens is not None:
        req.max_tokens = max_tokens
    if min_tokens is not None:
        req.min_tokens = min_tokens
    if logprobs is not None:
        req.logprobs = logprobs
    if isinstance(stop, str):
        stop = [stop]
    req.stop.extend(stop or ())
    req.stop_token_ids.extend(stop_token_ids or ())
    return req


@dataclass(frozen=True)
class Retry:
    """Retries on UNAVAILABLE: unary calls always, a stream only before its first token."""

    max_retries: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def backoff(self, attempt: int) -> float:
        # Full jitter: clients that lost the same rank do not come back in step.
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * (2**attempt)))


class StreamState:
    """What a stream's response generator needs, for the sync and the asyncio client alike. The
    generator holds this, not the Stream, so that dropping the Stream (e.g. breaking out of a loop
    over it) frees it at once and cancels the call."""

    def __init__(self, client: Any, request: pb.GenerateRequest, timeout: Optional[float]):
        self.stub = client._stub
        self.metadata = client._metadata
        self.retry: Retry = client.retry
        self.request = request
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.call: Any = None  # grpc.Call or grpc.aio.UnaryStreamCall
        self.builder = ResultBuilder()
        self.done = False
        self.attempt = 0

    def remaining(self) -> Optional[float]:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def cancel(self) -> None:
        if self.call is not None and not self.done:
            self.call.cancel()

    def retry_pause(self, error: Exception) -> Optional[float]:
        """How long to wait before retrying after `error`, or None to give up: UNAVAILABLE only,
        only before the first token (afterwards a retry would repeat text), within the deadline."""
        if not isinstance(error, Unavailable) or self.builder.tokens_seen > 0:
            return None
        return retry_pause(self.retry, self.attempt, self.deadline)


def retry_pause(retry: Retry, attempt: int, deadline: Optional[float]) -> Optional[float]:
    """The backoff before retry number `attempt`, or None when retries or the deadline are spent."""
    if attempt >= retry.max_retries:
        return None
    pause = retry.backoff(attempt)
    if deadline is not None and time.monotonic() + pause >= deadline:
        return None
    return pause


def _read(value: Union[bytes, str, None]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class Connection:
    """Where and how to connect. TLS when any certificate is given or tls=True."""

    address: str
    api_key: Optional[str] = None
    tls: bool = False
    root_certificates: Union[bytes, str, None] = None  # PEM bytes or a file path
    certificate_chain: Union[bytes, str, None] = None  # client certificate (mutual TLS)
    private_key: Union[bytes, str, None] = None
    server_name: Optional[str] = None  # overrides the name checked in the server's certificate

    @staticmethod
    def make(address: str, api_key: Optional[str], **tls: Any) -> "Connection":
        # The key may come from the environment so that it stays out of code and shell history.
        if api_key is None:
            api_key = os.environ.get("NEXTSERVE_API_KEY") or None
        return Connection(address=address, api_key=api_key, **tls)

    @property
    def secure(self) -> bool:
        return self.tls or any(
            v is not None for v in (self.root_certificates, self.certificate_chain, self.private_key)
        )

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.root_certificates),
            private_key=_read(self.private_key),
            certificate_chain=_read(self.certificate_chain),
        )

    def options(self) -> list[tuple[str, Any]]:
        opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 << 20)]
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return opts

    def metadata(self) -> tuple[tuple[str, str], ...]:
        # Never logged or put in exception messages.
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def __repr__(self) -> str:  # keeps the key out of logs and tracebacks
        return f"Connection(address={self.address!r}, tls={self.secure}, api_key={'set' if self.api_key else 'unset'})"
