#include "tokenizer/detokenizer.h"

#include "absl/strings/str_cat.h"

namespace nextserve::tokenizer {

absl::StatusOr<std::string> IncrementalDetokenizer::Add(absl::Span<const int32_t> ids) {
  // Check first so that a bad id changes nothing.
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!tokenizer_.InRange(ids[i]) || tokenizer_.TokenBytes(ids[i]).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i],
                                                     " is not in the vocabulary (ids 0..",
                                                     tokenizer_.vocab_size() - 1, ")"));
    }
  }
  std::string out;
  for (int32_t id : ids) {
    if (skip_special_ && tokenizer_.IsSpecial(id)) continue;
    decoder_.Feed(tokenizer_.TokenBytes(id), &out);
  }
  return out;
}

std::string IncrementalDetokenizer::Finish() {
  std::string out;
  decoder_.Finish(&out);
  return out;
}

}  // namespace nextserve::tokenizer
