// Unicode NFC normalisation (ICU), the normaliser of the Qwen tokenizer.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nextserve::tokenizer {

class NfcNormalizer {
 public:
  static absl::StatusOr<NfcNormalizer> Create();

  // Returns `text` (valid UTF-8) in NFC: a view of `text` itself when it already is (the usual
  // case, no copy), else a view of `*storage`.
  absl::StatusOr<std::string_view> Normalize(std::string_view text, std::string* storage) const;

 private:
  // An icu::Normalizer2, owned by ICU for the life of the process (opaque here so that the
  // header does not pull in ICU's versioned namespace).
  const void* nfc_ = nullptr;
};

}  // namespace nextserve::tokenizer
