// TextStream on the serving tests' byte-level tokenizer, where ids 0..255 are the bytes themselves.
#include "router/text_stream.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "tests/integration/serving/cluster.h"
#include "tokenizer/utf8.h"

namespace nextserve::router {
namespace {

class TextStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir =
        (std::filesystem::temp_directory_path() / ("text_stream_test_" + std::to_string(getpid())))
            .string();
    std::filesystem::create_directories(dir);
    ASSERT_TRUE(nextserve::testing::WriteTestTokenizer(dir).ok());
    auto tok = tokenizer::Tokenizer::Load(dir);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    std::filesystem::remove_all(dir);
  }
  static void TearDownTestSuite() { delete tokenizer_; }

  struct Out {
    std::vector<std::string> pieces;  // one per Add, then Finish
    bool stopped = false;
    std::string stop;
    std::string text() const {
      std::string t;
      for (const auto& p : pieces) t += p;
      return t;
    }
  };
  // Feeds `text` one byte (= one token) at a time.
  static Out Feed(const std::string& text, std::vector<std::string> stops, bool match = true) {
    TextStream stream(*tokenizer_, std::move(stops));
    Out out;
    for (unsigned char c : text) {
      TextStream::Piece p = stream.Add(c, match);
      out.pieces.push_back(p.text);
      if (p.stopped) {
        out.stopped = true;
        out.stop = p.stop;
      }
    }
    TextStream::Piece p = stream.Finish(match);
    out.pieces.push_back(p.text);
    if (p.stopped) {
      out.stopped = true;
      out.stop = p.stop;
    }
    return out;
  }

  static tokenizer::Tokenizer* tokenizer_;
};
tokenizer::Tokenizer* TextStreamTest::tokenizer_ = nullptr;

TEST_F(TextStreamTest, WithoutStopsReleasesWholeCharactersOnly) {
  const std::string text = "h\xc3\xa9llo \xe2\x9c\x93 w\xf0\x9f\x98\x80rld";  // é ✓ 😀
  Out out = Feed(text, {});
  EXPECT_EQ(out.text(), text);
  EXPECT_FALSE(out.stopped);
  for (const std::string& piece : out.pieces)
    EXPECT_TRUE(tokenizer::ValidateUtf8(piece).ok()) << piece;
}

TEST_F(TextStreamTest, StopAcrossTokensEndsTheTextBeforeIt) {
  Out out = Feed("abcdefcd", {"cd"});
  EXPECT_EQ(out.text(), "ab");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.stop, "cd");
}

TEST_F(TextStreamTest, PartialMatchIsHeldBackUntilItFails) {
  Out out = Feed("abcx", {"cd"});
  EXPECT_EQ(out.text(), "abcx");
  ASSERT_EQ(out.pieces.size(), 5u);
  EXPECT_EQ(out.pieces[2], "");    // "c" might start "cd"
  EXPECT_EQ(out.pieces[3], "cx");  // it does not
}

TEST_F(TextStreamTest, HeldTextIsReleasedAtTheEnd) {
  Out out = Feed("abc", {"cd"});
  EXPECT_EQ(out.text(), "abc");
  EXPECT_EQ(out.pieces.back(), "c");
  EXPECT_FALSE(out.stopped);
}

TEST_F(TextStreamTest, EarliestMatchWins) {
  EXPECT_EQ(Feed("abcdef", {"def", "bcd"}).text(), "a");
  // A stop string ends the text as soon as it is complete, even if a longer one could follow.
  Out first = Feed("xabcd", {"abc", "ab"});
  EXPECT_EQ(first.text(), "x");
  EXPECT_EQ(first.stop, "ab");
}

TEST_F(TextStreamTest, MultiByteStopString) {
  Out out = Feed("caf\xc3\xa9 au lait", {"\xc3\xa9 a"});
  EXPECT_EQ(out.text(), "caf");
}

TEST_F(TextStreamTest, NoMatchingBeforeMinTokens) {
  EXPECT_EQ(Feed("abcd", {"bc"}, /*match=*/false).text(), "abcd");
}

TEST_F(TextStreamTest, UnknownAndSpecialIdsAddNoText) {
  TextStream stream(*tokenizer_, {});
  EXPECT_EQ(stream.Add('a').text, "a");
  EXPECT_EQ(stream.Add(100000).text, "");  // beyond the tokenizer (embedding padding)
  EXPECT_EQ(stream.Add(nextserve::testing::kTestEos).text, "");  // <|im_end|> is special
  EXPECT_EQ(stream.Add('b').text, "b");
}

TEST_F(TextStreamTest, UnfinishedCharacterEndsAsReplacement) {
  Out out = Feed("ab\xe2\x9c", {});
  EXPECT_EQ(out.text(), "ab\xef\xbf\xbd");
}

TEST_F(TextStreamTest, NothingAfterAStop) {
  TextStream stream(*tokenizer_, {"b"});
  EXPECT_EQ(stream.Add('a').text, "a");
  EXPECT_TRUE(stream.Add('b').stopped);
  EXPECT_EQ(stream.Add('c').text, "");
  EXPECT_EQ(stream.Finish().text, "");
}

}  // namespace
}  // namespace nextserve::router
