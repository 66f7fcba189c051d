#include "tokenizer/utf8.h"

#include <random>
#include <string>

#include "gtest/gtest.h"

namespace nextserve::tokenizer {
namespace {

std::string DecodeAll(std::string_view bytes) {
  Utf8StreamDecoder d;
  std::string out;
  d.Feed(bytes, &out);
  d.Finish(&out);
  return out;
}

TEST(ValidateUtf8, AcceptsWellFormed) {
  EXPECT_TRUE(ValidateUtf8("").ok());
  EXPECT_TRUE(ValidateUtf8("plain ascii, long enough for the 8-byte path").ok());
  EXPECT_TRUE(ValidateUtf8("é 中 😀 \xF4\x8F\xBF\xBF \xED\x9F\xBF").ok());
}

TEST(ValidateUtf8, RejectsIllFormedAndNamesTheOffset) {
  for (std::string_view bad :
       {"\x80", "ab\xC0\x80", "\xE0\x80\x80", "\xED\xA0\x80" /* surrogate */,
        "\xF4\x90\x80\x80" /* > U+10FFFF */, "\xF5\x80\x80\x80", "\xE4\xB8", "\xFF"}) {
    absl::Status s = ValidateUtf8(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << testing::PrintToString(bad);
  }
  EXPECT_NE(ValidateUtf8("abcdefgh\xC3").message().find("byte 8"), std::string::npos);
}

// Unicode 15, §3.9, Table 3-8: U+FFFD for each maximal subpart. Python's
// bytes.decode(errors="replace") and Rust's from_utf8_lossy give the same.
TEST(Utf8StreamDecoder, MaximalSubpartsAsInTheStandard) {
  EXPECT_EQ(DecodeAll("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd");
  EXPECT_EQ(DecodeAll("\xC0\xAF"), "\uFFFD\uFFFD");            // overlong lead
  EXPECT_EQ(DecodeAll("\xE0\x80\xAF"), "\uFFFD\uFFFD\uFFFD");  // E0 needs A0..BF next
  EXPECT_EQ(DecodeAll("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  EXPECT_EQ(DecodeAll("\xF4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(DecodeAll("\xE4\xB8"), "\uFFFD");  // truncated at the end
  EXPECT_EQ(DecodeAll("\xE4\xB8x"), "\uFFFDx");
  EXPECT_EQ(DecodeAll("\xF0\x9F\x98\x80"), "😀");
}

TEST(Utf8StreamDecoder, HoldsBackIncompleteCharacters) {
  Utf8StreamDecoder d;
  std::string out;
  d.Feed("a\xF0\x9F", &out);
  EXPECT_EQ(out, "a");
  EXPECT_EQ(d.pending(), 2u);
  d.Feed("\x98", &out);
  EXPECT_EQ(out, "a");
  d.Feed("\x80!", &out);
  EXPECT_EQ(out, "a😀!");
  EXPECT_EQ(d.pending(), 0u);
}

// However the bytes are split, the stream gives the whole-buffer result, and every chunk it
// emits is well-formed on its own.
TEST(Utf8StreamDecoder, SplitInvariantOnRandomBytes) {
  std::mt19937 rng(1);
  const std::string alphabet =
      "a\x80\xBF\xC2\xDF\xE0\xE4\xED\xEF\xF0\xF4\xF5\xA0\x9F\x90\x8F\xB8\xC0";
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes;
    for (int i = rng() % 24; i > 0; --i) bytes.push_back(alphabet[rng() % alphabet.size()]);
    const std::string whole = DecodeAll(bytes);
    ASSERT_TRUE(ValidateUtf8(whole).ok());
    Utf8StreamDecoder d;
    std::string joined;
    for (size_t pos = 0; pos < bytes.size();) {
      const size_t len = std::min<size_t>(1 + rng() % 4, bytes.size() - pos);
      std::string chunk;
      d.Feed(std::string_view(bytes).substr(pos, len), &chunk);
      ASSERT_TRUE(ValidateUtf8(chunk).ok());
      joined += chunk;
      pos += len;
    }
    d.Finish(&joined);
    ASSERT_EQ(joined, whole) << testing::PrintToString(bytes);
  }
}

}  // namespace
}  // namespace nextserve::tokenizer
