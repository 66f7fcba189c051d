"""Stream a completion token by token: python3 stream.py --addr 127.0.0.1:8000 --prompt "Hello"."""

import argparse

import nextserve

parser = argparse.ArgumentParser()
parser.add_argument("--addr", default="127.0.0.1:8000")
parser.add_argument("--prompt", default="the quick brown fox")
parser.add_argument("--max-tokens", type=int, default=32)
args = parser.parse_args()

with nextserve.Client(args.addr, timeout=60) as client:
    stream = client.generate(args.prompt, max_tokens=args.max_tokens, temperature=0)
    for delta in stream:
        print(delta.text, end="", flush=True)
    print()
    usage = stream.usage
    print(f"[finish: {stream.finish_reason}; {usage.prompt_tokens} prompt + "
          f"{usage.completion_tokens} completion tokens; TTFT {usage.time_to_first_token_s * 1e3:.1f} ms]")
