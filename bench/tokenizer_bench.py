#!/usr/bin/env python3
"""Encode throughput: nextserve's tokenizer vs Hugging Face tokenizers (Rust, via Python), one
thread each, same text, same run.

Text: the tokenizer test corpus (tools/make_corpus.py), all documents joined, and its "natural"
part (translations, licences, source code; without the generated all-code-points and long-word
documents). Both sides parse special-token text (HF's default). Each side encodes each text
--repeat times after loading; the best time counts. Ids are checked to be equal.

Usage: python3 bench/tokenizer_bench.py [--build-dir build] [--repeat 5]
Needs: the data of tools/make_tokenizer_golden.py under <build>/tokenizer-data and <build>/bin/nextserve.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def ours(binary: str, model: str, path: str, repeat: int) -> tuple[float, list[int]]:
    r = subprocess.run([binary, "tokenize", "--model", model, "--text-file", path, "--parse-special",
                        "--stats", "--repeat", str(repeat)], capture_output=True, text=True, check=True)
    seconds = float(r.stderr.split("best encode of")[1].split(":")[1].split("s")[0])
    ids = [int(x) for x in r.stdout.strip().split(",")] if r.stdout.strip() else []
    return seconds, ids


def hf(tok, text: str, repeat: int) -> tuple[float, list[int]]:
    best, ids = 1e30, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        enc = tok.encode(text, add_special_tokens=False)
        best = min(best, time.perf_counter() - t0)
        ids = enc.ids
    return best, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from tokenizers import Tokenizer
    import tokenizers

    root = os.path.join(args.build_dir, "tokenizer-data")
    model = os.path.join(root, "qwen")
    binary = os.path.join(args.build_dir, "bin", "nextserve")
    docs = sorted(glob.glob(os.path.join(root, "corpus", "*.txt")))
    if not docs or not os.path.exists(binary):
        sys.exit(f"tokenizer_bench: need {root}/corpus (tools/make_tokenizer_golden.py) and {binary}")
    texts = {os.path.basename(p): open(p, encoding="utf-8", newline="").read() for p in docs}
    natural = [n for n in texts if not n.split("_", 1)[1].startswith("gen_")]
    sets = {"whole corpus": list(texts.values()), "natural text": [texts[n] for n in natural]}

    tok = Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
    print(f"tokenizers {tokenizers.__version__}, one thread each, best of {args.repeat}")
    print(f"{'text':<14}{'MB':>7}{'ours MB/s':>11}{'HF MB/s':>10}{'ratio':>8}{'HF per doc MB/s':>17}")
    for name, parts in sets.items():
        text = "".join(parts)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", suffix=".txt", delete=False) as f:
            f.write(text)
        try:
            mb = len(text.encode()) / 1e6
            t_ours, ids_ours = ours(binary, model, f.name, args.repeat)
            t_hf, ids_hf = hf(tok, text, args.repeat)
        finally:
            os.unlink(f.name)
        # HF once more, one document at a time, to show the joined text is not a slow case for it.
        t0 = time.perf_counter()
        for part in parts:
            tok.encode(part, add_special_tokens=False)
        t_docs = time.perf_counter() - t0
        same = "" if ids_ours == ids_hf else "  (IDS DIFFER)"
        print(f"{name:<14}{mb:>7.2f}{mb / t_ours:>11.1f}{mb / t_hf:>10.1f}{t_hf / t_ours:>7.2f}x"
              f"{mb / t_docs:>17.1f}{same}")


if __name__ == "__main__":
    main()
