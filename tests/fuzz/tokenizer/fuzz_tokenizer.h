// The tokenizer the fuzz targets run: the real Qwen one when its files exist (made by
// tools/make_tokenizer_golden.py; NEXTSERVE_FUZZ_MODEL overrides the directory), else a small
// byte-level one written to a temporary file, so that the targets run anywhere.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"

namespace nextserve::tokenizer::fuzz {

inline const Tokenizer& FuzzTokenizer() {
  static const Tokenizer* tok = [] {
    const char* env = std::getenv("NEXTSERVE_FUZZ_MODEL");
    std::string dir = env ? env : NEXTSERVE_FUZZ_DEFAULT_MODEL;
    auto loaded = Tokenizer::Load(dir);
    if (!loaded.ok()) {
      std::fprintf(stderr, "fuzz: %s; using a small built-in vocabulary\n",
                   std::string(loaded.status().message()).c_str());
      std::string vocab = "{";
      // Bytes spelled as themselves where printable (enough for a valid byte-level vocabulary:
      // the spelling of other bytes is GPT-2's 256 + n).
      int n = 0;
      for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        const int cp = printable ? b : 256 + n++;
        char buf[32];
        std::snprintf(buf, sizeof(buf), "\"\\u%04x\": %d,", cp, b);
        vocab += buf;
      }
      vocab += "\"\\u0120t\": 256, \"he\": 257, \"\\u0120the\": 258}";
      const std::string json =
          std::string(
              R"({"added_tokens": [{"id": 259, "content": "<|im_start|>", "special": true},)"
              R"({"id": 260, "content": "<think>", "special": false}],)"
              R"("normalizer": {"type": "NFC"}, "decoder": {"type": "ByteLevel"},)"
              R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},)"
              R"("model": {"type": "BPE", "merges": ["\u0120 t", "h e", "\u0120t he"], "vocab": )") +
          vocab + "}}";
      const std::string path = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
                               "/nextserve_fuzz_tokenizer.json";
      std::ofstream(path) << json;
      loaded = Tokenizer::FromTokenizerJson(path);
      if (!loaded.ok()) {
        std::fprintf(stderr, "fuzz: %s\n", std::string(loaded.status().message()).c_str());
        std::abort();
      }
    }
    return loaded->release();
  }();
  return *tok;
}

}  // namespace nextserve::tokenizer::fuzz
