#!/usr/bin/env python3
"""Build a Hugging Face model directory holding the real Qwen tokenizer, from a packaged vocabulary.

The Qwen2/Qwen3/Qwen3-Next byte-level BPE (151,643 tokens) ships as `qwen.tiktoken` inside the PyPI
package `dashscope` (installed with --no-deps by scripts/setup.sh; nothing is fetched here). This
script turns it into what a Qwen3-Next checkpoint carries:

  tokenizer.json         vocab, merges (list form), 26 added tokens, NFC, split regex + ByteLevel
  vocab.json, merges.txt the "slow" files (merges in "a b" form)
  tokenizer_config.json  added_tokens_decoder, eos/pad, and the Qwen3-Next Instruct chat template
                         (tests/golden/tokenizer/qwen3_next_instruct.jinja, see its README)

Merges are derived the standard way (as transformers' TikTokenConverter does): a token of rank r is
the merge of the two parts that BPE with ranks < r leaves it in. Deterministic; needs `tokenizers`.

Usage: python3 tools/make_qwen_tokenizer.py --out build/tokenizer/qwen [--tiktoken FILE]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import sys

# The vocabulary file this was written for: dashscope 2.0.2, dashscope/resources/qwen.tiktoken.
TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"

PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
       r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Spec §8: ids 151643..151668; "special" as in the Qwen3 family tokenizer_config.json.
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
FIRST_ADDED_ID = 151643

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(REPO, "tests", "golden", "tokenizer", "qwen3_next_instruct.jinja")


def find_tiktoken() -> str:
    spec = importlib.util.find_spec("dashscope")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("make_qwen_tokenizer: the PyPI package 'dashscope' is not installed "
                 "(bash scripts/setup.sh installs it); or pass --tiktoken FILE")
    path = os.path.join(list(spec.submodule_search_locations)[0], "resources", "qwen.tiktoken")
    if not os.path.exists(path):
        sys.exit(f"make_qwen_tokenizer: {path} not found in the installed dashscope")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def split_in_two(ranks: dict[bytes, int], token: bytes, max_rank: int) -> tuple[bytes, bytes]:
    parts = [token[i:i + 1] for i in range(len(token))]
    while True:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best):
                best, best_i = r, i
        if best is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {max_rank}) does not split into two parts: {parts}")
    return parts[0], parts[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiktoken", default=None)
    args = ap.parse_args()

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    path = args.tiktoken or find_tiktoken()
    raw = open(path, "rb").read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TIKTOKEN_SHA256:
        print(f"make_qwen_tokenizer: warning: {path} sha256 {digest} differs from the pinned one",
              file=sys.stderr)
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    if sorted(ranks.values()) != list(range(FIRST_ADDED_ID)):
        sys.exit(f"make_qwen_tokenizer: {path}: expected ranks 0..{FIRST_ADDED_ID - 1}")

    b2u = bytes_to_unicode()
    to_str = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = split_in_two(ranks, tok, rank)
            merges.append((to_str(a), to_str(b)))

    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False,
                     ignore_merges=False)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for i, (content, special) in enumerate(ADDED_TOKENS):
        added = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False,
                           special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
        got = tok.token_to_id(content)
        if got != FIRST_ADDED_ID + i:
            sys.exit(f"make_qwen_tokenizer: {content} got id {got}, expected {FIRST_ADDED_ID + i}")

    os.makedirs(args.out, exist_ok=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(args.out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(FIRST_ADDED_ID + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": s}
            for i, (c, s) in enumerate(ADDED_TOKENS)
        },
        "additional_special_tokens": [c for c, s in ADDED_TOKENS[1:] if s],
        "bos_token": None,
        "chat_template": open(TEMPLATE, encoding="utf-8").read(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    print(f"make_qwen_tokenizer: {len(vocab)} tokens, {len(merges)} merges, "
          f"{len(ADDED_TOKENS)} added -> {args.out}")


if __name__ == "__main__":
    main()
