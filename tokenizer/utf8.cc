#include "tokenizer/utf8.h"

#include "absl/strings/str_cat.h"

namespace nextserve::tokenizer {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the character a lead byte starts, 0 if it cannot start one (Unicode Table 3-7).
size_t LeadLength(unsigned char b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// Whether `b` may follow `lead` as the second byte (the ranges that exclude overlongs,
// surrogates and code points above U+10FFFF).
bool SecondByteOk(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return b >= 0x80 && b <= 0xBF;
  }
}

}  // namespace

absl::Status ValidateUtf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    const unsigned char b = p[i];
    if (b < 0x80) {
      ++i;
      continue;
    }
    const size_t len = LeadLength(b);
    bool ok = len != 0 && i + len <= n && SecondByteOk(b, p[i + 1]);
    for (size_t k = 2; ok && k < len; ++k) ok = (p[i + k] & 0xC0) == 0x80;
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("input is not valid UTF-8 (ill-formed sequence at byte ", i, ")"));
    }
    i += len;
  }
  return absl::OkStatus();
}

void Utf8StreamDecoder::Feed(std::string_view bytes, std::string* out) {
  size_t i = 0;
  // Plain ASCII with nothing pending is copied in bulk.
  while (i < bytes.size()) {
    if (pending_len_ == 0 && static_cast<unsigned char>(bytes[i]) < 0x80) {
      size_t j = i;
      while (j < bytes.size() && static_cast<unsigned char>(bytes[j]) < 0x80) ++j;
      out->append(bytes.data() + i, j - i);
      i = j;
      continue;
    }
    FeedByte(static_cast<unsigned char>(bytes[i++]), out);
  }
}

void Utf8StreamDecoder::FeedByte(unsigned char b, std::string* out) {
  if (pending_len_ == 0) {
    const size_t len = LeadLength(b);
    if (len == 1) {
      out->push_back(static_cast<char>(b));
    } else if (len == 0) {
      out->append(kReplacement);
    } else {
      pending_[0] = b;
      pending_len_ = 1;
      need_ = len;
    }
    return;
  }
  const bool ok = pending_len_ == 1 ? SecondByteOk(pending_[0], b) : (b & 0xC0) == 0x80;
  if (!ok) {
    // The pending bytes are a maximal ill-formed subpart: one U+FFFD, then `b` starts afresh.
    out->append(kReplacement);
    pending_len_ = 0;
    FeedByte(b, out);
    return;
  }
  pending_[pending_len_++] = b;
  if (pending_len_ == need_) {
    out->append(reinterpret_cast<const char*>(pending_), pending_len_);
    pending_len_ = 0;
  }
}

void Utf8StreamDecoder::Finish(std::string* out) {
  if (pending_len_ != 0) out->append(kReplacement);
  pending_len_ = 0;
}

}  // namespace nextserve::tokenizer
