"""The asyncio client: the same calls as nextserve.Client, as coroutines and async iterators.

    client = nextserve.AsyncClient("127.0.0.1:8000")
    async for delta in client.generate("Hello", max_tokens=16):
        print(delta.text, end="")
    result = await client.chat_complete([{"role": "user", "content": "Hi"}])

Cancelling the task that reads a stream, breaking out of `async for`, or `cancel()` aborts the
request on the server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Mapping, Optional, Sequence, Union

import grpc
import grpc.aio

from nextserve import _request
from nextserve.errors import NextserveError, Unavailable, from_rpc_error
from nextserve.types import Delta, ModelInfo, Result, model_info_from_pb
from nextserve.v1 import inference_pb2 as pb
from nextserve.v1 import inference_pb2_grpc as pb_grpc


async def _responses(state: _request.StreamState) -> AsyncIterator[Delta]:
    try:
        while True:
            state.call = state.stub.Generate(
                state.request, timeout=state.remaining(), metadata=state.metadata
            )
            try:
                async for response in state.call:
                    delta = state.builder.add(response)
                    if delta is not None:
                        yield delta
                if state.builder.final is None:
                    raise NextserveError(
                        grpc.StatusCode.INTERNAL, "the stream ended without a Final message"
                    )
                return
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                pause = state.retry_pause(error)
                if pause is None:
                    raise error from None
                state.attempt += 1
                await asyncio.sleep(pause)
    finally:
        state.cancel()  # also when the reading task is cancelled (CancelledError passes here)
        state.done = True


class AsyncStream:
    """An async iterator of Deltas; afterwards `await result()`, `finish_reason`, `usage`."""

    def __init__(self, client: "AsyncClient", request: pb.GenerateRequest, timeout):
        self._state = _request.StreamState(client, request, timeout)
        self._responses = _responses(self._state)

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> Delta:
        return await self._responses.__anext__()

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        self._state.cancel()

    def cancel(self) -> None:
        self._state.cancel()

    async def aclose(self) -> None:
        self._state.cancel()
        await self._responses.aclose()

    async def result(self) -> Result:
        async for _ in self._responses:
            pass
        if self._state.builder.final is None:
            raise NextserveError(grpc.StatusCode.CANCELLED, "the stream was closed before it ended")
        return self._state.builder.result()

    @property
    def request_id(self) -> str:
        return self._state.builder.request_id

    @property
    def finished(self) -> bool:
        return self._state.builder.final is not None

    @property
    def finish_reason(self) -> Optional[str]:
        return self._state.builder.result().finish_reason if self.finished else None

    @property
    def usage(self):
        return self._state.builder.result().usage if self.finished else None


class AsyncClient:
    """nextserve.Client's asyncio twin (same arguments). Create it inside the running loop."""

    def __init__(
        self,
        address: str = "127.0.0.1:8000",
        *,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
        retry: _request.Retry = _request.Retry(),
        **tls: Any,
    ):
        self.connection = _request.Connection.make(address, api_key, **tls)
        self.timeout = timeout
        self.retry = retry
        if self.connection.secure:
            self._channel = grpc.aio.secure_channel(
                address, self.connection.credentials(), options=self.connection.options()
            )
        else:
            self._channel = grpc.aio.insecure_channel(address, options=self.connection.options())
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._metadata = self.connection.metadata()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"nextserve.AsyncClient({self.connection!r})"

    def generate(
        self, prompt: Union[str, Sequence[int]], *, timeout: Optional[float] = None, **params: Any
    ) -> AsyncStream:
        request = _request.generate_pb(prompt=prompt, **params)
        return AsyncStream(self, request, self._timeout(timeout))

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        add_generation_prompt: Optional[bool] = None,
        timeout: Optional[float] = None,
        **params: Any,
    ) -> AsyncStream:
        chat = _request.chat_pb(messages, tools, add_generation_prompt)
        request = _request.generate_pb(chat=chat, **params)
        return AsyncStream(self, request, self._timeout(timeout))

    async def complete(self, prompt: Union[str, Sequence[int]], **params: Any) -> Result:
        return await self.generate(prompt, **params).result()

    async def chat_complete(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Result:
        return await self.chat(messages, **params).result()

    async def tokenize(
        self,
        text: Optional[str] = None,
        *,
        messages: Optional[Sequence[Mapping[str, Any]]] = None,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        timeout: Optional[float] = None,
    ) -> list[int]:
        if (text is None) == (messages is None):
            raise TypeError("tokenize: give either text or messages")
        request = (
            pb.TokenizeRequest(text=text)
            if text is not None
            else pb.TokenizeRequest(chat=_request.chat_pb(messages, tools))
        )
        return list((await self._unary(self._stub.Tokenize, request, timeout)).ids)

    async def detokenize(
        self, ids: Sequence[int], *, skip_special_tokens: bool = False, timeout: Optional[float] = None
    ) -> str:
        request = pb.DetokenizeRequest(ids=list(ids), skip_special_tokens=skip_special_tokens)
        return (await self._unary(self._stub.Detokenize, request, timeout)).text

    async def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        return model_info_from_pb(
            await self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)
        )

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    async def _unary(self, method, request, timeout: Optional[float]):
        timeout = self._timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                pause = (
                    _request.retry_pause(self.retry, attempt, deadline)
                    if isinstance(error, Unavailable)
                    else None
                )
                if pause is None:
                    raise error from None
                attempt += 1
                await asyncio.sleep(pause)
