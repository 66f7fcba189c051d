"""The synchronous client against a real router and ranks."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import nextserve
from conftest import BIN, EOS, VOCAB, Process, listen_address, start_router

PROMPT = "the quick brown fox jumps over the lazy dog"
GREEDY = dict(temperature=0, ignore_eos=True)


def test_the_installed_package_is_tested_not_the_source_tree():
    assert "site-packages" in nextserve.__file__, nextserve.__file__


def test_streaming_deltas_join_to_the_whole_result(client):
    stream = client.generate(PROMPT, max_tokens=12, **GREEDY)
    deltas = list(stream)
    assert deltas, "no deltas"
    assert all(isinstance(d, nextserve.Delta) for d in deltas)
    ids = [t for d in deltas for t in d.token_ids]
    assert len(ids) == 12
    assert all(0 <= t < VOCAB for t in ids)
    assert stream.finished
    assert stream.finish_reason == "length"
    result = stream.result()
    assert result.token_ids == ids
    assert result.text == "".join(d.text for d in deltas)
    # The streamed text is the detokenized ids (special tokens skipped, as in the stream).
    assert client.detokenize(ids, skip_special_tokens=True) == result.text
    assert result.usage.prompt_tokens == len(client.tokenize(PROMPT))
    assert result.usage.completion_tokens == 12
    assert result.usage.total_tokens == result.usage.prompt_tokens + 12
    assert result.usage.time_to_first_token_s > 0
    assert result.request_id


def test_non_streaming_equals_streaming_for_greedy(client):
    streamed = client.generate(PROMPT, max_tokens=10, **GREEDY).result()
    whole = client.complete(PROMPT, max_tokens=10, **GREEDY)
    assert whole.token_ids == streamed.token_ids
    assert whole.text == streamed.text
    # Token ids as the prompt give the same continuation as the text they encode.
    ids = client.tokenize(PROMPT)
    assert client.complete(ids, max_tokens=10, **GREEDY).token_ids == whole.token_ids


def test_seeded_sampling_repeats_and_request_id_is_echoed(client):
    a = client.complete(PROMPT, max_tokens=10, temperature=1.0, seed=1234, request_id="mine-1")
    b = client.complete(PROMPT, max_tokens=10, temperature=1.0, seed=1234)
    assert a.token_ids == b.token_ids
    assert a.request_id == "mine-1"


def test_chat_and_tokenize_messages(client):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "say hi"},
    ]
    result = client.chat_complete(messages, max_tokens=6, **GREEDY)
    assert result.usage.prompt_tokens == len(client.tokenize(messages=messages))
    ids = client.tokenize(messages=messages)
    assert ids[0] == 510  # <|im_start|>
    assert len(result.token_ids) == 6
    # A tool round trip renders (assistant tool call, then the tool's answer).
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    turn = messages + [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "content": "noon", "tool_call_id": "call-1"},
    ]
    assert len(client.tokenize(messages=turn, tools=tools)) > len(ids)
    assert client.chat_complete(turn, tools=tools, max_tokens=3, **GREEDY).usage.completion_tokens == 3


def test_logprobs_when_asked(client):
    result = client.complete(PROMPT, max_tokens=5, logprobs=3, **GREEDY)
    assert len(result.logprobs) == 5
    for token, lp in zip(result.token_ids, result.logprobs):
        assert lp.token_id == token
        assert lp.rank == 1  # greedy picks the most likely token
        assert len(lp.top) == 3
        assert lp.top[0].token_id == token
        assert lp.logprob == pytest.approx(lp.top[0].logprob)
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
    assert client.complete(PROMPT, max_tokens=2, **GREEDY).logprobs == []


def test_stop_strings_and_finish_reason(client):
    text = client.complete(PROMPT, max_tokens=24, **GREEDY).text
    if len(text) < 4:
        pytest.skip("the random model's greedy text is too short to pick a stop string")
    stop = text[2:4]
    cut = client.complete(PROMPT, max_tokens=24, stop=stop, **GREEDY)
    assert cut.finish_reason == "stop"
    assert cut.stop_reason == stop
    assert cut.text == text[: text.index(stop)]


def test_model_info(client):
    info = client.model_info()
    assert info.vocab_size == VOCAB
    assert info.max_context == 2048
    assert info.ranks == 2
    assert EOS in info.eos_token_ids
    assert "temperature" in info.default_sampling


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_tokens=100000), "max_tokens"),
        (dict(logprobs=50), "logprobs"),
        (dict(logit_bias={VOCAB + 3: 1.0}), "logit_bias"),
    ],
)
def test_bad_arguments_raise_invalid_argument_naming_the_field(client, kwargs, field):
    with pytest.raises(nextserve.InvalidArgument) as e:
        client.complete(PROMPT, **kwargs)
    assert field in e.value.details
    assert e.value.code.name == "INVALID_ARGUMENT"


def test_bad_ids_and_unknown_parameters(client):
    with pytest.raises(nextserve.InvalidArgument, match=r"ids\[1\]"):
        client.detokenize([1, VOCAB + 10])
    with pytest.raises(nextserve.InvalidArgument):
        client.complete([1, -5], max_tokens=2)
    with pytest.raises(TypeError, match="temprature"):
        client.generate(PROMPT, temprature=0.5)
    with pytest.raises(TypeError, match="role"):
        client.chat([{"content": "no role"}])


def test_deadline_exceeded_and_the_rank_frees_the_request(client, cluster):
    with pytest.raises(nextserve.DeadlineExceeded):
        client.complete(PROMPT, max_tokens=1500, timeout=0.3, **GREEDY)
    cluster.wait_ranks_idle()


def test_breaking_out_of_the_stream_aborts_it_on_the_rank(client, cluster):
    seen = 0
    for delta in client.generate(PROMPT, max_tokens=1500, **GREEDY):
        seen += len(delta.token_ids)
        if seen >= 3:
            break
    cluster.wait_ranks_idle()
    # Explicit cancel and the context manager do the same.
    with client.generate(PROMPT, max_tokens=1500, **GREEDY) as stream:
        next(stream)
        stream.cancel()
        with pytest.raises(nextserve.Cancelled):
            list(stream)
    cluster.wait_ranks_idle()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unavailable_is_retried_with_backoff_then_raised():
    port = free_port()  # nothing listens there
    retry = nextserve.Retry(max_retries=2, initial_backoff_s=0.01, max_backoff_s=0.02)
    with nextserve.Client(f"127.0.0.1:{port}", retry=retry) as c:
        start = time.monotonic()
        with pytest.raises(nextserve.Unavailable):
            c.complete(PROMPT, max_tokens=2)
        with pytest.raises(nextserve.Unavailable):
            c.model_info(timeout=5)
        assert time.monotonic() - start < 5


def test_a_stream_retries_until_a_router_appears(cluster, tmp_path):
    """UNAVAILABLE before the first token is retried: a router that starts late still answers."""
    port = free_port()
    router: list[Process] = []

    def start_late():
        time.sleep(0.5)
        router.append(start_router(cluster.model_dir, cluster.ranks, tmp_path / "late.log", port))

    threading.Thread(target=start_late).start()
    retry = nextserve.Retry(max_retries=40, initial_backoff_s=0.05, max_backoff_s=0.25)
    try:
        with nextserve.Client(f"127.0.0.1:{port}", retry=retry, timeout=60) as c:
            result = c.complete(PROMPT, max_tokens=4, **GREEDY)
        assert len(result.token_ids) == 4
    finally:
        time.sleep(0.6)
        for p in router:
            p.stop()


def test_api_key_never_appears_in_repr(cluster, monkeypatch):
    monkeypatch.setenv("NEXTSERVE_API_KEY", "sk-secret-123")
    with nextserve.Client(cluster.router) as c:
        assert c.connection.api_key == "sk-secret-123"
        assert "sk-secret-123" not in repr(c)
        assert c.connection.metadata() == (("authorization", "Bearer sk-secret-123"),)


EXAMPLES = Path(__file__).resolve().parents[2] / "sdk" / "python" / "examples"


@pytest.mark.parametrize("example", ["stream.py", "chat.py", "async_concurrent.py"])
def test_examples_run(cluster, example):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / example), "--addr", cluster.router, "--max-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "finish" in out.stdout, out.stdout
