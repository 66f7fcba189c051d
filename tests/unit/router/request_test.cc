// ResolveGenerate: defaults, presence vs zero, eos handling, context arithmetic.
#include "router/request.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/serving/cluster.h"
#include "tokenizer/chat_template.h"

namespace nextserve::router {
namespace {

class RequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() / ("request_test_" + std::to_string(getpid())))
               .string();
    std::filesystem::create_directories(dir_);
    ASSERT_TRUE(nextserve::testing::WriteTestTokenizer(dir_).ok());
    std::ofstream(dir_ + "/config.json") << R"({"vocab_size": 512, "max_position_embeddings": 100,
        "num_experts": 16, "num_experts_per_tok": 4, "eos_token_id": 511})";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  ModelSpec Load() {
    absl::StatusOr<ModelSpec> spec = LoadModelSpec(dir_);
    EXPECT_TRUE(spec.ok()) << spec.status();
    return std::move(*spec);
  }
  std::string dir_;
};

v1::GenerateRequest Ids(std::vector<int32_t> ids) {
  v1::GenerateRequest req;
  req.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  return req;
}

TEST_F(RequestTest, AbsentFieldsTakeQwenDefaultsAndZeroIsNotAbsent) {
  ModelSpec spec = Load();
  absl::StatusOr<ResolvedRequest> r = ResolveGenerate(Ids({1, 2, 3}), spec, 100);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FLOAT_EQ(r->sampling.temperature(), 0.7f);
  EXPECT_FLOAT_EQ(r->sampling.top_p(), 0.8f);
  EXPECT_EQ(r->sampling.top_k(), 20);
  EXPECT_FLOAT_EQ(r->sampling.min_p(), 0.0f);
  EXPECT_FLOAT_EQ(r->sampling.repetition_penalty(), 1.0f);
  EXPECT_EQ(r->sampling.logprobs(), -1);
  EXPECT_FALSE(r->sampling.has_seed());
  EXPECT_EQ(r->max_tokens, 97);  // up to the context
  ASSERT_EQ(r->sampling.stop_token_ids_size(), 1);
  EXPECT_EQ(r->sampling.stop_token_ids(0), 511);

  v1::GenerateRequest req = Ids({1, 2, 3});
  req.mutable_sampling()->set_temperature(0);
  req.mutable_sampling()->set_top_k(0);
  req.mutable_sampling()->set_seed(0);
  req.set_ignore_eos(true);
  req.set_max_tokens(5);
  r = ResolveGenerate(req, spec, 100);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sampling.temperature(), 0.0f);
  EXPECT_EQ(r->sampling.top_k(), 0);
  EXPECT_TRUE(r->sampling.has_seed());
  EXPECT_EQ(r->sampling.stop_token_ids_size(), 0);  // eos ignored
  EXPECT_EQ(r->max_tokens, 5);
}

TEST_F(RequestTest, GenerationConfigOverridesFieldByField) {
  std::ofstream(dir_ + "/generation_config.json") << R"({"temperature": 0.6, "top_k": 50,
      "eos_token_id": [511, 509]})";
  ModelSpec spec = Load();
  EXPECT_EQ(spec.eos_token_ids, (std::vector<int32_t>{511, 509}));
  v1::GenerateRequest req = Ids({1});
  req.add_stop_token_ids(509);
  absl::StatusOr<ResolvedRequest> r = ResolveGenerate(req, spec, 100);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FLOAT_EQ(r->sampling.temperature(), 0.6f);
  EXPECT_EQ(r->sampling.top_k(), 50);
  EXPECT_FLOAT_EQ(r->sampling.top_p(), 1.0f);  // not in the file: neutral
  EXPECT_EQ(std::vector<int32_t>(r->sampling.stop_token_ids().begin(),
                                 r->sampling.stop_token_ids().end()),
            (std::vector<int32_t>{509, 511}));
}

TEST_F(RequestTest, ContextArithmetic) {
  ModelSpec spec = Load();
  v1::GenerateRequest req = Ids(std::vector<int32_t>(60, 7));
  req.set_max_tokens(40);
  EXPECT_TRUE(ResolveGenerate(req, spec, 100).ok());
  req.set_max_tokens(41);
  EXPECT_EQ(ResolveGenerate(req, spec, 100).status().code(), absl::StatusCode::kInvalidArgument);
  // A smaller context reported by the ranks wins.
  req.set_max_tokens(30);
  EXPECT_FALSE(ResolveGenerate(req, spec, 80).ok());
}

TEST_F(RequestTest, ChatIsRenderedWithSpecialTokens) {
  ModelSpec spec = Load();
  v1::GenerateRequest req;
  auto* m = req.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("hi");
  absl::StatusOr<ResolvedRequest> r = ResolveGenerate(req, spec, 100);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_ids.front(), 510);  // <|im_start|>
  // Special-token text in a raw text prompt stays text.
  v1::GenerateRequest text;
  text.set_text("<|im_start|>");
  r = ResolveGenerate(text, spec, 100);
  ASSERT_TRUE(r.ok());
  EXPECT_GT(r->prompt_ids.size(), 1u);
}

TEST_F(RequestTest, ASystemMessageAfterTheFirstRendersAsTheTemplateDoes) {
  ModelSpec spec = Load();
  v1::Chat chat;
  auto add = [&](const char* role, const char* content) {
    auto* m = chat.add_messages();
    m->set_role(role);
    m->set_content(content);
  };
  add("user", "a");
  add("system", "late system");
  add("user", "b");
  absl::StatusOr<std::vector<int32_t>> ids = TokenizeChat(chat, spec, {});
  ASSERT_TRUE(ids.ok()) << ids.status();
  // The template's own rendering (tokenizer/chat_template, checked against transformers'
  // apply_chat_template on the same conversation in the golden tokenizer data).
  absl::StatusOr<std::string> text =
      tokenizer::RenderChat({{.role = "user", .content = "a", .tool_calls = {}},
                             {.role = "system", .content = "late system", .tool_calls = {}},
                             {.role = "user", .content = "b", .tool_calls = {}}},
                            {}, /*add_generation_prompt=*/true);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_NE(text->find("<|im_start|>system\nlate system<|im_end|>"), std::string::npos) << *text;
  absl::StatusOr<std::vector<int32_t>> expected =
      spec.tokenizer->Encode(*text, {.parse_special = true});
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(*ids, *expected);
}

// One id rule: [0, config vocab_size). The embedding's padding rows past the tokenizer's table are
// valid ids with no text.
TEST_F(RequestTest, DetokenizeAcceptsEveryModelIdAndDecodesPaddingIdsToNothing) {
  std::ofstream(dir_ + "/config.json") << R"({"vocab_size": 600, "max_position_embeddings": 100,
      "num_experts": 16, "num_experts_per_tok": 4, "eos_token_id": 511})";
  ModelSpec spec = Load();
  ASSERT_EQ(spec.tokenizer->vocab_size(), 512);
  google::protobuf::RepeatedField<int32_t> plain;
  for (int32_t id : {104, 105}) plain.Add(id);  // "h", "i" (byte-level ids)
  absl::StatusOr<std::string> base = DetokenizeIds(plain, false, spec);
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(*base, "hi");
  google::protobuf::RepeatedField<int32_t> padded;
  for (int32_t id : {104, 512, 599, 105}) padded.Add(id);
  absl::StatusOr<std::string> text = DetokenizeIds(padded, false, spec);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "hi");
  // The same ids are accepted in a prompt.
  EXPECT_TRUE(ResolveGenerate(Ids({104, 512, 599}), spec, 100).ok());
  for (int32_t bad : {600, -1}) {
    google::protobuf::RepeatedField<int32_t> out_of_range;
    out_of_range.Add(104);
    out_of_range.Add(bad);
    absl::StatusOr<std::string> err = DetokenizeIds(out_of_range, false, spec);
    EXPECT_EQ(err.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(err.status().message().find(
                  absl::StrCat("ids[1] = ", bad, " is not a token id in [0, 600)")),
              std::string::npos)
        << err.status();
    EXPECT_FALSE(ResolveGenerate(Ids({104, bad}), spec, 100).ok());
  }
}

TEST_F(RequestTest, BadModelDirectoriesNameTheFile) {
  std::ofstream(dir_ + "/config.json") << R"({"max_position_embeddings": 100})";
  absl::StatusOr<ModelSpec> spec = LoadModelSpec(dir_);
  EXPECT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("config.json: 'vocab_size' is missing"), std::string::npos)
      << spec.status();
  std::filesystem::remove(dir_ + "/tokenizer.json");
  std::ofstream(dir_ + "/config.json") << R"({"vocab_size": 512})";
  EXPECT_FALSE(LoadModelSpec(dir_).ok());
}

}  // namespace
}  // namespace nextserve::router
