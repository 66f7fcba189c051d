// libFuzzer target: the incremental detokenizer on arbitrary id streams cut into arbitrary
// chunks. Every chunk is well-formed UTF-8, bad ids are rejected without changing the state, and
// the chunks add up to Decode of the valid ids.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_tokenizer.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/utf8.h"

using nextserve::tokenizer::IncrementalDetokenizer;
using nextserve::tokenizer::ValidateUtf8;

// Load the tokenizer (seconds for the Qwen vocabulary under ASan) before libFuzzer starts timing
// inputs, so the first input is not reported as a timeout.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  nextserve::tokenizer::fuzz::FuzzTokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& tok = nextserve::tokenizer::fuzz::FuzzTokenizer();
  if (size < 1) return 0;
  const bool skip_special = data[0] & 1;
  // Three bytes per id: a chunk length (0..3) and an id in [-8, vocab + 8): mostly small ids
  // (single bytes, the raw material of broken UTF-8), sometimes out of range.
  std::vector<int32_t> valid;
  IncrementalDetokenizer detok(tok, skip_special);
  std::string streamed;
  std::vector<int32_t> chunk;
  for (size_t i = 1; i + 3 <= size; i += 3) {
    const int chunk_len = data[i] & 3;
    uint16_t raw;
    std::memcpy(&raw, data + i + 1, 2);
    int32_t id = (data[i] & 4)
                     ? static_cast<int32_t>(raw % 300)
                     : static_cast<int32_t>(int64_t{raw} * (tok.vocab_size() + 16) / 65536 - 8);
    chunk.push_back(id);
    if (static_cast<int>(chunk.size()) <= chunk_len) continue;
    bool ok = true;
    for (int32_t c : chunk) ok &= tok.InRange(c);
    const size_t pending = detok.pending_bytes();
    auto out = detok.Add(chunk);
    if (ok != out.ok()) std::abort();
    if (!ok) {
      if (detok.pending_bytes() != pending) std::abort();
    } else {
      if (!ValidateUtf8(*out).ok()) std::abort();
      streamed += *out;
      valid.insert(valid.end(), chunk.begin(), chunk.end());
    }
    chunk.clear();
  }
  streamed += detok.Finish();
  auto whole = tok.Decode(valid, skip_special);
  if (!whole.ok() || *whole != streamed) std::abort();
  return 0;
}
