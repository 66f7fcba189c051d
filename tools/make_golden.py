#!/usr/bin/env python3
"""Generate the golden reference data for the nextserve C++ test suite.

For each configuration below this script

  1. builds a tiny random Qwen3-Next model with Hugging Face transformers
     (Qwen3NextConfig + Qwen3NextForCausalLM, fp32, eager attention, eager experts,
     pure-torch GatedDeltaNet path -- flash-linear-attention / causal-conv1d / kernels
     must NOT be importable),
  2. re-initialises every parameter with seeded, non-trivial random values,
  3. writes the checkpoint in the real Hugging Face layout (config.json +
     model.safetensors or shards + model.safetensors.index.json, per-expert tensors
     `model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`),
  4. reloads the written directory with `from_pretrained(dtype=float32)` and checks it
     reproduces the in-memory model exactly (the reference is computed from the
     reloaded model, so a bf16-stored checkpoint is referenced with its bf16-rounded
     weights, computed in fp32),
  5. records prompt logits (each prompt alone, batch 1), 32-step cached greedy
     continuations, and a chunked-prefill run of the longest prompt, as .npy files
     plus golden.json.

Usage:  python3 tools/make_golden.py --out tests/golden/data
Only this script needs torch/transformers; the C++ tests read the committed files.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import platform
import shutil
import sys
import tempfile

import numpy as np
import safetensors
import safetensors.torch
import torch
import transformers
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
from transformers.cache_utils import DynamicCache
from transformers.models.qwen3_next import modeling_qwen3_next as hf_q3n

# --------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------

PROMPT_LENGTHS = [1, 20, 64, 150]  # 150 > 2*64: the chunked delta rule crosses chunk edges
GREEDY_STEPS = 32
CHUNKS = [37, 64, 1, 48]  # sums to 150; feeds the longest prompt through the cache
MARGIN_REL = 1e-3  # greedy top1-top2 margin must be >= MARGIN_REL * (row max - row min)
CHUNK_TOL_REL = 1e-5  # chunked vs whole-prompt logits, relative to the logit range

CONFIGS = [
    {
        "name": "gqa",
        "seed": 1234,
        "hf": dict(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=96,  # unused: every layer is MoE
            num_hidden_layers=4,
            full_attention_interval=2,  # -> linear, full, linear, full
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            partial_rotary_factor=0.25,  # rotary dim 8
            rope_theta=1e6,
            linear_num_key_heads=2,
            linear_num_value_heads=4,  # 2 value heads per key head
            linear_key_head_dim=32,
            linear_value_head_dim=16,  # Dk != Dv on purpose
            linear_conv_kernel_dim=4,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,  # != moe_intermediate_size on purpose
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
        ),
        "store_dtype": "float32",
        # config.json: only full_attention_interval (layer_types removed), rope in both forms
        "config_style": {"layer_types": False, "interval": 2, "rope_parameters": True},
        "shard_bytes": None,
        "mtp": False,
    },
    {
        "name": "dense_mix",
        "seed": 2345,
        "hf": dict(
            vocab_size=257,  # odd on purpose
            hidden_size=64,
            intermediate_size=64,  # dense MLP layers
            num_hidden_layers=6,
            # explicit, not expressible by full_attention_interval
            layer_types=[
                "linear_attention",
                "full_attention",
                "linear_attention",
                "linear_attention",
                "full_attention",
                "linear_attention",
            ],
            num_attention_heads=4,
            num_key_value_heads=1,  # MQA
            head_dim=32,
            partial_rotary_factor=0.25,
            rope_theta=10000.0,
            linear_num_key_heads=2,
            linear_num_value_heads=2,  # no DeltaNet GQA
            linear_key_head_dim=32,
            linear_value_head_dim=32,
            linear_conv_kernel_dim=4,
            num_experts=6,
            num_experts_per_tok=3,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            norm_topk_prob=False,
            decoder_sparse_step=2,  # MoE iff (i+1) % 2 == 0 and i not in mlp_only_layers
            mlp_only_layers=[5],  # -> MoE layers {1, 3}; dense layers {0, 2, 4, 5}
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
        ),
        "store_dtype": "float32",
        "config_style": {"layer_types": True, "interval": None, "rope_parameters": True},
        "shard_bytes": 160_000,  # -> several shards + model.safetensors.index.json
        "mtp": False,
    },
    {
        "name": "bf16",
        "seed": 3456,
        "hf": dict(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,  # unused
            num_hidden_layers=4,
            full_attention_interval=4,  # -> linear, linear, linear, full (as the real model)
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=32,
            partial_rotary_factor=0.5,  # rotary dim 16
            rope_theta=1e7,
            linear_num_key_heads=2,
            linear_num_value_heads=8,  # 4 value heads per key head
            linear_key_head_dim=16,
            linear_value_head_dim=32,
            linear_conv_kernel_dim=4,
            num_experts=16,
            num_experts_per_tok=4,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
        ),
        "store_dtype": "bfloat16",
        # real-checkpoint style: layer_types AND full_attention_interval, legacy top-level
        # rope_theta/partial_rotary_factor/rope_scaling only (no rope_parameters), torch_dtype
        "config_style": {"layer_types": True, "interval": 4, "rope_parameters": False},
        "shard_bytes": None,
        "mtp": True,
    },
]

# --------------------------------------------------------------------------------------
# Environment checks
# --------------------------------------------------------------------------------------


def check_torch_fallback_path() -> str:
    """Assert the GatedDeltaNet runs on the pure-torch path and say so."""
    for pkg in ("fla", "causal_conv1d", "kernels"):
        if importlib.util.find_spec(pkg) is not None:
            raise SystemExit(
                f"package '{pkg}' is importable: transformers would use its kernels instead of the "
                "torch reference path. Run in an environment without it (see tools/README.md)."
            )
    report = []
    for fname in (
        "torch_chunk_gated_delta_rule",
        "torch_recurrent_gated_delta_rule",
        "causal_conv1d_fn",
        "causal_conv1d_update",
    ):
        fn = getattr(hf_q3n, fname)
        nonlocals = inspect.getclosurevars(fn).nonlocals
        is_new = nonlocals.get("is_new_implementation")
        impl = nonlocals.get("implementation")
        assert is_new is False, f"{fname}: transformers resolved a non-torch implementation {impl!r}"
        assert impl is not None and impl.__module__ == hf_q3n.__name__, f"{fname}: unexpected impl {impl!r}"
        report.append(f"{fname}->torch")
    # RMSNormGated must be the torch class, not a hub kernel
    assert hf_q3n.Qwen3NextRMSNormGated.forward.__module__ == hf_q3n.__name__
    return "torch fallback path (fla, causal_conv1d, kernels not importable): " + ", ".join(report)


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------------------
# Model construction / initialisation
# --------------------------------------------------------------------------------------


def build_config(hf_kwargs: dict) -> Qwen3NextConfig:
    cfg = Qwen3NextConfig(**hf_kwargs, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    return cfg


@torch.no_grad()
def reinit(model: Qwen3NextForCausalLM, seed: int) -> None:
    """Non-trivial random init with O(1) activations (see tools/README.md)."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    H = model.config.hidden_size
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        shape = tuple(p.shape)
        if name.endswith("embed_tokens.weight"):
            v = normal(shape, 1.0)
        elif name == "lm_head.weight":
            v = normal(shape, 2.5 / math.sqrt(H))  # logits std ~2.5
        elif name.endswith("linear_attn.norm.weight"):  # RMSNormGated: plain weight
            v = normal(shape, 0.1, mean=1.0)
        elif name.endswith("norm.weight"):  # every other norm is (1 + w)
            v = normal(shape, 0.1)
        elif name.endswith("linear_attn.A_log"):
            v = torch.log(torch.rand(shape, generator=g) * 15.0 + 1.0)  # A ~ U(1, 16)
        elif name.endswith("linear_attn.dt_bias"):
            v = normal(shape, 1.0, mean=-4.0)  # softplus(-4)~0.018 -> decays 0.5..0.99/token
        elif name.endswith("conv1d.weight"):
            v = normal(shape, 0.5)
        elif name.endswith("experts.gate_up_proj"):  # [E, 2I, H]
            v = normal(shape, 1.0 / math.sqrt(shape[2]))
        elif name.endswith("experts.down_proj"):  # [E, H, I]
            v = normal(shape, 1.0 / math.sqrt(shape[2]))
        elif p.dim() == 2:  # nn.Linear [out, in], router, shared_expert_gate
            v = normal(shape, 1.0 / math.sqrt(shape[1]))
        else:
            raise RuntimeError(f"no init rule for {name} {shape}")
        p.copy_(v)


# --------------------------------------------------------------------------------------
# Checkpoint writing
# --------------------------------------------------------------------------------------


def hf_state_dict(model: Qwen3NextForCausalLM, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """State dict with checkpoint (per-expert) names, in module order."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach().to(dtype).contiguous()
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            E, two_i, _ = t.shape
            inter = two_i // 2
            for e in range(E):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :inter, :].clone()
                out[f"{prefix}{e}.up_proj.weight"] = t[e, inter:, :].clone()
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = t[e].clone()
        else:
            out[name] = t.clone()
    # natural order: embed, layers (ascending, experts ascending), norm, lm_head
    def key(n: str):
        parts = n.split(".")
        return [int(x) if x.isdigit() else x for x in parts]

    order = sorted(out, key=lambda n: (0 if n.startswith("model.embed") else 2 if not n.startswith("model.layers") else 1, key(n)))
    return {n: out[n] for n in order}


def fake_mtp_tensors(cfg: Qwen3NextConfig, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """A few tensors named like the real checkpoint's MTP block; loaders must skip them."""
    g = torch.Generator().manual_seed(seed + 99)
    H, E, I = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
    t = {
        "mtp.fc.weight": torch.randn(H, 2 * H, generator=g),
        "mtp.norm.weight": torch.randn(H, generator=g) * 0.1,
        "mtp.pre_fc_norm_embedding.weight": torch.randn(H, generator=g) * 0.1,
        "mtp.pre_fc_norm_hidden.weight": torch.randn(H, generator=g) * 0.1,
        "mtp.layers.0.input_layernorm.weight": torch.randn(H, generator=g) * 0.1,
        "mtp.layers.0.mlp.gate.weight": torch.randn(E, H, generator=g),
    }
    for e in range(E):  # full per-expert set, like the real checkpoint
        t[f"mtp.layers.0.mlp.experts.{e}.gate_proj.weight"] = torch.randn(I, H, generator=g)
        t[f"mtp.layers.0.mlp.experts.{e}.up_proj.weight"] = torch.randn(I, H, generator=g)
        t[f"mtp.layers.0.mlp.experts.{e}.down_proj.weight"] = torch.randn(H, I, generator=g)
    return {k: v.to(dtype).contiguous() for k, v in t.items()}


def write_config_json(cfg: Qwen3NextConfig, path: str, style: dict, store_dtype: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:  # start from exactly what transformers writes
        cfg.save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json")) as f:
            d = json.load(f)
    rp = d.get("rope_parameters") or {}
    # Top-level rope fields as in the real Qwen checkpoints.
    d["rope_theta"] = float(rp["rope_theta"])
    d["partial_rotary_factor"] = float(rp["partial_rotary_factor"])
    if not style["rope_parameters"]:
        d.pop("rope_parameters", None)
        d["rope_scaling"] = None
    if not style["layer_types"]:
        d.pop("layer_types", None)
    if style["interval"] is not None:
        d["full_attention_interval"] = style["interval"]
    d.pop("dtype", None)
    d.pop("torch_dtype", None)
    if style["rope_parameters"]:
        d["dtype"] = store_dtype
    else:
        d["torch_dtype"] = store_dtype  # legacy key, as in the released checkpoint
    for k in list(d):
        if k.startswith("_"):
            d.pop(k)
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")
    return d


def write_safetensors(tensors: dict[str, torch.Tensor], out_dir: str, shard_bytes: int | None) -> list[str]:
    meta = {"format": "pt"}
    if not shard_bytes:
        safetensors.torch.save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata=meta)
        return ["model.safetensors"]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    n = len(shards)
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        safetensors.torch.save_file(shard, os.path.join(out_dir, fn), metadata=meta)
        files.append(fn)
        for name in shard:
            weight_map[name] = fn
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return files + ["model.safetensors.index.json"]


def compare_with_save_pretrained(model: Qwen3NextForCausalLM, ours: dict[str, torch.Tensor]) -> None:
    """Our unfusing must equal what transformers' own save_pretrained writes."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        theirs = {}
        for fn in sorted(os.listdir(tmp)):
            if fn.endswith(".safetensors"):
                theirs.update(safetensors.torch.load_file(os.path.join(tmp, fn)))
    main = {k: v for k, v in ours.items() if not k.startswith("mtp.")}
    assert set(theirs) == set(main), (
        f"name mismatch vs save_pretrained: only ours {sorted(set(main) - set(theirs))[:5]}, "
        f"only theirs {sorted(set(theirs) - set(main))[:5]}"
    )
    for k, v in theirs.items():
        assert torch.equal(v.to(main[k].dtype), main[k]), f"value mismatch vs save_pretrained: {k}"


def load_reference(path: str) -> Qwen3NextForCausalLM:
    m = Qwen3NextForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    )
    m.eval()
    # Parameters may be views into the mmapped safetensors file with arbitrary (8-byte) alignment;
    # CPU GEMM kernels take alignment-dependent paths (~1e-7 differences). Re-allocate them so the
    # reference does not depend on where a tensor sits in the file.
    with torch.no_grad():
        for p in m.parameters():
            p.data = p.data.clone()
    assert m.config._attn_implementation == "eager", m.config._attn_implementation
    assert m.config._experts_implementation == "eager", m.config._experts_implementation
    assert next(m.parameters()).dtype == torch.float32
    return m


# --------------------------------------------------------------------------------------
# Reference computations
# --------------------------------------------------------------------------------------


@torch.no_grad()
def logits_alone(model, ids: list[int]) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, ids: list[int], steps: int):
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    cache = out.cache
    rows, toks = [], []
    logits = out.logits[0, -1].float()
    for j in range(steps):
        rows.append(logits.clone())
        tok = int(torch.argmax(logits))
        toks.append(tok)
        if j + 1 == steps:
            break
        out = model(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[0, -1].float()
    return torch.stack(rows), toks


@torch.no_grad()
def chunked(model, ids: list[int], chunks: list[int]) -> torch.Tensor:
    assert sum(chunks) == len(ids)
    cache = DynamicCache(config=model.config)
    parts, pos = [], 0
    for c in chunks:
        out = model(input_ids=torch.tensor([ids[pos : pos + c]]), cache=cache, use_cache=True)
        cache = out.cache
        parts.append(out.logits[0].float())
        pos += c
    return torch.cat(parts, 0)


@torch.no_grad()
def left_padded_batch(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.tensor(p)
        mask[b, T - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    return [out.logits[b, T - len(p) :].float() for b, p in enumerate(prompts)]


def margins(rows: torch.Tensor):
    top2 = torch.topk(rows, 2, dim=-1).values
    m = top2[:, 0] - top2[:, 1]
    rng = rows.max(-1).values - rows.min(-1).values
    return m, rng


class RouterProbe:
    """Smallest gap between the k-th and (k+1)-th router logit (an expert-choice flip needs an
    error in the router logits larger than this)."""

    def __init__(self, model):
        self.min_gap = float("inf")
        self.active = True
        self.handles = []
        for mod in model.modules():
            if isinstance(mod, hf_q3n.Qwen3NextTopKRouter):
                self.handles.append(mod.register_forward_hook(self.hook))

    def hook(self, mod, inp, out):
        if not self.active:
            return
        s = torch.sort(out[0].float(), -1, descending=True).values
        k = mod.top_k
        if s.shape[-1] > k:
            self.min_gap = min(self.min_gap, float((s[:, k - 1] - s[:, k]).min()))

    def close(self):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def save_npy(path: str, t: torch.Tensor) -> None:
    np.save(path, np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32)))


def gen_config(spec: dict, out_root: str, path_note: str) -> dict:
    name = spec["name"]
    out_dir = os.path.join(out_root, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    store_dtype = getattr(torch, spec["store_dtype"])

    torch.manual_seed(spec["seed"])
    cfg = build_config(spec["hf"])
    model = Qwen3NextForCausalLM(cfg).eval()
    reinit(model, spec["seed"])
    # What the checkpoint will hold, seen in fp32 (bf16 rounding applied if stored in bf16).
    # Only parameters are rounded: model.to(bf16) would also round the rotary inv_freq buffer.
    if store_dtype != torch.float32:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(store_dtype).to(torch.float32))

    tensors = hf_state_dict(model, store_dtype)
    compare_with_save_pretrained(model, tensors)
    if spec["mtp"]:
        tensors.update(fake_mtp_tensors(cfg, store_dtype, spec["seed"]))
    files = write_safetensors(tensors, out_dir, spec["shard_bytes"])
    cfg_json = write_config_json(cfg, os.path.join(out_dir, "config.json"), spec["config_style"], spec["store_dtype"])

    # ---- reload and verify ------------------------------------------------------------
    ref = load_reference(out_dir)
    rc = ref.config
    assert rc.layer_types == cfg.layer_types, (rc.layer_types, cfg.layer_types)
    assert rc.rope_parameters["rope_theta"] == cfg.rope_parameters["rope_theta"]
    assert rc.rope_parameters["partial_rotary_factor"] == cfg.rope_parameters["partial_rotary_factor"]
    sd_mem, sd_ref = model.state_dict(), ref.state_dict()
    assert set(sd_mem) == set(sd_ref)
    for k in sd_mem:
        assert torch.equal(sd_mem[k], sd_ref[k]), f"reloaded tensor differs: {k}"
    probe_ids = torch.randint(0, cfg.vocab_size, (1, 70), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a = model(input_ids=probe_ids, use_cache=False).logits
        b = ref(input_ids=probe_ids, use_cache=False).logits
    assert torch.equal(a, b), f"reloaded model output differs: {float((a - b).abs().max())}"
    del model

    # Cross-check: grouped_mm experts implementation (informational only).
    try:
        ref.set_experts_implementation("grouped_mm")
        assert ref.config._experts_implementation == "grouped_mm"
        with torch.no_grad():
            c = ref(input_ids=probe_ids, use_cache=False).logits
        grouped_diff = float((c - b).abs().max())
    except Exception as e:  # noqa: BLE001
        grouped_diff = f"n/a ({type(e).__name__})"
    ref.set_experts_implementation("eager")
    assert ref.config._experts_implementation == "eager"

    # ---- prompts: reseed a prompt until its greedy continuation has robust margins -----
    # threshold: MARGIN_REL x the logit range (estimated on the probe input, +25% headroom;
    # re-checked against the final range of the recorded prompt logits below)
    margin_abs = 1.25 * MARGIN_REL * float(b.max() - b.min())
    prob = RouterProbe(ref)
    prompts, prompt_logits, greedy_rows, greedy_toks, attempts = [], [], [], [], []
    for i, L in enumerate(PROMPT_LENGTHS):
        prob.active = False
        for attempt in range(500):
            gen = torch.Generator().manual_seed(spec["seed"] * 1000 + i * 100 + attempt)
            ids = torch.randint(0, cfg.vocab_size, (L,), generator=gen).tolist()
            rows, toks = greedy(ref, ids, GREEDY_STEPS)
            m, _ = margins(rows)
            if bool((m >= margin_abs).all()):
                break
        else:
            raise RuntimeError(f"{name}: no prompt of length {L} with robust greedy margins")
        attempts.append(attempt)
        prob.active = True  # router gaps are measured on the recorded runs only
        pl = logits_alone(ref, ids)
        rows2, toks2 = greedy(ref, ids, GREEDY_STEPS)
        assert toks2 == toks and torch.equal(rows2, rows), f"{name}: greedy run is not deterministic"
        # row 0 of the greedy run is the last prompt position, computed with a cache
        d0 = float((rows[0] - pl[-1]).abs().max())
        assert d0 <= 1e-5 * float(pl.max() - pl.min()), f"{name}: greedy row 0 vs prompt logits {d0}"
        # generate() must agree with the manual loop
        with torch.no_grad():
            # explicit all-ones mask: otherwise generate() treats token id == pad_token_id as padding
            g_out = ref.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, L, dtype=torch.long),
                max_new_tokens=GREEDY_STEPS, min_new_tokens=GREEDY_STEPS, do_sample=False,
                pad_token_id=0,
            )
        assert g_out[0, L:].tolist() == toks, f"{name}: generate() disagrees with the manual greedy loop"
        prompts.append(ids)
        prompt_logits.append(pl)
        greedy_rows.append(rows)
        greedy_toks.append(toks)

    all_prompt = torch.cat(prompt_logits, 0)
    lo, hi = float(all_prompt.min()), float(all_prompt.max())
    logit_range = hi - lo
    logit_std = float(all_prompt.std())

    g_margins = torch.cat([margins(r)[0] for r in greedy_rows])
    g_rel = g_margins / logit_range  # relative to the global logit range of the prompt logits
    p_m, _ = margins(all_prompt)
    p_rel = p_m / logit_range
    assert float(g_margins.min()) >= MARGIN_REL * logit_range, f"{name}: greedy margin below threshold"

    # ---- chunked prefill of the longest prompt ----------------------------------------
    li = int(np.argmax([len(p) for p in prompts]))
    ch = chunked(ref, prompts[li], CHUNKS)
    prob.close()
    chunk_diff = float((ch - prompt_logits[li]).abs().max())
    assert chunk_diff <= CHUNK_TOL_REL * logit_range, (
        f"{name}: chunked prefill differs from the whole prompt by {chunk_diff} (range {logit_range})"
    )

    # ---- sanity: left-padded batch (not saved) ------------------------------------------
    padded = left_padded_batch(ref, prompts)
    pad_diff = max(float((a - b).abs().max()) for a, b in zip(padded, prompt_logits))

    # ---- write --------------------------------------------------------------------------
    golden = {
        "config_name": name,
        "checkpoint": {"dir": ".", "files": ["config.json"] + files, "stored_dtype": spec["store_dtype"],
                       "has_fake_mtp_tensors": spec["mtp"]},
        "reference_dtype": "float32",
        "prompts": prompts,
        "prompt_logits": [],
        "greedy": [],
        "chunked": [],
    }
    for i, pl in enumerate(prompt_logits):
        fn = f"prompt_{i}_logits.npy"
        save_npy(os.path.join(out_dir, fn), pl)
        golden["prompt_logits"].append(fn)
    for i, (rows, toks) in enumerate(zip(greedy_rows, greedy_toks)):
        fn = f"greedy_{i}_logits.npy"
        save_npy(os.path.join(out_dir, fn), rows)
        golden["greedy"].append({"prompt": i, "tokens": toks, "logits": fn})
    fn = f"chunked_{li}_logits.npy"
    save_npy(os.path.join(out_dir, fn), ch)
    golden["chunked"].append({"prompt": li, "chunks": CHUNKS, "logits": fn})
    golden.update(
        {
            "versions": versions(),
            "seed": spec["seed"],
            "prompt_seed_attempts": attempts,
            "logit_min": lo,
            "logit_max": hi,
            "logit_range": logit_range,
            "logit_std": logit_std,
            "min_greedy_margin": float(g_margins.min()),
            "min_greedy_margin_rel": float(g_rel.min()),
            "min_prompt_argmax_margin": float(p_m.min()),
            "min_prompt_argmax_margin_rel": float(p_rel.min()),
            "prompt_positions_below_margin_threshold": int((p_m < MARGIN_REL * logit_range).sum()),
            "min_router_topk_logit_gap": prob.min_gap,
            "chunked_max_abs_diff_vs_prompt": chunk_diff,
            "left_padded_batch_max_abs_diff": pad_diff,
            "grouped_mm_vs_eager_experts_max_abs_diff": grouped_diff,
            "notes": (
                "Reference = transformers Qwen3NextForCausalLM loaded from this directory with "
                "dtype=float32, attn_implementation=eager, experts_implementation=eager, torch "
                f"fallback GatedDeltaNet ({path_note}). prompt_i_logits: prompt i alone, batch 1, "
                "no padding, logits at every position [T_i, vocab]. greedy_i_logits: row j produced "
                "generated token j (row 0 = last prompt position, then one cached token per forward). "
                "chunked: prompt fed through the cache in the listed chunk sizes, all positions "
                "concatenated. Greedy margins (top1-top2) are >= "
                f"{MARGIN_REL} x logit_range at every greedy step (prompts reseeded until true, see "
                "prompt_seed_attempts); prompt positions are NOT filtered: compare prompt logits with "
                "a tolerance, not argmax. min_router_topk_logit_gap = smallest gap between the k-th "
                "and (k+1)-th router logit over all recorded runs (prompt, greedy, chunked)."
            ),
        }
    )
    with open(os.path.join(out_dir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")

    size = sum(os.path.getsize(os.path.join(out_dir, x)) for x in os.listdir(out_dir))
    return {
        "name": name,
        "layers": "".join("F" if t == "full_attention" else "L" for t in cfg.layer_types),
        "range": logit_range,
        "std": logit_std,
        "g_margin": float(g_margins.min()),
        "g_rel": float(g_rel.min()),
        "p_rel": float(p_rel.min()),
        "router_gap": prob.min_gap,
        "chunk": chunk_diff,
        "pad": pad_diff,
        "grouped": grouped_diff,
        "attempts": attempts,
        "bytes": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/data", help="output folder (one subfolder per config)")
    ap.add_argument("--only", nargs="*", help="generate only these configs")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    path_note = check_torch_fallback_path()
    print(path_note)
    print("versions:", json.dumps(versions()))
    os.makedirs(args.out, exist_ok=True)

    rows = []
    for spec in CONFIGS:
        if args.only and spec["name"] not in args.only:
            continue
        print(f"[{spec['name']}] generating ...", flush=True)
        rows.append(gen_config(spec, args.out, path_note))

    hdr = (
        f"{'config':10} {'layers':7} {'range':>7} {'std':>5} {'minGreedy':>9} {'rel':>8} {'promptRel':>9} "
        f"{'routerGap':>9} {'chunkDiff':>9} {'padDiff':>9} {'groupedMM':>9} {'reseeds':>10} {'KiB':>6}"
    )
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        grouped = f"{r['grouped']:9.2e}" if isinstance(r["grouped"], float) else f"{str(r['grouped'])[:9]:>9}"
        print(
            f"{r['name']:10} {r['layers']:7} {r['range']:7.2f} {r['std']:5.2f} {r['g_margin']:9.4f} "
            f"{r['g_rel']:8.5f} {r['p_rel']:9.2e} {r['router_gap']:9.2e} {r['chunk']:9.2e} "
            f"{r['pad']:9.2e} {grouped} {str(r['attempts']):>10} {r['bytes'] / 1024:6.0f}"
        )
    total = 0
    for dp, _, fns in os.walk(args.out):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fns)
    print(f"\ntotal size of {args.out}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
