"""A chat turn, non-streaming, with typed errors: python3 chat.py --addr 127.0.0.1:8000."""

import argparse
import sys

import nextserve

parser = argparse.ArgumentParser()
parser.add_argument("--addr", default="127.0.0.1:8000")
parser.add_argument("--max-tokens", type=int, default=64)
args = parser.parse_args()

messages = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What is a mixture of experts?"},
]
with nextserve.Client(args.addr, timeout=60) as client:
    try:
        result = client.chat_complete(messages, max_tokens=args.max_tokens, temperature=0.7, seed=42)
    except nextserve.Overloaded:
        sys.exit("the server is busy; try again later")
    except nextserve.InvalidArgument as e:
        sys.exit(f"bad request: {e.details}")
    print(result.text)
    print(f"[finish: {result.finish_reason}; {result.usage.completion_tokens} tokens]")
