"""The router's OpenAI-compatible HTTP, through the real `openai` client and raw HTTP (curl)."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import openai

from conftest import listen_address
import pytest

MODEL = "model"  # the served model's name: its directory's (conftest writes <tmp>/model)
MESSAGES = [{"role": "user", "content": "say something"}]


@pytest.fixture
def oai(cluster):
    return openai.OpenAI(base_url=f"http://{cluster.http}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(oai, cluster):
    models = oai.models.list()
    assert [m.id for m in models.data] == [MODEL]
    out = subprocess.run(["curl", "-s", "-w", "%{http_code}", f"http://{cluster.http}/health"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.endswith("200"), out.stdout
    assert json.loads(out.stdout[:-3])["ranks"] == 2


def test_chat_completion_matches_the_grpc_path(oai, cluster):
    import nextserve

    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                    extra_body={"ignore_eos": True})
    choice = r.choices[0]
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 8
    with nextserve.Client(cluster.router) as grpc_client:
        same = grpc_client.chat_complete(MESSAGES, max_tokens=8, temperature=0, ignore_eos=True)
        assert r.usage.prompt_tokens == len(grpc_client.tokenize(messages=MESSAGES))
    assert choice.message.content == same.text
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_streaming_with_usage(oai):
    stream = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                         stream=True, stream_options={"include_usage": True},
                                         extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    whole = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert text == whole.choices[0].message.content


def test_completions_streaming_and_not(oai):
    r = oai.completions.create(model=MODEL, prompt="the quick brown fox", max_tokens=5, temperature=0,
                               extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    streamed = "".join(
        c.choices[0].text
        for c in oai.completions.create(model=MODEL, prompt="the quick brown fox", max_tokens=5,
                                        temperature=0, stream=True, extra_body={"ignore_eos": True})
        if c.choices
    )
    assert streamed == r.choices[0].text
    # OpenAI's default max_tokens for completions is 16.
    assert oai.completions.create(model=MODEL, prompt="abc", temperature=0,
                                  extra_body={"ignore_eos": True}).usage.completion_tokens == 16
    # Token ids as the prompt.
    assert oai.completions.create(model=MODEL, prompt=[97, 98, 99], max_tokens=2).usage.prompt_tokens == 3


def test_logprobs(oai):
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                    logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
    c = oai.completions.create(model=MODEL, prompt="abc", max_tokens=3, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_seed_penalties_stop_and_logit_bias(oai):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=7,
                  presence_penalty=0.5, frequency_penalty=0.3)
    a = oai.chat.completions.create(**kwargs).choices[0].message.content
    b = oai.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b
    # A strong bias on one byte token makes it the greedy choice everywhere.
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                    logit_bias={"120": 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == "xxxx"
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                    logit_bias={"120": 100}, stop=["xx"])
    assert r.choices[0].message.content == ""
    assert r.choices[0].finish_reason == "stop"
    assert oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=3,
                                       temperature=0, extra_body={"ignore_eos": True}).usage.completion_tokens == 3


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_tool_call_round_trip(oai):
    # The model's turn that called a tool, then the tool's answer: both render and the model answers.
    messages = [
        {"role": "system", "content": "use tools"},
        {"role": "user", "content": "weather in paris"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=4, temperature=0)
    plain = oai.chat.completions.create(model=MODEL, messages=messages[:2], max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_text_without_a_tool_call_block_stays_content(oai):
    # The random model never writes a <tool_call> block; the parser itself (blocks split across
    # deltas, partial tags, blocks that are not calls) is unit-tested in tests/unit/router.
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=5,
                                    temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "length"
    plain = oai.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=5,
                                        temperature=0, tool_choice="none", extra_body={"ignore_eos": True})
    assert plain.usage.prompt_tokens < r.usage.prompt_tokens  # tool_choice none: tools not offered


@pytest.mark.parametrize("body, status, param", [
    ({"model": MODEL, "messages": MESSAGES, "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "messages": MESSAGES, "n": 2}, 400, "n"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": MESSAGES, "frobnicate": 1}, 400, "frobnicate"),
    ({"model": MODEL, "messages": MESSAGES, "top_logprobs": 2}, 400, "top_logprobs"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content[0]"),
    ({"model": "gpt-4", "messages": MESSAGES}, 404, "model"),
    ({"messages": MESSAGES}, 400, "model"),
])
def test_errors_in_the_openai_shape(cluster, body, status, param):
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", f"http://{cluster.http}/v1/chat/completions",
                          "-H", "Content-Type: application/json", "-d", json.dumps(body)],
                         capture_output=True, text=True, check=True)
    payload, code = out.stdout.rsplit("\n", 1)
    assert int(code) == status, out.stdout
    err = json.loads(payload)["error"]
    assert err["param"] == param, err
    assert err["message"]


def test_errors_through_the_client(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=MESSAGES, top_p=2.0)
    assert "top_p" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=MODEL, prompt="x", echo=True)


def test_malformed_http(cluster):
    host, port = cluster.http.split(":")
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", f"http://{cluster.http}/v1/chat/completions",
                          "-d", "{not json"], capture_output=True, text=True)
    assert out.stdout.endswith("400")
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", f"http://{cluster.http}/v2/nothing"],
                         capture_output=True, text=True)
    assert out.stdout.endswith("404")
    with socket.create_connection((host, int(port))) as s:  # garbage bytes: the connection closes
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        s.settimeout(5)
        assert s.recv(100) == b""
    assert subprocess.run(["curl", "-s", f"http://{cluster.http}/health"], capture_output=True).returncode == 0


def test_raw_sse_framing(cluster):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "temperature": 0, "stream": True,
            "ignore_eos": True}
    out = subprocess.run(["curl", "-sN", "-i", f"http://{cluster.http}/v1/chat/completions",
                          "-H", "Content-Type: application/json", "-d", json.dumps(body)],
                         capture_output=True, check=True)
    head, _, events = out.stdout.decode().partition("\r\n\r\n")
    assert "content-type: text/event-stream" in head.lower()
    frames = [f for f in events.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames), frames
    assert frames[-1] == "data: [DONE]"
    parsed = [json.loads(f[len("data: "):]) for f in frames[:-1]]
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"
    assert all(p["object"] == "chat.completion.chunk" for p in parsed)


def test_client_disconnect_mid_stream_frees_the_rank(oai, cluster):
    stream = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1500, temperature=0,
                                         stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i >= 3:
            break
    stream.close()  # closes the HTTP connection
    cluster.wait_ranks_idle(timeout=3)


@pytest.fixture(scope="module")
def tight(cluster, tmp_path_factory):
    """A second router over one rank with a single state slot, no rank queue and no router queue:
    one stream fills it. And a router whose only rank does not exist."""
    from conftest import Process

    d = tmp_path_factory.mktemp("tight")
    from conftest import BIN

    rank = Process([str(BIN / "nextserve-rank"), "--model", str(cluster.model_dir), "--port", "0",
                    "--threads", "1", "--state-slots", "1"], d / "rank.log", env={"OMP_NUM_THREADS": "1"})
    procs = [rank]
    try:
        rank_addr = listen_address(rank.wait_line("listening on"))
        full = Process([str(BIN / "nextserve-router"), "--model", str(cluster.model_dir), "--ranks", rank_addr,
                        "--port", "0", "--http-port", "0", "--model-name", MODEL, "--max-queue", "0",
                        "--rank-queue-depth", "0"], d / "full.log")
        procs.append(full)
        listen_address(full.wait_line("listening on"))
        full_http = listen_address(full.wait_line("HTTP (OpenAI-compatible) listening on"))
        nowhere = Process([str(BIN / "nextserve-router"), "--model", str(cluster.model_dir), "--ranks",
                           "127.0.0.1:1", "--port", "0", "--http-port", "0", "--model-name", MODEL],
                          d / "nowhere.log")
        procs.append(nowhere)
        listen_address(nowhere.wait_line("listening on"))
        nowhere_http = listen_address(nowhere.wait_line("HTTP (OpenAI-compatible) listening on"))
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://{full_http}/health"], capture_output=True, text=True).stdout != "200":
            assert time.monotonic() < deadline, "the tight router never saw its rank"
            time.sleep(0.05)
        yield {"full": full_http, "nowhere": nowhere_http}
    finally:
        for p in reversed(procs):
            p.stop()


def test_queue_full_is_429_and_no_rank_is_503(tight):
    full = openai.OpenAI(base_url=f"http://{tight['full']}/v1", api_key="x", max_retries=0, timeout=30)
    stream = full.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1500, stream=True,
                                          extra_body={"ignore_eos": True})
    next(iter(stream))  # the one slot is taken
    with pytest.raises(openai.RateLimitError) as e:
        full.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert e.value.status_code == 429
    stream.close()
    nowhere = openai.OpenAI(base_url=f"http://{tight['nowhere']}/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.InternalServerError) as e:
        nowhere.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert e.value.status_code == 503
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{tight['nowhere']}/health"],
                         capture_output=True, text=True)
    assert out.stdout == "503"
