#!/usr/bin/env python3
"""Golden data for block-scaled FP8 checkpoints (tests/golden/data/fp8), and FP8 conversion.

The checkpoint is what transformers' fine-grained FP8 integration loads: float8_e4m3fn weights,
`<module>.weight_scale_inv` (fp32, one per 128x128 block: w ~= fp8 * scale) and config.json's
quantization_config {quant_method "fp8", fmt "e4m3", activation_scheme "dynamic",
weight_block_size [128, 128], modules_to_not_convert [...]}. Its FP8 matmul (FP8Linear) needs a
CUDA/XPU Triton kernel and has no CPU fallback, so the reference is what that path approximates on
a CPU: the recipe below, then transformers' fp32 forward on the dequantised weights. (Its CPU
loader, FineGrainedFP8Config(dequantize=True), dequantises exactly as dequantize_blocks below on
shapes that are multiples of 128 -- checked bit for bit on a 3 x 2 block grid -- but refuses partial
blocks, "Weight shape (576, 192) not divisible by scale grid (5, 2)", which this case has on
purpose: the real model's quantised matrices are all multiples of 128, nextserve takes the ceil
layout that DeepSeek-style FP8 checkpoints and vLLM use.)

  1. the `bf16` golden case's model (tools/make_golden.py) at hidden 192 and shared-expert width
     160, so matrices span several blocks with partial ones on both edges;
  2. parameters rounded to bf16 (the release is quantised from bf16), then every nn.Linear weight
     that modules_to_not_convert does not name is quantised per 128x128 block:
     scale = amax / 448, fp8 = (w / scale).to(float8_e4m3fn), and replaced by fp8.float() * scale;
  3. make_golden.gen_config records the fp32 reference on those weights (every check it does,
     prompts, greedy runs, chunked prefill) from an fp32 checkpoint of them;
  4. that checkpoint is rewritten in the FP8 format (fp8 + scales, the rest bf16: both exact), and
     the FP8 files are read back and dequantised to check they hold exactly the reference weights.

Usage:  python3 tools/make_fp8_golden.py --out tests/golden/data
        python3 tools/make_fp8_golden.py --convert SRC_DIR --to DST_DIR   # bf16/fp32 -> FP8
(versions in tools/requirements-reference.txt).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BLOCK = 128
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def not_converted(module: str, skip: list[str]) -> bool:
    """transformers' should_convert_module (regexes aside), as QuantizationConfig::IsNotConverted:
    a prefix up to a '.' boundary, or a plain suffix."""
    for e in skip:
        if module.startswith(e) and (len(module) == len(e) or module[len(e)] == "." or e.endswith(".")):
            return True
        if module.endswith(e):
            return True
    return False


def modules_to_not_convert(num_layers: int) -> list[str]:
    """The pattern of the official Qwen3-Next FP8 release: lm_head, the embedding, and per layer
    the router, the shared-expert gate and in_proj_ba stay unquantised."""
    out = ["lm_head", "model.embed_tokens"]
    for i in range(num_layers):
        p = f"model.layers.{i}."
        out += [p + "linear_attn.in_proj_ba", p + "mlp.gate", p + "mlp.shared_expert_gate"]
    return out


def quantize_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, cols] float -> (float8_e4m3fn [rows, cols], fp32 scale [ceil(rows/128), ceil(cols/128)])."""
    rows, cols = w.shape
    br, bc = -(-rows // BLOCK), -(-cols // BLOCK)
    w = w.float()
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    scale = torch.empty(br, bc, dtype=torch.float32)
    for i in range(br):
        for j in range(bc):
            blk = w[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK]
            s = blk.abs().amax().clamp(min=1e-12) / FP8_MAX
            scale[i, j] = s
            q[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.float().repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[: q.shape[0], : q.shape[1]]
    return q.float() * s


def is_linear_weight(name: str, t: torch.Tensor) -> bool:
    return t.dim() == 2 and name.endswith(".weight") and name != "model.embed_tokens.weight" and not name.startswith("mtp.")


def to_fp8_tensors(tensors: dict, skip: list[str]) -> tuple[dict, int]:
    """Checkpoint tensors -> FP8 checkpoint tensors; returns them and the number of FP8 matrices."""
    out, n = {}, 0
    for name, t in tensors.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        if is_linear_weight(name, t) and not not_converted(module, skip):
            q, s = quantize_blocks(t)
            out[name] = q.contiguous()
            out[name + "_scale_inv"] = s.contiguous()
            n += 1
        else:
            out[name] = t.to(torch.bfloat16).contiguous() if t.is_floating_point() else t
    return out, n


def convert(src: str, dst: str) -> None:
    """A bf16/fp32 checkpoint directory -> the same weights as a block-scaled FP8 one (engine_bench)."""
    import shutil

    import safetensors.torch

    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    skip = modules_to_not_convert(cfg["num_hidden_layers"])
    total = 0
    for fn in files:
        fp8, n = to_fp8_tensors(safetensors.torch.load_file(os.path.join(src, fn)), skip)
        total += n
        safetensors.torch.save_file(fp8, os.path.join(dst, fn), metadata={"format": "pt"})
    if os.path.exists(os.path.join(src, "model.safetensors.index.json")):
        raise SystemExit("--convert: sharded checkpoints are not handled (the index would change)")
    for fn in os.listdir(src):
        if fn.startswith("tokenizer") or fn.endswith(".tiktoken"):
            shutil.copy(os.path.join(src, fn), os.path.join(dst, fn))
    cfg["quantization_config"] = {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK], "modules_to_not_convert": skip,
    }
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    print(f"{src} -> {dst}: {total} FP8 matrices")


def make_golden(out_root: str) -> None:
    import numpy as np  # noqa: F401  (make_golden needs it)
    import safetensors.torch
    import transformers

    import make_golden as mg

    base = next(c for c in mg.CONFIGS if c["name"] == "bf16")
    spec = copy.deepcopy(base)
    spec["name"] = "fp8"
    spec["seed"] = 4567
    spec["hf"]["hidden_size"] = 192
    spec["hf"]["shared_expert_intermediate_size"] = 160
    spec["store_dtype"] = "float32"  # the reference run reads the dequantised weights in fp32
    spec["mtp"] = False
    skip = modules_to_not_convert(spec["hf"]["num_hidden_layers"])
    codes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    original_reinit = mg.reinit

    @torch.no_grad()
    def reinit_then_quantize(model, seed):
        original_reinit(model, seed)
        for p in model.parameters():  # the release is quantised from bf16
            p.copy_(p.to(torch.bfloat16).float())
        # Quantise in checkpoint naming (per expert), then write the dequantised values back.
        sd = mg.hf_state_dict(model, torch.float32)
        for name, t in sd.items():
            module = name[: -len(".weight")]
            if is_linear_weight(name, t) and not not_converted(module, skip):
                codes[name] = quantize_blocks(t)
        params = dict(model.named_parameters())
        for name, (q, s) in codes.items():
            w = dequantize_blocks(q, s)
            if ".mlp.experts." in name:
                prefix, e, proj = name.rsplit(".", 3)[0], int(name.split(".")[-3]), name.split(".")[-2]
                inter = w.shape[0] if proj != "down_proj" else w.shape[1]
                if proj == "down_proj":
                    params[prefix + ".down_proj"][e].copy_(w)
                else:
                    fused = params[prefix + ".gate_up_proj"][e]
                    (fused[:inter] if proj == "gate_proj" else fused[inter:]).copy_(w)
            else:
                params[name].copy_(w)
        # Everything must now read back as exactly fp8 * scale.
        sd = mg.hf_state_dict(model, torch.float32)
        for name, (q, s) in codes.items():
            assert torch.equal(sd[name], dequantize_blocks(q, s)), name

    mg.reinit = reinit_then_quantize
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    path_note = mg.check_torch_fallback_path()
    os.makedirs(out_root, exist_ok=True)
    row = mg.gen_config(spec, out_root, path_note)
    out_dir = os.path.join(out_root, "fp8")

    # ---- rewrite the fp32 checkpoint as FP8 ------------------------------------------------------
    st_path = os.path.join(out_dir, "model.safetensors")
    fp32 = safetensors.torch.load_file(st_path)
    fp8 = {}
    for name, t in fp32.items():
        if name in codes:
            q, s = codes[name]
            assert torch.equal(dequantize_blocks(q, s), t), name
            fp8[name], fp8[name + "_scale_inv"] = q, s
        else:
            b = t.to(torch.bfloat16)
            assert torch.equal(b.float(), t), f"{name} is not bf16-exact"
            fp8[name] = b
    safetensors.torch.save_file(fp8, st_path, metadata={"format": "pt"})
    # Read back: every tensor dequantises to exactly what the reference ran on.
    back = safetensors.torch.load_file(st_path)
    for name, t in fp32.items():
        got = dequantize_blocks(back[name], back[name + "_scale_inv"]) if name in codes else back[name].float()
        assert torch.equal(got, t), f"FP8 file does not reproduce {name}"
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["torch_dtype"] = "bfloat16"
    cfg["quantization_config"] = {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK], "modules_to_not_convert": skip,
    }
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    gpath = os.path.join(out_dir, "golden.json")
    with open(gpath) as f:
        golden = json.load(f)
    golden["checkpoint"]["stored_dtype"] = "float8_e4m3fn (128x128 block scales, fp32) + bfloat16"
    golden["fp8"] = {
        "fp8_matrices": len(codes),
        "block_size": [BLOCK, BLOCK],
        "recipe": "scale = amax(block) / 448 (fp32), fp8 = (w_bf16 / scale).to(float8_e4m3fn); "
                  "reference weights = fp8.float() * scale",
        "modules_to_not_convert": skip,
        "why_not_transformers_fp8_linear": "transformers' FP8Linear runs a CUDA/XPU Triton kernel "
                                           "(and quantises activations per 128-token group); it "
                                           "has no CPU path, so the reference is the fp32 forward "
                                           "on the dequantised weights",
    }
    golden["notes"] = golden["notes"] + (
        " FP8 case: the checkpoint holds float8_e4m3fn + weight_scale_inv; the reference ran on "
        "fp8 * scale in fp32 (see 'fp8')."
    )
    with open(gpath, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"fp8: {len(codes)} FP8 matrices, logit range {row['range']:.2f}, min greedy margin "
          f"{row['g_margin']:.4f}, chunk diff {row['chunk']:.2e}, "
          f"{sum(os.path.getsize(os.path.join(out_dir, x)) for x in os.listdir(out_dir)) / 1024:.0f} KiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/data", help="golden data root (writes OUT/fp8)")
    ap.add_argument("--convert", metavar="SRC", help="convert this checkpoint directory to FP8")
    ap.add_argument("--to", metavar="DST", help="output directory for --convert")
    args = ap.parse_args()
    if args.convert:
        if not args.to:
            raise SystemExit("--convert needs --to DST")
        convert(args.convert, args.to)
    else:
        make_golden(args.out)


if __name__ == "__main__":
    main()
