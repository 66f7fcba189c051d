// libFuzzer target: Encode on arbitrary bytes. Invalid UTF-8 must be a clean InvalidArgument;
// valid text must encode, decode to well-formed UTF-8, and re-encode to the same ids.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "fuzz_tokenizer.h"
#include "tokenizer/utf8.h"

using nextserve::tokenizer::ValidateUtf8;

// Load the tokenizer (seconds for the Qwen vocabulary under ASan) before libFuzzer starts timing
// inputs, so the first input is not reported as a timeout.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  nextserve::tokenizer::fuzz::FuzzTokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& tok = nextserve::tokenizer::fuzz::FuzzTokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool valid = ValidateUtf8(text).ok();
  for (bool parse_special : {false, true}) {
    auto ids = tok.Encode(text, {.parse_special = parse_special});
    if (!valid) {
      if (ids.ok() || ids.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
      continue;
    }
    if (!ids.ok()) std::abort();
    auto back = tok.Decode(*ids);
    if (!back.ok() || !ValidateUtf8(*back).ok()) std::abort();
    // decode(encode(x)) is x up to NFC, which encodes to the same ids.
    auto again = tok.Encode(*back, {.parse_special = parse_special});
    if (!again.ok() || *again != *ids) std::abort();
    bool ascii = true;
    for (char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
    if (ascii && *back != text) std::abort();  // ASCII is NFC: exact round trip
  }
  return 0;
}
