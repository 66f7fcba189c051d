#!/usr/bin/env python3
"""The router's OpenAI-compatible HTTP path against its gRPC path, in the same run, plus many SSE
streams held open at once.

Starts ranks + one router (--http-port) on the serving tests' model (nextserve-test-model), then:
 1. the same workload (N requests at concurrency C, greedy, fixed max_tokens) alternately over
    gRPC (grpc.aio, the nextserve SDK) and HTTP (raw asyncio HTTP/1.1 + SSE: no client library
    cost in the figures), rounds interleaved; reports req/s and TTFT p50/p99 per path and the ratio;
 2. S SSE streams opened at once and held (long generations), reporting how many got their first
    event, the router's RSS and CPU seconds over the window, then closes them and checks the ranks
    are idle again.

  python3 bench/openai/http_vs_grpc.py --bin build/bin [--requests 64] [--concurrency 1,16]
                                       [--max-tokens 16] [--streams 1000] [--hold-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk" / "python" / "src"))
sys.path.insert(0, str(REPO / "tests" / "python"))
import nextserve  # noqa: E402
from conftest import Process, listen_address  # noqa: E402

PROMPT = "the quick brown fox jumps over the lazy dog"


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def http_request(host, port, body, on_first=None):
    """One streaming chat completion over a raw connection; returns (ttft_s, chunks)."""
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload)
    await writer.drain()
    start = time.perf_counter()
    ttft = None
    chunks = 0
    status = await reader.readline()
    if b" 200 " not in status:
        writer.close()
        raise RuntimeError(status.decode() + (await reader.read()).decode())
    while await reader.readline() not in (b"\r\n", b""):
        pass
    while True:
        size = await reader.readline()
        if not size or int(size.strip() or b"0", 16) == 0:
            break
        data = await reader.readexactly(int(size.strip(), 16) + 2)
        if ttft is None and b'"content":"' in data:
            ttft = time.perf_counter() - start
            if on_first:
                on_first()
        if data.startswith(b"data: [DONE]"):
            chunks += 1
            break
        chunks += 1
    writer.close()
    return ttft, chunks


async def grpc_request(client, max_tokens):
    start = time.perf_counter()
    ttft = None
    async for d in client.chat([{"role": "user", "content": PROMPT}], max_tokens=max_tokens,
                               temperature=0, ignore_eos=True):
        if ttft is None and d.token_ids:
            ttft = time.perf_counter() - start
    return ttft


async def run_round(kind, n, c, max_tokens, http_addr, grpc_client):
    host, port = http_addr.split(":")
    body = {"model": "model", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True}
    sem = asyncio.Semaphore(c)
    ttfts = []

    async def one():
        async with sem:
            if kind == "http":
                ttft, _ = await http_request(host, int(port), body)
            else:
                ttft = await grpc_request(grpc_client, max_tokens)
            ttfts.append(ttft)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - start), ttfts


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def hold_streams(http_addr, streams, hold_s, router_pid):
    host, port = http_addr.split(":")
    body = {"model": "model", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1500,
            "temperature": 0, "stream": True, "ignore_eos": True}
    first = 0

    def got_first():
        nonlocal first
        first += 1

    rss0, cpu0 = rss_mib(router_pid), cpu_seconds(router_pid)
    tasks = [asyncio.create_task(http_request(host, int(port), body, got_first)) for _ in range(streams)]
    t0 = time.perf_counter()
    await asyncio.sleep(hold_s)
    held = sum(not t.done() for t in tasks)
    rss1, cpu1 = rss_mib(router_pid), cpu_seconds(router_pid)
    elapsed = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams": streams, "open_after_hold": held, "got_first_event": first,
            "router_rss_mib_before": round(rss0, 1), "router_rss_mib_held": round(rss1, 1),
            "router_cpu_cores_while_held": round((cpu1 - cpu0) / elapsed, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "build" / "bin"))
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--hold-s", type=float, default=10)
    args = ap.parse_args()
    bin_dir = Path(args.bin).resolve()
    work = Path(tempfile.mkdtemp(prefix="http_vs_grpc_"))
    model = work / "model"
    subprocess.run([str(bin_dir / "nextserve-test-model"), "--out", str(model)], check=True)
    slots = max(16, (args.streams + 1) // 2)
    procs = []
    try:
        for i in range(2):
            procs.append(Process([str(bin_dir / "nextserve-rank"), "--model", str(model), "--port", "0",
                                  "--threads", "1", "--state-slots", str(slots), "--max-running", "256",
                                  "--kv-blocks", str(2 * slots)],
                                 work / f"rank{i}.log", env={"OMP_NUM_THREADS": "1"}))
        ranks = [listen_address(p.wait_line("listening on")) for p in procs]
        router = Process([str(bin_dir / "nextserve-router"), "--model", str(model), "--ranks", ",".join(ranks),
                          "--port", "0", "--http-port", "0", "--model-name", "model",
                          "--max-queue", str(args.streams + 64)], work / "router.log")
        procs.append(router)
        grpc_addr = listen_address(router.wait_line("listening on"))
        http_addr = listen_address(router.wait_line("HTTP (OpenAI-compatible) listening on"))
        with nextserve.Client(grpc_addr) as c:
            c.wait_ready(60)

        async def compare():
            out = {}
            async with nextserve.AsyncClient(grpc_addr, timeout=600) as grpc_client:
                await run_round("grpc", 8, 4, args.max_tokens, http_addr, grpc_client)  # warm-up
                await run_round("http", 8, 4, args.max_tokens, http_addr, grpc_client)
                for c in [int(x) for x in args.concurrency.split(",")]:
                    acc = {"grpc": ([], []), "http": ([], [])}
                    for _ in range(args.rounds):
                        for kind in ("grpc", "http"):
                            rps, ttfts = await run_round(kind, args.requests, c, args.max_tokens, http_addr,
                                                         grpc_client)
                            acc[kind][0].append(rps)
                            acc[kind][1].extend(ttfts)
                    row = {}
                    for kind, (rps, ttfts) in acc.items():
                        row[kind] = {"req_s": round(statistics.median(rps), 2),
                                     "ttft_p50_ms": round(pct(ttfts, 0.5) * 1e3, 2),
                                     "ttft_p99_ms": round(pct(ttfts, 0.99) * 1e3, 2)}
                    row["http/grpc req_s"] = round(row["http"]["req_s"] / row["grpc"]["req_s"], 3)
                    row["http-grpc ttft_p50_ms"] = round(row["http"]["ttft_p50_ms"] - row["grpc"]["ttft_p50_ms"], 2)
                    out[f"concurrency {c}"] = row
            return out

        results = asyncio.run(compare())
        for k, v in results.items():
            print(k, json.dumps(v))
        if args.streams > 0:
            held = asyncio.run(hold_streams(http_addr, args.streams, args.hold_s, router.proc.pid))
            print("held SSE streams", json.dumps(held))
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
