// UTF-8 checks and the lossy decoding the reference uses for detokenized bytes.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace nextserve::tokenizer {

// OK, or InvalidArgument naming the byte offset of the first ill-formed sequence.
absl::Status ValidateUtf8(std::string_view text);

// Turns a byte stream into UTF-8 text the way Rust's String::from_utf8_lossy and Python's
// bytes.decode(errors="replace") do (HF tokenizers' ByteLevel decoder is the former): each
// maximal ill-formed subpart becomes one U+FFFD. Bytes can arrive in any split; only complete
// characters are appended to the output, so a stream never splits a character.
class Utf8StreamDecoder {
 public:
  // Appends the characters completed by `bytes` to `out`.
  void Feed(std::string_view bytes, std::string* out);
  // End of stream: a pending incomplete sequence becomes one U+FFFD.
  void Finish(std::string* out);
  // Bytes of an incomplete character held back (0..3).
  size_t pending() const { return pending_len_; }

 private:
  void FeedByte(unsigned char b, std::string* out);
  unsigned char pending_[4] = {};
  size_t pending_len_ = 0;
  size_t need_ = 0;  // total length of the character being assembled
};

}  // namespace nextserve::tokenizer
