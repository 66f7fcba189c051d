#!/usr/bin/env python3
"""Build the tokenizer test corpus (> 2 MB of varied text) from files that packages install.

Deterministic: the same installed files give the same documents, byte for byte. Nothing is
downloaded and nothing is committed; tools/make_tokenizer_golden.py records the reference ids of
what this builds, on the same machine. Sources:

  * translations (gettext .mo) of coreutils and Linux-PAM (both installed on every Debian):
    ~80 languages, Latin, Cyrillic, Greek, CJK, Arabic, Hebrew, Devanagari, Thai, Georgian, ...
  * English prose: /usr/share/common-licenses (base-files)
  * source code: nlohmann/json.hpp (nlohmann-json3-dev) and Python's own standard library
  * generated text (fixed rules, own PRNG): numbers, emoji sequences, runs of whitespace and
    newlines, special-token strings and near misses, very long words, contractions, every
    Unicode code point in several contexts, decomposed text that NFC recomposes

Usage: python3 tools/make_corpus.py --out DIR   (writes DIR/NNN_name.txt)
"""

from __future__ import annotations

import argparse
import gettext
import os
import sysconfig
import unicodedata

LOCALE = "/usr/share/locale"
COREUTILS_LANGS = ["ja", "zh_CN", "zh_TW", "ko", "ru", "uk", "el", "vi", "de", "fr", "es", "pl", "tr",
                   "sr", "kk", "eo", "pt_BR", "cs", "hu", "fi"]
COREUTILS_CAP = 60_000  # bytes per language
LICENSES = ["GPL-3", "Apache-2.0", "MPL-2.0"]
PY_STDLIB = ["json/decoder.py", "textwrap.py", "string.py", "difflib.py", "codecs.py"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>",
            "</think>", "<tool_response>", "</tool_response>", "<|fim_prefix|>", "<|vision_pad|>"]


class Lcg:
    """A tiny PRNG whose sequence never changes with the Python version."""

    def __init__(self, seed: int):
        self.s = seed & 0xFFFFFFFFFFFFFFFF

    def next(self, n: int) -> int:
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        return (self.s >> 33) % n

    def pick(self, seq):
        return seq[self.next(len(seq))]


def mo_text(path: str, cap: int | None = None) -> str:
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog
    out, size = [], 0
    for key in sorted(catalog, key=lambda k: repr(k)):
        value = catalog[key]
        if not isinstance(value, str) or not value or key == "":
            continue
        out.append(value)
        size += len(value.encode())
        if cap and size >= cap:
            break
    return "\n".join(out) + "\n"


def numbers(rng: Lcg) -> str:
    parts = []
    for i in range(4000):
        kind = rng.next(8)
        if kind == 0:
            parts.append(str(rng.next(10**9)))
        elif kind == 1:
            parts.append(f"{rng.next(100000)}.{rng.next(1000):03d}")
        elif kind == 2:
            parts.append(f"+1 ({rng.next(900) + 100}) {rng.next(900) + 100}-{rng.next(9000) + 1000}")
        elif kind == 3:
            parts.append(f"20{rng.next(30):02d}-{rng.next(12) + 1:02d}-{rng.next(28) + 1:02d}T"
                         f"{rng.next(24):02d}:{rng.next(60):02d}:00Z")
        elif kind == 4:
            parts.append(f"{rng.next(1000)},{rng.next(1000):03d},{rng.next(1000):03d}")
        elif kind == 5:
            parts.append(f"-{rng.next(100)}e{rng.next(40) - 20}")
        elif kind == 6:
            parts.append("".join("０１２３４５６７８９"[rng.next(10)] for _ in range(rng.next(8) + 1)))
        else:
            parts.append("".join("٠١٢٣٤٥٦٧٨٩"[rng.next(10)] for _ in range(rng.next(6) + 1)) + " ½ ⅔ Ⅻ ²³")
        parts.append(rng.pick([" ", ", ", "\n", "; ", " = ", "x", "%"]))
    return "".join(parts)


def emoji(rng: Lcg) -> str:
    singles = [chr(c) for c in range(0x1F300, 0x1FAFF) if unicodedata.category(chr(c)) == "So"]
    tones = [chr(c) for c in range(0x1F3FB, 0x1F400)]
    zwj = ["👨‍👩‍👧‍👦", "👩🏽‍💻", "🏳️‍🌈", "❤️‍🔥", "🧑‍🤝‍🧑", "👁️‍🗨️"]
    flags = ["🇯🇵", "🇺🇸", "🇫🇷", "🇧🇷", "🇨🇳", "🇩🇪", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
    parts = []
    for i in range(6000):
        k = rng.next(6)
        if k == 0:
            parts.append(rng.pick(singles))
        elif k == 1:
            parts.append(rng.pick(singles) + rng.pick(tones))
        elif k == 2:
            parts.append(rng.pick(zwj))
        elif k == 3:
            parts.append(rng.pick(flags))
        elif k == 4:
            parts.append(rng.pick(["☺️", "✌🏿", "#️⃣", "1️⃣", "©️", "™"]))
        else:
            parts.append(rng.pick(["hello", "ok", "日本", "ура", "!!", "😀😀😀"]))
        parts.append(rng.pick(["", " ", "  ", "\n", ""]))
    return "".join(parts)


def whitespace(rng: Lcg) -> str:
    pieces = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n\n", "\r", "\u00a0", "\u3000", "\u2009", "\u200b",
              "\u2028", "\u0085", "\x0b", "\x0c", " \n ", "\t\t\n", "\u1680", "\u180e", "\u202f", "\x1c"]
    words = ["a", "word", "Ünïcödé", "x1", "[", "}", ".", "中文", "'s", "-", "\\"]
    parts = []
    for i in range(12000):
        parts.append(rng.pick(pieces) * (1 + rng.next(3) * rng.next(4)))
        if rng.next(3):
            parts.append(rng.pick(words))
    parts.append(" " * 5000 + "end" + "\n" * 3000 + "x" + "\t \n" * 700 + "\r\n" * 500)
    return "".join(parts)


def specials(rng: Lcg) -> str:
    near = ["<|im_start|", "<|im_sta", "|im_end|>", "<|IM_START|>", "<||>", "<|<|im_end|>",
            "<tool_call", "tool_call>", "<<think>>", "< think>", "<|endoftext|><|endoftext|>"]
    words = ["user", "assistant", "\n", " ", "system", "hello", "你好", "{\"name\": \"f\"}", "x"]
    parts = []
    for i in range(8000):
        k = rng.next(4)
        parts.append(rng.pick(SPECIALS) if k == 0 else rng.pick(near) if k == 1 else rng.pick(words))
        parts.append(rng.pick(["", " ", "\n", "a"]))
    return "".join(parts)


def long_words(rng: Lcg) -> str:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    b64 = letters + "0123456789+/"
    parts = ["a" * 20000, "\n", "ab" * 8000, "\n", "".join(rng.pick(letters) for _ in range(20000)), "\n",
             "".join(rng.pick(b64) for _ in range(40000)), "==\n", "9" * 5000, "\n",
             "https://example.com/" + "/".join("seg%d" % i for i in range(2000)), "\n",
             "日本語の文章" * 2000, "\n", "Привет" * 2000, "\n", "!" * 3000, "\n", "😀" * 2000, "\n",
             "x" + "\u0301" * 2000, "\n", "Donaudampfschifffahrtsgesellschaftskapitän" * 50, "\n"]
    return "".join(parts)


def contractions() -> str:
    out = []
    for c in ["s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "Ve", "M", "LL", "D", "ſ", "K", "K", "x"]:
        for ctx in ["it'{} ", "IT'{}\n", "'{}", " '{}", "x'{}y", "''{}", "’{} "]:
            out.append(ctx.format(c))
    return "".join(out) * 20


def all_code_points() -> str:
    """Every scalar value of the BMP and the assigned ones above it, in several contexts."""
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and
           (c < 0x10000 or unicodedata.category(chr(c)) != "Cn" or 0xE0000 <= c <= 0xE01EF)]
    out = []
    for i in range(0, len(cps), 64):
        chunk = [chr(c) for c in cps[i:i + 64]]
        out.append(" ".join(chunk))
        out.append("\n")
        out.append("a" + "a".join(chunk) + "1" + "1".join(chunk))
        out.append("\n")
    return "".join(out)


def decomposed(rng: Lcg) -> str:
    words = ["café", "naïve", "Ångström", "Việt Nam", "한국어 텍스트", "ﬁligree", "Å", "Ω", "ḱṷṓn", "가각"]
    marks = [chr(c) for c in range(0x300, 0x370)]
    out = []
    for i in range(4000):
        w = rng.pick(words)
        k = rng.next(3)
        if k == 0:
            out.append(unicodedata.normalize("NFD", w))
        elif k == 1:
            out.append(rng.pick("aeiouAEIOU가ᄀ") + "".join(rng.pick(marks) for _ in range(rng.next(4) + 1)))
        else:
            out.append(unicodedata.normalize("NFKD", w))
        out.append(rng.pick([" ", "\n", "", "-"]))
    return "".join(out)


def build_corpus() -> list[tuple[str, str]]:
    """(name, text) pairs, in a fixed order. Missing optional files are skipped."""
    docs: list[tuple[str, str]] = []
    for lang in COREUTILS_LANGS:
        path = f"{LOCALE}/{lang}/LC_MESSAGES/coreutils.mo"
        if os.path.exists(path):
            docs.append((f"coreutils_{lang}", mo_text(path, COREUTILS_CAP)))
    pam = []
    for lang in sorted(os.listdir(LOCALE)) if os.path.isdir(LOCALE) else []:
        path = f"{LOCALE}/{lang}/LC_MESSAGES/Linux-PAM.mo"
        if os.path.exists(path):
            pam.append(f"[{lang}]\n" + mo_text(path))
    docs.append(("linux_pam_all", "".join(pam)))
    for name in LICENSES:
        path = f"/usr/share/common-licenses/{name}"
        if os.path.exists(path):
            docs.append((f"license_{name}", open(path, encoding="utf-8").read()))
    path = "/usr/include/nlohmann/json.hpp"
    if os.path.exists(path):
        docs.append(("code_nlohmann_json", open(path, encoding="utf-8").read()[:150_000]))
    stdlib = sysconfig.get_paths()["stdlib"]
    for rel in PY_STDLIB:
        path = os.path.join(stdlib, rel)
        if os.path.exists(path):
            docs.append((f"code_py_{rel.replace('/', '_')}", open(path, encoding="utf-8").read()))
    docs += [("gen_numbers", numbers(Lcg(1))), ("gen_emoji", emoji(Lcg(2))),
             ("gen_whitespace", whitespace(Lcg(3))), ("gen_specials", specials(Lcg(4))),
             ("gen_long_words", long_words(Lcg(5))), ("gen_contractions", contractions()),
             ("gen_all_code_points", all_code_points()), ("gen_decomposed", decomposed(Lcg(6))),
             ("gen_empty", ""), ("gen_one_space", " ")]
    return docs


def write_corpus(out: str) -> list[tuple[str, str]]:
    os.makedirs(out, exist_ok=True)
    docs = build_corpus()
    for i, (name, text) in enumerate(docs):
        with open(os.path.join(out, f"{i:03d}_{name}.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    docs = write_corpus(args.out)
    total = sum(len(t.encode()) for _, t in docs)
    print(f"make_corpus: {len(docs)} documents, {total} bytes -> {args.out}")


if __name__ == "__main__":
    main()
