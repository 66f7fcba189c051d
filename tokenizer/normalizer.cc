#include "tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

#include "absl/strings/str_cat.h"

namespace nextserve::tokenizer {

absl::StatusOr<NfcNormalizer> NfcNormalizer::Create() {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status) || nfc == nullptr) {
    return absl::InternalError(absl::StrCat("ICU: no NFC normaliser: ", u_errorName(status)));
  }
  NfcNormalizer n;
  n.nfc_ = nfc;
  return n;
}

absl::StatusOr<std::string_view> NfcNormalizer::Normalize(std::string_view text,
                                                          std::string* storage) const {
  // ASCII is always NFC; checking it first skips ICU for most code and English text.
  size_t i = 0;
  while (i < text.size() && static_cast<unsigned char>(text[i]) < 0x80) ++i;
  if (i == text.size()) return text;
  const auto* nfc = static_cast<const icu::Normalizer2*>(nfc_);
  UErrorCode status = U_ZERO_ERROR;
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  if (nfc->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return text;
  status = U_ZERO_ERROR;
  storage->clear();
  icu::StringByteSink<std::string> sink(storage, static_cast<int32_t>(text.size()));
  nfc->normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) {
    return absl::InternalError(
        absl::StrCat("ICU: NFC normalisation failed: ", u_errorName(status)));
  }
  return std::string_view(*storage);
}

}  // namespace nextserve::tokenizer
