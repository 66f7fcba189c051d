"""Many concurrent streams from one asyncio client: python3 async_concurrent.py --streams 16."""

import argparse
import asyncio
import time

import nextserve


async def main(args):
    async with nextserve.AsyncClient(args.addr, timeout=120) as client:
        start = time.monotonic()
        results = await asyncio.gather(
            *(client.complete(f"story number {i}:", max_tokens=args.max_tokens, temperature=0.8, seed=i)
              for i in range(args.streams))
        )
        elapsed = time.monotonic() - start
    tokens = sum(r.usage.completion_tokens for r in results)
    reasons = sorted({r.finish_reason for r in results})
    print(f"{args.streams} streams, {tokens} tokens in {elapsed:.2f} s ({tokens / elapsed:.0f} tok/s); "
          f"finish: {', '.join(reasons)}")


parser = argparse.ArgumentParser()
parser.add_argument("--addr", default="127.0.0.1:8000")
parser.add_argument("--streams", type=int, default=16)
parser.add_argument("--max-tokens", type=int, default=32)
asyncio.run(main(parser.parse_args()))
