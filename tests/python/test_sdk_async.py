"""The asyncio client: many concurrent streams, and cancellation of the reading task."""

from __future__ import annotations

import asyncio

import pytest

import nextserve

PROMPT = "the quick brown fox jumps over the lazy dog"


def test_64_concurrent_streams(cluster):
    async def main():
        async with nextserve.AsyncClient(cluster.router, timeout=120) as client:
            prompts = [f"{PROMPT} {chr(ord('a') + i % 26)}" for i in range(64)]
            results = await asyncio.gather(
                *(client.complete(p, max_tokens=16, temperature=0, ignore_eos=True) for p in prompts)
            )
            # Greedy tokens do not depend on what else is in the batch.
            alone = await client.complete(prompts[5], max_tokens=16, temperature=0, ignore_eos=True)
            return results, alone

    results, alone = asyncio.run(main())
    assert len(results) == 64
    for r in results:
        assert len(r.token_ids) == 16
        assert r.finish_reason == "length"
    assert results[5].token_ids == alone.token_ids
    assert results[5 + 26].token_ids == alone.token_ids  # the same prompt
    cluster.wait_ranks_idle()


def test_streaming_and_unary_calls(cluster):
    async def main():
        async with nextserve.AsyncClient(cluster.router) as client:
            stream = client.generate(PROMPT, max_tokens=6, temperature=0, ignore_eos=True)
            ids = [t async for d in stream for t in d.token_ids]
            text = await client.detokenize(ids, skip_special_tokens=True)
            tokens = await client.tokenize(PROMPT)
            info = await client.model_info()
            with pytest.raises(nextserve.InvalidArgument, match="temperature"):
                await client.complete(PROMPT, temperature=-2)
            return stream, ids, text, tokens, info

    stream, ids, text, tokens, info = asyncio.run(main())
    assert len(ids) == 6
    assert stream.finish_reason == "length"
    assert stream.usage.prompt_tokens == len(tokens)
    assert info.ranks == 2
    assert isinstance(text, str)


def test_cancelling_the_task_aborts_the_request(cluster):
    async def main():
        async with nextserve.AsyncClient(cluster.router) as client:
            first = asyncio.Event()

            async def read():
                async for _ in client.generate(PROMPT, max_tokens=1500, temperature=0, ignore_eos=True):
                    first.set()

            task = asyncio.create_task(read())
            await asyncio.wait_for(first.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    cluster.wait_ranks_idle()
