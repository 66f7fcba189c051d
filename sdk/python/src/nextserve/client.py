"""The synchronous client.

    import nextserve
    client = nextserve.Client("127.0.0.1:8000")
    for delta in client.generate("Once upon a time", max_tokens=32, temperature=0):
        print(delta.text, end="", flush=True)
    result = client.chat_complete([{"role": "user", "content": "Hi"}], max_tokens=16)
    print(result.text, result.finish_reason, result.usage)
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import grpc

from nextserve import _request
from nextserve.errors import NextserveError, Unavailable, from_rpc_error
from nextserve.types import Delta, ModelInfo, Result, model_info_from_pb
from nextserve.v1 import inference_pb2 as pb
from nextserve.v1 import inference_pb2_grpc as pb_grpc


def _responses(state: _request.StreamState) -> Iterator[Delta]:
    try:
        while True:
            state.call = state.stub.Generate(
                state.request, timeout=state.remaining(), metadata=state.metadata
            )
            try:
                for response in state.call:
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
                time.sleep(pause)
    finally:
        state.cancel()  # a no-op once the Final arrived; otherwise aborts it on the rank
        state.done = True


class Stream:
    """A Generate call: iterate for Deltas; afterwards `result()`, `finish_reason`, `usage`.

    Breaking out of a loop over it (once nothing else holds it), `cancel()`, `close()` or leaving a
    `with` block cancels the request on the server: its rank frees the request's cache at once.
    """

    def __init__(self, client: "Client", request: pb.GenerateRequest, timeout: Optional[float]):
        self._state = _request.StreamState(client, request, timeout)
        self._responses = _responses(self._state)

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Delta:
        return next(self._responses)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def cancel(self) -> None:
        """Cancels the call (iteration then raises Cancelled)."""
        self._state.cancel()

    def close(self) -> None:
        """Cancels the call if it has not ended, and stops the iteration."""
        self._state.cancel()
        self._responses.close()

    def result(self) -> Result:
        """Reads what is left of the stream and returns the whole generation."""
        for _ in self._responses:
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
        return self.result().finish_reason if self.finished else None

    @property
    def usage(self):
        return self.result().usage if self.finished else None


class Client:
    """A connection to a nextserve router (or anything serving nextserve.v1.Inference).

    api_key: sent as `authorization: Bearer <key>`; default: $NEXTSERVE_API_KEY.
    tls / root_certificates / certificate_chain / private_key: TLS, mutual TLS with a client key.
    timeout: default per-call deadline in seconds (None: none). retry: UNAVAILABLE retries.
    """

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
            self._channel = grpc.secure_channel(
                address, self.connection.credentials(), options=self.connection.options()
            )
        else:
            self._channel = grpc.insecure_channel(address, options=self.connection.options())
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._metadata = self.connection.metadata()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"nextserve.Client({self.connection!r})"

    # --- generation -------------------------------------------------------------------------

    def generate(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        timeout: Optional[float] = None,
        **params: Any,
    ) -> Stream:
        """Streams the continuation of `prompt` (text, tokenized by the server, or token ids).

        params: max_tokens, min_tokens, temperature, top_p, top_k, min_p, repetition_penalty,
        presence_penalty, frequency_penalty, logit_bias, seed, stop, stop_token_ids, logprobs
        (top-N per token), ignore_eos, request_id. Unset sampling params take the model's defaults.
        """
        request = _request.generate_pb(prompt=prompt, **params)
        return Stream(self, request, self._timeout(timeout))

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        add_generation_prompt: Optional[bool] = None,
        timeout: Optional[float] = None,
        **params: Any,
    ) -> Stream:
        """Streams the assistant's answer to `messages` rendered with the model's chat template."""
        chat = _request.chat_pb(messages, tools, add_generation_prompt)
        request = _request.generate_pb(chat=chat, **params)
        return Stream(self, request, self._timeout(timeout))

    def complete(self, prompt: Union[str, Sequence[int]], **params: Any) -> Result:
        """generate(), read to the end: text, token ids, finish reason and usage."""
        return self.generate(prompt, **params).result()

    def chat_complete(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> Result:
        """chat(), read to the end."""
        return self.chat(messages, **params).result()

    # --- the rest of the API ----------------------------------------------------------------

    def tokenize(
        self,
        text: Optional[str] = None,
        *,
        messages: Optional[Sequence[Mapping[str, Any]]] = None,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        timeout: Optional[float] = None,
    ) -> list[int]:
        """Token ids of raw text, or of chat messages rendered with the chat template."""
        if (text is None) == (messages is None):
            raise TypeError("tokenize: give either text or messages")
        request = (
            pb.TokenizeRequest(text=text)
            if text is not None
            else pb.TokenizeRequest(chat=_request.chat_pb(messages, tools))
        )
        return list(self._unary(self._stub.Tokenize, request, timeout).ids)

    def detokenize(
        self,
        ids: Sequence[int],
        *,
        skip_special_tokens: bool = False,
        timeout: Optional[float] = None,
    ) -> str:
        request = pb.DetokenizeRequest(ids=list(ids), skip_special_tokens=skip_special_tokens)
        return self._unary(self._stub.Detokenize, request, timeout).text

    def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        return model_info_from_pb(
            self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)
        )

    def wait_ready(self, timeout: float = 60.0) -> ModelInfo:
        """Waits until the server answers and has at least one rank serving."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = self.model_info(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                if info.ranks > 0:
                    return info
                last: Exception = Unavailable(grpc.StatusCode.UNAVAILABLE, "no rank serves yet")
            except NextserveError as e:
                last = e
            if time.monotonic() >= deadline:
                raise last
            time.sleep(0.05)

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        return self.timeout if timeout is None else timeout

    def _unary(self, method, request, timeout: Optional[float]):
        timeout = self._timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
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
                time.sleep(pause)
