// The tokenizer on a small hand-made byte-level vocabulary: file formats, added tokens, errors.
// Exactness on the real Qwen vocabulary is qwen_golden_test.cc.
#include "tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/detokenizer.h"

namespace nextserve::tokenizer {
namespace {

using json = nlohmann::ordered_json;
using Ids = std::vector<int32_t>;

// GPT-2's byte -> character spelling.
std::string ByteSpelling(int b) {
  static std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int n = 0;
    for (int x = 0; x < 256; ++x) {
      const bool printable =
          (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
      const int cp = printable ? x : 256 + n++;
      std::string s;
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      t[x] = s;
    }
    return t;
  }();
  return table[b];
}

std::string Spell(std::string_view bytes) {
  std::string s;
  for (unsigned char b : bytes) s += ByteSpelling(b);
  return s;
}

const char* kPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Vocabulary: 256 bytes, then merges he, ll, hell, hello, " w", " wo", or, " wor", ld, " world".
struct Fixture {
  json vocab = json::object();
  std::vector<std::pair<std::string, std::string>> merges;
  Fixture() {
    for (int b = 0; b < 256; ++b) vocab[ByteSpelling(b)] = b;
    for (auto [a, b] : std::vector<std::pair<std::string, std::string>>{{"h", "e"},
                                                                        {"l", "l"},
                                                                        {"he", "ll"},
                                                                        {"hell", "o"},
                                                                        {" ", "w"},
                                                                        {" w", "o"},
                                                                        {"o", "r"},
                                                                        {" wo", "r"},
                                                                        {"l", "d"},
                                                                        {" wor", "ld"}}) {
      merges.emplace_back(Spell(a), Spell(b));
      vocab[Spell(a + b)] = static_cast<int>(vocab.size());
    }
  }
  json Added() const {
    return json::array({
        {{"id", 300}, {"content", "<|im_start|>"}, {"special", true}, {"normalized", false}},
        {{"id", 301}, {"content", "<|im_end|>"}, {"special", true}, {"normalized", false}},
        {{"id", 302}, {"content", "<tool_call>"}, {"special", false}, {"normalized", false}},
    });
  }
  json TokenizerJson(bool string_merges) const {
    json m = json::array();
    for (const auto& [a, b] : merges)
      m.push_back(string_merges ? json(a + " " + b) : json::array({a, b}));
    return {{"version", "1.0"},
            {"added_tokens", Added()},
            {"normalizer", {{"type", "NFC"}}},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               json::array(
                   {{{"type", "Split"},
                     {"pattern", {{"Regex", kPattern}}},
                     {"behavior", "Isolated"},
                     {"invert", false}},
                    {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model",
             {{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", nullptr},
              {"vocab", vocab},
              {"merges", m}}}};
  }
};

class TokenizerFiles : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(testing::TempDir()) /
           ("tok_" + std::string(testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::create_directories(dir_);
  }
  std::string Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return (dir_ / name).string();
  }
  std::filesystem::path dir_;
  Fixture fx_;
};

TEST_F(TokenizerFiles, BothMergeSpellingsAndTheSlowFilesAgree) {
  const std::string list_form = Write("list.json", fx_.TokenizerJson(false).dump());
  const std::string string_form = Write("string.json", fx_.TokenizerJson(true).dump());
  std::string merges_txt = "#version: 0.2\n";
  for (const auto& [a, b] : fx_.merges) merges_txt += a + " " + b + "\n";
  json config = {{"added_tokens_decoder", json::object()}};
  for (const json& a : fx_.Added())
    config["added_tokens_decoder"][std::to_string(a["id"].get<int>())] = a;
  const std::string vocab = Write("vocab.json", fx_.vocab.dump());
  const std::string merges = Write("merges.txt", merges_txt);
  const std::string cfg = Write("tokenizer_config.json", config.dump());

  auto a = Tokenizer::FromTokenizerJson(list_form);
  auto b = Tokenizer::FromTokenizerJson(string_form);
  auto c = Tokenizer::FromVocabAndMerges(vocab, merges, cfg);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*a)->vocab_size(), 303);
  for (std::string text :
       {"hello world", "hello  world\n\nhello", "<|im_start|>hello<tool_call>", "héllo 123"}) {
    EncodeOptions special{.parse_special = true};
    auto ia = (*a)->Encode(text, special), ib = (*b)->Encode(text, special),
         ic = (*c)->Encode(text, special);
    ASSERT_TRUE(ia.ok() && ib.ok() && ic.ok());
    EXPECT_EQ(*ia, *ib) << text;
    EXPECT_EQ(*ia, *ic) << text;
    auto back = (*a)->Decode(*ia);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, text);
  }
  const int32_t hello = fx_.vocab[Spell("hello")], world = fx_.vocab[Spell(" world")];
  EXPECT_EQ(*(*a)->Encode("hello world"), (Ids{hello, world}));
  EXPECT_EQ((*a)->TokenToId("<|im_end|>"), 301);
  EXPECT_EQ((*a)->TokenToId(Spell(" world")), world);
  EXPECT_TRUE((*a)->IsSpecial(300));
  EXPECT_FALSE((*a)->IsSpecial(302));
}

TEST_F(TokenizerFiles, SpecialTokenTextIsParsedOnlyWhenAsked) {
  auto tok = Tokenizer::FromTokenizerJson(Write("t.json", fx_.TokenizerJson(false).dump()));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = "<|im_start|>hello<|im_end|><tool_call>";
  auto parsed = (*tok)->Encode(text, {.parse_special = true});
  auto plain = (*tok)->Encode(text);
  ASSERT_TRUE(parsed.ok() && plain.ok());
  const int32_t hello = fx_.vocab[Spell("hello")];
  EXPECT_EQ(*parsed, (Ids{300, hello, 301, 302}));
  // Not parsed: the special text is ordinary text; the non-special <tool_call> still matches.
  EXPECT_EQ(std::count(plain->begin(), plain->end(), 300), 0);
  EXPECT_EQ(plain->back(), 302);
  EXPECT_EQ(*(*tok)->Decode(*plain), text);
  EXPECT_EQ(*(*tok)->Decode(*parsed, /*skip_special=*/true), "hello<tool_call>");
}

TEST_F(TokenizerFiles, NfcBeforeSplitting) {
  auto tok = Tokenizer::FromTokenizerJson(Write("t.json", fx_.TokenizerJson(false).dump()));
  ASSERT_TRUE(tok.ok());
  auto composed = (*tok)->Encode("caf\xC3\xA9");     // é
  auto decomposed = (*tok)->Encode("cafe\xCC\x81");  // e + combining acute
  ASSERT_TRUE(composed.ok() && decomposed.ok());
  EXPECT_EQ(*composed, *decomposed);
}

TEST_F(TokenizerFiles, BadInputIsAClearError) {
  auto tok = Tokenizer::FromTokenizerJson(Write("t.json", fx_.TokenizerJson(false).dump()),
                                          {.max_input_bytes = 1000});
  ASSERT_TRUE(tok.ok());
  auto bad_utf8 = (*tok)->Encode("ok \xC3\x28");
  EXPECT_EQ(bad_utf8.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_utf8.status().message().find("UTF-8"), std::string::npos);
  auto too_big = (*tok)->Encode(std::string(1001, 'a'));
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.status().message().find("1001 bytes"), std::string::npos);
  auto empty = (*tok)->Encode("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  for (int32_t id : {-1, 303, 1 << 30}) {
    auto d = (*tok)->Decode(Ids{1, id});
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(d.status().message().find("position 1"), std::string::npos) << d.status();
  }
  EXPECT_EQ(*(*tok)->Decode(Ids{}), "");
}

TEST_F(TokenizerFiles, BadFilesNameTheProblem) {
  EXPECT_EQ(Tokenizer::Load((dir_ / "nowhere").string()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Tokenizer::FromTokenizerJson(Write("bad.json", "{not json")).status().code(),
            absl::StatusCode::kInvalidArgument);
  json j = fx_.TokenizerJson(false);
  j["model"]["merges"].push_back(json::array({"zz", "q"}));
  auto unknown = Tokenizer::FromTokenizerJson(Write("unknown.json", j.dump()));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("merge 10"), std::string::npos) << unknown.status();
  j = fx_.TokenizerJson(false);
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_EQ(Tokenizer::FromTokenizerJson(Write("lower.json", j.dump())).status().code(),
            absl::StatusCode::kUnimplemented);
  j = fx_.TokenizerJson(false);
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  auto regex = Tokenizer::FromTokenizerJson(Write("regex.json", j.dump()));
  EXPECT_EQ(regex.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(regex.status().message().find("regex"), std::string::npos);
}

TEST_F(TokenizerFiles, DetokenizerNeverSplitsACharacter) {
  auto tok = Tokenizer::FromTokenizerJson(Write("t.json", fx_.TokenizerJson(false).dump()));
  ASSERT_TRUE(tok.ok());
  IncrementalDetokenizer detok(**tok);
  EXPECT_EQ(*detok.Add(0xE4), "");  // 中 = E4 B8 AD, one byte token each
  EXPECT_EQ(*detok.Add(0xB8), "");
  EXPECT_EQ(detok.pending_bytes(), 2u);
  EXPECT_FALSE(detok.Add(999).ok());  // a bad id changes nothing
  EXPECT_EQ(*detok.Add(0xAD), "中");
  EXPECT_EQ(*detok.Add(Ids{'o', 'k', 0xF0}), "ok");
  EXPECT_EQ(detok.Finish(), "\uFFFD");  // the stream ended inside a character
  EXPECT_EQ(*(*tok)->Decode(Ids{0xE4, 0xB8, 0xAD, 'o', 'k', 0xF0}), "中ok\uFFFD");
}

}  // namespace
}  // namespace nextserve::tokenizer
