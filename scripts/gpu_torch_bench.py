#!/usr/bin/env python3
"""PyTorch (and, when importable, flash-linear-attention) on the shapes bench/cuda/cuda_ops_bench
times, for the side-by-side figures of issue 13. Prints one JSON object; a missing package is
reported in it rather than failing. Run by scripts/gpu-check.sh on the GPU machine."""
import json
import sys
import time


def timed(fn, reps=10):
    import torch
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    out = {}
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"error": f"no torch: {e}"}))
        return 0
    dev = "cuda"
    bf = torch.bfloat16
    # Decode attention: 64 sequences x 4096 keys, 16 q heads, 2 kv heads, head_dim 256 (GQA).
    q = torch.randn(64, 16, 1, 256, device=dev, dtype=bf)
    k = torch.randn(64, 2, 4096, 256, device=dev, dtype=bf)
    v = torch.randn(64, 2, 4096, 256, device=dev, dtype=bf)
    t = timed(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    out["sdpa_decode_ms"] = t * 1e3
    out["sdpa_decode_GBps"] = 2 * k.numel() * 2 / t / 1e9
    # Prefill attention: one 8192-token prompt, causal.
    q = torch.randn(1, 16, 8192, 256, device=dev, dtype=bf)
    k = torch.randn(1, 2, 8192, 256, device=dev, dtype=bf)
    v = torch.randn(1, 2, 8192, 256, device=dev, dtype=bf)
    t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    out["sdpa_prefill_8k_ms"] = t * 1e3
    # Device-to-device copy, as the C++ bench counts it (read + write).
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a))
    out["torch_copy_GBps"] = 2 * a.numel() / t / 1e9
    del a, b
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        T, H, D = 8192, 32, 128
        qq = F.normalize(torch.randn(1, T, H, D, device=dev, dtype=bf), dim=-1)
        kk = F.normalize(torch.randn(1, T, H, D, device=dev, dtype=bf), dim=-1)
        vv = torch.randn(1, T, H, D, device=dev, dtype=bf)
        g = -torch.rand(1, T, H, device=dev, dtype=torch.float32) * 0.1
        beta = torch.rand(1, T, H, device=dev, dtype=bf)
        t = timed(lambda: chunk_gated_delta_rule(qq, kk, vv, g, beta))
        out["fla_chunk_gated_delta_rule_8k_ms"] = t * 1e3
    except Exception as e:  # not installed (carry its wheel in .whl) or an API change
        out["fla_error"] = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
