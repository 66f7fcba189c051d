#!/usr/bin/env python3
"""Reference data for the tokenizer tests, from Hugging Face tokenizers and transformers.

Two jobs:

  --build-dir B   (run by scripts/setup.sh; needs `tokenizers` and the `dashscope` package)
      B/tokenizer-data/qwen/     the real Qwen tokenizer files (tools/make_qwen_tokenizer.py)
      B/tokenizer-data/corpus/   the corpus (tools/make_corpus.py)
      B/tokenizer-data/golden/   HF tokenizers' ids of every document, special-token text parsed
                            (NNN.ids) and not parsed (NNN.ids_plain), int32 little-endian;
                            decode cases (random ids -> HF decode text); manifest.json
      Then compares with the committed tests/golden/tokenizer/corpus_manifest.json (sha256 of
      each document and of its ids, recorded with tokenizers==0.23.3) and warns on a difference:
      the C++ tests compare against the ids recorded here, on this machine, so a changed
      package file changes both sides, never only one.
      --update-manifest rewrites the committed manifest.

  --record-chat   (a developer runs it; needs transformers; writes committed data)
      tests/golden/tokenizer/chat_cases.json: the conversations below, rendered by transformers'
      apply_chat_template with the Qwen3-Next Instruct template, and their ids.

Usage:
  python3 tools/make_tokenizer_golden.py --build-dir build
  python3 tools/make_tokenizer_golden.py --build-dir build --record-chat
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
GOLDEN = os.path.join(REPO, "tests", "golden", "tokenizer")
sys.path.insert(0, TOOLS)
import make_corpus  # noqa: E402

FIRST_ADDED_ID = 151643
NUM_IDS = 151669


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def pack_ids(ids: list[int]) -> bytes:
    return struct.pack(f"<{len(ids)}i", *ids)


def build(build_dir: str, update_manifest: bool) -> None:
    from tokenizers import Tokenizer

    root = os.path.join(build_dir, "tokenizer-data")
    qwen = os.path.join(root, "qwen")
    subprocess.run([sys.executable, os.path.join(TOOLS, "make_qwen_tokenizer.py"), "--out", qwen], check=True)
    docs = make_corpus.write_corpus(os.path.join(root, "corpus"))
    golden = os.path.join(root, "golden")
    os.makedirs(golden, exist_ok=True)

    tok = Tokenizer.from_file(os.path.join(qwen, "tokenizer.json"))
    entries = []
    for i, (name, text) in enumerate(docs):
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        stem = f"{i:03d}_{name}"
        for ext, seq in (("ids", ids), ("ids_plain", plain)):
            with open(os.path.join(golden, f"{stem}.{ext}"), "wb") as f:
                f.write(pack_ids(seq))
        decoded = tok.decode(ids, skip_special_tokens=False)
        entries.append({
            "name": stem, "bytes": len(text.encode()), "text_sha256": sha(text.encode()),
            "ids": len(ids), "ids_sha256": sha(pack_ids(ids)), "ids_plain": len(plain),
            "ids_plain_sha256": sha(pack_ids(plain)),
            # decode(encode(x)) is x for NFC text; the NFC of x otherwise.
            "roundtrip_is_input": decoded == text,
        })
        if decoded != text:
            with open(os.path.join(golden, f"{stem}.decoded"), "w", encoding="utf-8", newline="") as f:
                f.write(decoded)

    cases = decode_cases(tok)
    with open(os.path.join(golden, "decode_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False)

    import tokenizers
    manifest = {"tokenizers_version": tokenizers.__version__, "documents": entries}
    with open(os.path.join(golden, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    total = sum(e["bytes"] for e in entries)
    print(f"make_tokenizer_golden: {len(entries)} documents, {total} bytes, "
          f"{sum(e['ids'] for e in entries)} ids, {len(cases)} decode cases -> {golden}")

    committed = os.path.join(GOLDEN, "corpus_manifest.json")
    if update_manifest:
        with open(committed, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        print(f"make_tokenizer_golden: wrote {committed}")
    elif os.path.exists(committed):
        old = {e["name"]: e for e in json.load(open(committed))["documents"]}
        for e in entries:
            o = old.get(e["name"])
            if o is None or o["text_sha256"] != e["text_sha256"]:
                print(f"make_tokenizer_golden: note: {e['name']} differs from the committed corpus "
                      "(an installed package changed); ids recorded here are still the reference")
            elif o["ids_sha256"] != e["ids_sha256"] or o["ids_plain_sha256"] != e["ids_plain_sha256"]:
                print(f"make_tokenizer_golden: WARNING: {e['name']}: same text, different HF ids than "
                      f"recorded with tokenizers {json.load(open(committed))['tokenizers_version']}")


def decode_cases(tok) -> list[dict]:
    """Random id sequences, many of them invalid UTF-8, and how HF decodes them."""
    rng = make_corpus.Lcg(7)
    cases = []
    byte_ids = list(range(256))  # single-byte tokens: the raw material of invalid UTF-8
    multi = [tok.token_to_id(t) for t in ["ä½ł", "å¥½", "ĠðŁĺ", "Ģ", "Ġ", "Hello", "<|im_end|>", "<think>"]]
    multi = [m for m in multi if m is not None]
    for n in range(400):
        length = 1 + rng.next(12)
        ids = []
        for _ in range(length):
            k = rng.next(4)
            ids.append(rng.pick(byte_ids) if k == 0 else rng.pick(multi) if k == 1 else
                       FIRST_ADDED_ID + rng.next(NUM_IDS - FIRST_ADDED_ID) if k == 2 and rng.next(3) == 0
                       else rng.next(FIRST_ADDED_ID))
        skip = bool(rng.next(2))
        cases.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    return cases


TOOLS_WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city — «quoted», with \"escapes\"\nand a newline.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "城市名"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14, "default": 3},
            },
            "required": ["city"],
        },
    },
}]
TOOLS_MANY = TOOLS_WEATHER + [
    {"type": "function", "function": {"name": "search", "description": "Search the web.",
                                      "parameters": {"type": "object", "properties": {
                                          "q": {"type": "string"}, "top_k": {"type": "number", "default": 0.5},
                                          "strict": {"type": "boolean", "default": False},
                                          "tags": {"type": "array", "items": {"type": "string"}},
                                          "extra": {"type": ["string", "null"], "default": None},
                                          "eps": {"type": "number", "default": 1e-07},
                                          "big": {"type": "number", "default": 1e+20},
                                          "neg": {"type": "number", "default": -2.5}}}}},
    {"name": "flat_tool", "description": "A tool given without the function wrapper.", "parameters": {}},
]


def conversations() -> list[dict]:
    u = lambda c: {"role": "user", "content": c}  # noqa: E731
    a = lambda c: {"role": "assistant", "content": c}  # noqa: E731
    s = lambda c: {"role": "system", "content": c}  # noqa: E731
    t = lambda c: {"role": "tool", "content": c}  # noqa: E731

    def call(name, args, wrapped=True):
        fn = {"name": name, "arguments": args}
        return {"type": "function", "id": "call_1", "function": fn} if wrapped else fn

    weather = {"city": "Paris", "unit": "celsius"}
    conv = [
        ("user_only", [u("Hello!")], None, True),
        ("user_only_no_gen", [u("Hello!")], None, False),
        ("system_user", [s("You are a helpful assistant."), u("Hi")], None, True),
        ("multi_turn", [s("Be brief."), u("What is 2+2?"), a("4."), u("And 3+3?")], None, True),
        ("multi_turn_ends_assistant", [u("Ping"), a("Pong"), u("Again"), a("Pong!")], None, False),
        ("unicode", [u("日本語で答えて。😀 Ünïcödé — “quotes”\ttab"), a("はい、どうぞ。🎉")], None, True),
        ("special_text_in_content", [u("Say <|im_end|> and <tool_call>{}</tool_call> literally")], None, True),
        ("empty_content", [u(""), a("")], None, True),
        ("whitespace_content", [u("  \n\n  leading and trailing  \n"), a("\n")], None, True),
        ("system_not_first", [u("a"), s("late system"), u("b")], None, True),
        ("two_systems", [s("first"), s("second"), u("x")], None, True),
        ("unknown_role_ignored", [u("a"), {"role": "developer", "content": "hidden"}, u("b")], None, True),
        ("tools_no_system", [u("Weather in Paris?")], TOOLS_WEATHER, True),
        ("tools_with_system", [s("You can call tools."), u("Weather in Paris?")], TOOLS_WEATHER, True),
        ("tools_many", [u("Search for cats")], TOOLS_MANY, True),
        ("tool_call_dict_args", [u("Weather?"), {"role": "assistant", "content": None,
                                                  "tool_calls": [call("get_weather", weather)]}], TOOLS_WEATHER,
         False),
        ("tool_call_string_args", [u("Weather?"), {"role": "assistant", "content": "",
                                                    "tool_calls": [call("get_weather", '{"city": "Oslo"}')]}],
         TOOLS_WEATHER, False),
        ("tool_call_with_content", [u("Weather?"), {"role": "assistant", "content": "Let me check.",
                                                     "tool_calls": [call("get_weather", weather)]}],
         TOOLS_WEATHER, False),
        ("tool_calls_two", [u("Both?"), {"role": "assistant", "content": "",
                                          "tool_calls": [call("get_weather", weather),
                                                         call("search", {"q": "x", "tags": ["a", "b"]})]}],
         TOOLS_MANY, False),
        ("tool_call_flat", [u("Weather?"), {"role": "assistant", "content": None,
                                             "tool_calls": [call("get_weather", {"city": "Rome"}, False)]}],
         TOOLS_WEATHER, False),
        ("tool_round_trip", [s("sys"), u("Weather in Paris?"),
                             {"role": "assistant", "content": None, "tool_calls": [call("get_weather", weather)]},
                             t('{"temp": 21.5, "sky": "clear"}')], TOOLS_WEATHER, True),
        ("tool_results_consecutive", [u("Both?"),
                                      {"role": "assistant", "content": None,
                                       "tool_calls": [call("get_weather", weather), call("search", {"q": "y"})]},
                                      t("result one"), t("result two"), t("result three"), a("Done.")],
         TOOLS_MANY, True),
        ("tool_first_message", [t("orphan result"), u("and then")], None, True),
        ("tool_last_message", [u("q"), {"role": "assistant", "content": None,
                                        "tool_calls": [call("search", {"q": "z"})]}, t("r")], TOOLS_MANY, False),
        ("args_escapes", [u("x"), {"role": "assistant", "content": None, "tool_calls": [call(
            "search", {"q": "line1\nline2\t\"quoted\" back\\slash \u0001 ctrl é 中 😀", "n": -3,
                       "f": 0.1, "g": 100000.0, "h": 1.5e-05, "i": True, "j": None, "k": [], "l": {}})]}],
         TOOLS_MANY, False),
        ("long_conversation", sum(([u(f"question {i}"), a(f"answer {i}")] for i in range(12)), []), None, True),
        ("content_list_is_dropped", [{"role": "user", "content": [{"type": "text", "text": "parts"}]}], None,
         True),
    ]
    return [{"name": n, "messages": m, "tools": tl, "add_generation_prompt": g} for n, m, tl, g in conv]


def record_chat(build_dir: str) -> None:
    import transformers
    from transformers import AutoTokenizer

    qwen = os.path.join(build_dir, "tokenizer-data", "qwen")
    tok = AutoTokenizer.from_pretrained(qwen)
    template = open(os.path.join(GOLDEN, "qwen3_next_instruct.jinja"), encoding="utf-8").read()
    assert tok.chat_template == template, "tokenizer_config.json does not carry the committed template"
    out = []
    for case in conversations():
        kwargs = {"tools": case["tools"]} if case["tools"] is not None else {}
        text = tok.apply_chat_template(case["messages"], tokenize=False,
                                       add_generation_prompt=case["add_generation_prompt"], **kwargs)
        ids = tok.encode(text, add_special_tokens=False)
        out.append(dict(case, text=text, ids=ids))
    path = os.path.join(GOLDEN, "chat_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"transformers_version": transformers.__version__, "cases": out}, f, ensure_ascii=False,
                  indent=1)
        f.write("\n")
    print(f"make_tokenizer_golden: {len(out)} conversations -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--record-chat", action="store_true")
    ap.add_argument("--update-manifest", action="store_true")
    args = ap.parse_args()
    if args.record_chat:
        record_chat(args.build_dir)
    else:
        build(args.build_dir, args.update_manifest)


if __name__ == "__main__":
    main()
