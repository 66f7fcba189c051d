// Streaming ids -> text: each call returns only whole UTF-8 characters, so a client never sees
// half a character; the concatenation of everything returned (Finish included) is exactly
// Tokenizer::Decode of all the ids, U+FFFD for invalid bytes included.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace nextserve::tokenizer {

class IncrementalDetokenizer {
 public:
  // `tokenizer` must outlive this object.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special = false)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}

  // The text completed by these ids (often empty mid-character). An id out of range is an
  // InvalidArgument error and leaves the state as it was before the call.
  absl::StatusOr<std::string> Add(absl::Span<const int32_t> ids);
  absl::StatusOr<std::string> Add(int32_t id) { return Add(absl::MakeConstSpan(&id, 1)); }

  // End of the stream: bytes of an unfinished character come out as one U+FFFD.
  std::string Finish();

  // Bytes held back waiting for the rest of a character.
  size_t pending_bytes() const { return decoder_.pending(); }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  Utf8StreamDecoder decoder_;
};

}  // namespace nextserve::tokenizer
