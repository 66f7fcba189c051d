"""What calls return: plain dataclasses, independent of the protobuf classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from nextserve.v1 import inference_pb2 as pb


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Delta:
    """One streamed piece: complete UTF-8 text (possibly empty) and the token ids behind it."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    queue_time_s: float
    time_to_first_token_s: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Result:
    """A whole generation: what the stream carried, joined, and how it ended."""

    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str  # "stop" or "length"
    stop_reason: str  # the stop string or token id that ended it ("" if none)
    usage: Usage


@dataclass(frozen=True)
class ModelInfo:
    model: str
    vocab_size: int
    max_context: int
    num_experts: int
    num_experts_per_tok: int
    ranks: int
    eos_token_ids: tuple[int, ...]
    default_sampling: dict = field(default_factory=dict)


_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}


def finish_reason_name(reason: int) -> str:
    return _FINISH.get(reason, "unspecified")


def delta_from_pb(d: pb.Delta) -> Delta:
    return Delta(
        text=d.text,
        token_ids=tuple(d.token_ids),
        logprobs=tuple(
            TokenLogprob(
                token_id=lp.token_id,
                logprob=lp.logprob,
                rank=lp.rank,
                top=tuple(TopLogprob(t.token_id, t.logprob) for t in lp.top),
            )
            for lp in d.logprobs
        ),
    )


def usage_from_pb(u: pb.Usage) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        queue_time_s=u.queue_time_s,
        time_to_first_token_s=u.time_to_first_token_s,
    )


def model_info_from_pb(m: pb.ModelInfo) -> ModelInfo:
    s = m.default_sampling
    sampling = {f.name: v for f, v in s.ListFields() if f.name != "logit_bias"}
    return ModelInfo(
        model=m.model,
        vocab_size=m.vocab_size,
        max_context=m.max_context,
        num_experts=m.num_experts,
        num_experts_per_tok=m.num_experts_per_tok,
        ranks=m.ranks,
        eos_token_ids=tuple(m.eos_token_ids),
        default_sampling=sampling,
    )


class ResultBuilder:
    """Accumulates a stream's responses into a Result (shared by the sync and asyncio clients)."""

    def __init__(self) -> None:
        self.request_id = ""
        self.final: Optional[pb.Final] = None
        self.tokens_seen = 0  # tokens already yielded: a retry is allowed only while 0
        self._text: list[str] = []
        self._ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []

    def add(self, response: pb.GenerateResponse) -> Optional[Delta]:
        if response.request_id:
            self.request_id = response.request_id
        kind = response.WhichOneof("kind")
        if kind == "final":
            self.final = response.final
            return None
        if kind != "delta":
            return None
        delta = delta_from_pb(response.delta)
        self.tokens_seen += len(delta.token_ids)
        self._text.append(delta.text)
        self._ids.extend(delta.token_ids)
        self._logprobs.extend(delta.logprobs)
        return delta

    def result(self) -> Result:
        assert self.final is not None
        return Result(
            request_id=self.request_id,
            text="".join(self._text),
            token_ids=list(self._ids),
            logprobs=list(self._logprobs),
            finish_reason=finish_reason_name(self.final.finish_reason),
            stop_reason=self.final.stop_reason,
            usage=usage_from_pb(self.final.usage),
        )
