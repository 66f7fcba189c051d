// The real Qwen vocabulary against Hugging Face tokenizers, id for id, on the > 2 MB corpus.
// Data: <build>/tokenizer-data/{qwen,corpus,golden}, made by tools/make_tokenizer_golden.py (run by
// scripts/setup.sh). Skipped, saying how to make it, when that data is absent.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/chat_template.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace nextserve::tokenizer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Ids ReadIds(const fs::path& p) {
  const std::string raw = ReadAll(p);
  Ids ids(raw.size() / 4);
  std::memcpy(ids.data(), raw.data(), ids.size() * 4);  // int32 little-endian, as written
  return ids;
}

fs::path DataDir() {
  if (const char* d = std::getenv("NEXTSERVE_TOKENIZER_DATA")) return d;
  const char* bin = std::getenv("NEXTSERVE_BIN_DIR");
  return fs::path(bin ? bin : "bin").parent_path() / "tokenizer-data";
}

std::string Where(const Ids& want, const Ids& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  std::ostringstream s;
  s << "first difference at id " << i << " of " << want.size() << " (got " << got.size() << "):";
  for (size_t k = i; k < i + 6 && k < want.size(); ++k) s << " want " << want[k];
  for (size_t k = i; k < i + 6 && k < got.size(); ++k) s << " got " << got[k];
  return s.str();
}

class QwenGolden : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path dir = DataDir();
    if (!fs::exists(dir / "golden" / "manifest.json")) return;
    auto tok = Tokenizer::Load((dir / "qwen").string());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    manifest_ = new json(json::parse(ReadAll(dir / "golden" / "manifest.json")));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete manifest_;
    tokenizer_ = nullptr;
    manifest_ = nullptr;
  }
  void SetUp() override {
    if (tokenizer_ == nullptr) {
      GTEST_SKIP() << "no reference data in " << DataDir()
                   << "; make it with: python3 tools/make_tokenizer_golden.py --build-dir <build>";
    }
  }
  template <typename Fn>
  void ForEachDocument(Fn fn) {
    const fs::path dir = DataDir();
    for (const json& doc : (*manifest_)["documents"]) {
      const std::string name = doc["name"];
      SCOPED_TRACE(name);
      fn(doc, name, ReadAll(dir / "corpus" / (name + ".txt")), dir / "golden" / name);
    }
  }
  static const Tokenizer* tokenizer_;
  static json* manifest_;
};
const Tokenizer* QwenGolden::tokenizer_ = nullptr;
json* QwenGolden::manifest_ = nullptr;

TEST_F(QwenGolden, VocabularyMatchesTheSpec) {
  EXPECT_EQ(tokenizer_->vocab_size(), 151669);
  ASSERT_EQ(tokenizer_->added_tokens().size(), 26u);
  const std::pair<int32_t, const char*> spec[] = {
      {151643, "<|endoftext|>"},   {151644, "<|im_start|>"}, {151645, "<|im_end|>"},
      {151657, "<tool_call>"},     {151658, "</tool_call>"}, {151662, "<|fim_pad|>"},
      {151665, "<tool_response>"}, {151667, "<think>"},      {151668, "</think>"}};
  for (const auto& [id, text] : spec) EXPECT_EQ(tokenizer_->TokenToId(text), id) << text;
  EXPECT_TRUE(tokenizer_->IsSpecial(151644));
  EXPECT_FALSE(tokenizer_->IsSpecial(151657));
  EXPECT_EQ(*tokenizer_->Encode("Hello world"), (Ids{9707, 1879}));
}

TEST_F(QwenGolden, CorpusIdForIdWithSpecialTextParsed) {
  size_t bytes = 0, docs = 0;
  ForEachDocument(
      [&](const json& doc, const std::string&, const std::string& text, const fs::path& g) {
        auto ids = tokenizer_->Encode(text, {.parse_special = true});
        ASSERT_TRUE(ids.ok()) << ids.status();
        const Ids want = ReadIds(g.string() + ".ids");
        EXPECT_TRUE(*ids == want) << Where(want, *ids);
        bytes += text.size();
        ++docs;
      });
  EXPECT_GE(bytes, 2u << 20);
  EXPECT_GE(docs, 30u);
}

TEST_F(QwenGolden, CorpusIdForIdWithSpecialTextNotParsed) {
  ForEachDocument([&](const json&, const std::string&, const std::string& text, const fs::path& g) {
    auto ids = tokenizer_->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    const Ids want = ReadIds(g.string() + ".ids_plain");
    EXPECT_TRUE(*ids == want) << Where(want, *ids);
  });
}

TEST_F(QwenGolden, SlowFilesGiveTheSameIds) {
  const fs::path q = DataDir() / "qwen";
  auto slow =
      Tokenizer::FromVocabAndMerges((q / "vocab.json").string(), (q / "merges.txt").string(),
                                    (q / "tokenizer_config.json").string());
  ASSERT_TRUE(slow.ok()) << slow.status();
  EXPECT_EQ((*slow)->vocab_size(), tokenizer_->vocab_size());
  ForEachDocument([&](const json&, const std::string&, const std::string& text, const fs::path& g) {
    auto ids = (*slow)->Encode(text, {.parse_special = true});
    ASSERT_TRUE(ids.ok()) << ids.status();
    const Ids want = ReadIds(g.string() + ".ids");
    EXPECT_TRUE(*ids == want) << Where(want, *ids);
  });
}

// decode(encode(x)) is x, or NFC(x) where x was not in NFC (HF says the same).
TEST_F(QwenGolden, RoundTrip) {
  ForEachDocument(
      [&](const json& doc, const std::string&, const std::string& text, const fs::path& g) {
        const Ids ids = ReadIds(g.string() + ".ids");
        auto back = tokenizer_->Decode(ids);
        ASSERT_TRUE(back.ok()) << back.status();
        const std::string want =
            doc["roundtrip_is_input"].get<bool>() ? text : ReadAll(g.string() + ".decoded");
        EXPECT_TRUE(*back == want) << "decoded text differs";
      });
}

// Streaming one id at a time gives the whole decode, in well-formed pieces.
TEST_F(QwenGolden, IncrementalDetokenizerEqualsDecode) {
  ForEachDocument([&](const json&, const std::string&, const std::string&, const fs::path& g) {
    const Ids ids = ReadIds(g.string() + ".ids");
    IncrementalDetokenizer detok(*tokenizer_);
    std::string streamed;
    for (int32_t id : ids) {
      auto piece = detok.Add(id);
      ASSERT_TRUE(piece.ok()) << piece.status();
      ASSERT_TRUE(ValidateUtf8(*piece).ok());
      streamed += *piece;
    }
    streamed += detok.Finish();
    EXPECT_TRUE(streamed == *tokenizer_->Decode(ids));
  });
}

// Random ids (many of them broken UTF-8) decode to HF's text, U+FFFD for U+FFFD, whole or
// streamed.
TEST_F(QwenGolden, DecodeMatchesHfOnInvalidBytes) {
  const json cases = json::parse(ReadAll(DataDir() / "golden" / "decode_cases.json"));
  ASSERT_GE(cases.size(), 100u);
  for (const json& c : cases) {
    const Ids ids = c["ids"].get<Ids>();
    const bool skip = c["skip_special"];
    auto text = tokenizer_->Decode(ids, skip);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["text"].get<std::string>()) << c["ids"].dump();
    IncrementalDetokenizer detok(*tokenizer_, skip);
    std::string streamed;
    for (int32_t id : ids) streamed += *detok.Add(id);
    streamed += detok.Finish();
    EXPECT_EQ(streamed, *text);
  }
}

TEST_F(QwenGolden, ChatTemplateIds) {
  const char* root = std::getenv("NEXTSERVE_SOURCE_DIR");
  const json data = json::parse(
      ReadAll(fs::path(root ? root : ".") / "tests" / "golden" / "tokenizer" / "chat_cases.json"));
  for (const json& c : data["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    auto ids = tokenizer_->Encode(c["text"].get<std::string>(), {.parse_special = true});
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, c["ids"].get<Ids>());
  }
}

TEST_F(QwenGolden, VeryLargeInputs) {
  // 8 MiB of one repeated pre-token, one 1 MiB word and 1 MiB of spaces: linear enough, no stack
  // overflow in the regex, same ids as the short form repeated.
  std::string big;
  for (int i = 0; i < (8 << 20) / 6; ++i) big += "hello ";
  auto ids = tokenizer_->Encode(big);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->size(), (8u << 20) / 6 + 1);  // hello, " hello" x (n - 1), " "
  auto word = tokenizer_->Encode(std::string(1 << 20, 'a'));
  ASSERT_TRUE(word.ok());
  EXPECT_EQ(*tokenizer_->Decode(*word), std::string(1 << 20, 'a'));
  auto spaces = tokenizer_->Encode(std::string(1 << 20, ' ') + "x");
  ASSERT_TRUE(spaces.ok()) << spaces.status();
  EXPECT_EQ(*tokenizer_->Decode(*spaces), std::string(1 << 20, ' ') + "x");
}

}  // namespace
}  // namespace nextserve::tokenizer
