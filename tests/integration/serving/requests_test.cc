// Requests a client may get wrong or abandon, against a real rank: every bad request gets the
// right code and a message naming the problem, the server keeps serving, and cancelled or
// expired requests give their KV blocks and state slot back (seen in the rank's own load report).
#include <cmath>
#include <functional>
#include <limits>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

class RequestsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = TestModelDir();
    ASSERT_TRUE(dir.ok()) << dir.status();
    auto cluster = Cluster::Start(
        *dir, {.ranks = 1, .rank_args = {"--kv-blocks", "256", "--state-slots", "16"}});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    client_ = sdk::Client::Create(cluster_->router_address());
  }
  // A request that must succeed, proving the server still serves.
  void ExpectServing() {
    v1::GenerateRequest ok = IdsRequest({1, 2, 3}, 4);
    ok.mutable_sampling()->set_temperature(0);
    absl::StatusOr<sdk::GenerateResult> r =
        client_->Generate(ok, nullptr, {.timeout = absl::Seconds(10)});
    ASSERT_TRUE(r.ok()) << r.status() << cluster_->Logs();
    EXPECT_EQ(r->token_ids.size(), 4u);
  }

  static Cluster* cluster_;
  std::unique_ptr<sdk::Client> client_;
};
Cluster* RequestsTest::cluster_ = nullptr;

struct BadCase {
  std::string name;
  std::function<void(v1::GenerateRequest&)> edit;  // applied to a valid request
  std::string expect;                              // in the error message
  absl::StatusCode code = absl::StatusCode::kInvalidArgument;
};

v1::GenerateRequest Valid() {
  v1::GenerateRequest req = IdsRequest({10, 20, 30}, 8);
  return req;
}

std::vector<int32_t> Ids(int n) {
  return std::vector<int32_t>(n, 65);
}

std::vector<BadCase> BadCases() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto chat = [](v1::GenerateRequest& r) -> v1::Chat& { return *r.mutable_chat(); };
  auto user = [](v1::Chat& c, const std::string& text) {
    auto* m = c.add_messages();
    m->set_role("user");
    m->set_content(text);
    return m;
  };
  return {
      {"no prompt", [](auto& r) { r.clear_prompt(); },
       "prompt: one of text, chat or token_ids is required"},
      {"empty text", [](auto& r) { r.set_text(""); }, "prompt.text is empty"},
      {"empty token ids", [](auto& r) { r.mutable_token_ids()->clear_ids(); },
       "prompt.token_ids is empty"},
      {"negative token id", [](auto& r) { r.mutable_token_ids()->set_ids(1, -1); },
       "prompt.token_ids.ids[1] = -1 is not a token id"},
      {"token id past the vocabulary",
       [](auto& r) { r.mutable_token_ids()->set_ids(0, kTestVocab); },
       "prompt.token_ids.ids[0] = 512 is not a token id"},
      {"negative max_tokens", [](auto& r) { r.set_max_tokens(-5); },
       "max_tokens must be >= 1, got -5"},
      {"zero max_tokens", [](auto& r) { r.set_max_tokens(0); }, "max_tokens must be >= 1"},
      {"huge max_tokens", [](auto& r) { r.set_max_tokens(std::numeric_limits<int32_t>::max()); },
       "exceeds the context length 2048"},
      {"prompt + max_tokens over the context",
       [](auto& r) {
         const auto ids = Ids(2000);
         r.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
         r.set_max_tokens(100);
       },
       "max_tokens: prompt (2000 tokens) + max_tokens (100) exceeds the context length 2048"},
      {"over-long token prompt",
       [](auto& r) {
         const auto ids = Ids(kTestContext);
         r.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
         r.clear_max_tokens();
       },
       "prompt is 2048 tokens"},
      {"over-long text prompt", [](auto& r) { r.set_text(std::string(3000, '.')); }, "prompt is"},
      {"negative temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-1); },
       "temperature"},
      {"NaN temperature", [nan](auto& r) { r.mutable_sampling()->set_temperature(nan); },
       "temperature"},
      {"top_p above 1", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, "top_p"},
      {"top_p zero", [](auto& r) { r.mutable_sampling()->set_top_p(0); }, "top_p"},
      {"top_k below -1", [](auto& r) { r.mutable_sampling()->set_top_k(-5); }, "top_k"},
      {"min_p above 1", [](auto& r) { r.mutable_sampling()->set_min_p(2); }, "min_p"},
      {"zero repetition penalty", [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0); },
       "repetition_penalty"},
      {"presence penalty out of range",
       [](auto& r) { r.mutable_sampling()->set_presence_penalty(3); }, "presence_penalty"},
      {"frequency penalty out of range",
       [](auto& r) { r.mutable_sampling()->set_frequency_penalty(-3); }, "frequency_penalty"},
      {"logit bias on an unknown token",
       [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[9999] = 1; }, "logit_bias"},
      {"logit bias too large",
       [](auto& r) { (*r.mutable_sampling()->mutable_logit_bias())[5] = 500; }, "logit_bias"},
      {"unknown stop token id", [](auto& r) { r.add_stop_token_ids(600); },
       "stop_token_ids[0]' = 600"},
      {"empty stop string", [](auto& r) { r.add_stop(""); }, "stop[0] is empty"},
      {"too many stop strings",
       [](auto& r) {
         for (int i = 0; i < 17; ++i) r.add_stop("s" + std::to_string(i));
       },
       "stop has 17 strings"},
      {"stop string too long", [](auto& r) { r.add_stop(std::string(300, 'x')); },
       "stop[0] is 300 bytes"},
      {"logprobs above 20", [](auto& r) { r.set_logprobs(21); }, "logprobs"},
      {"negative logprobs", [](auto& r) { r.set_logprobs(-3); }, "logprobs"},
      {"negative min_tokens", [](auto& r) { r.set_min_tokens(-1); }, "min_tokens must be >= 0"},
      {"min_tokens above max_tokens", [](auto& r) { r.set_min_tokens(9); },
       "min_tokens (9) exceeds max_tokens (8)"},
      {"request id too long", [](auto& r) { r.set_request_id(std::string(1000, 'r')); },
       "request_id is 1000 bytes"},
      {"empty messages", [chat](auto& r) { chat(r); }, "prompt.chat.messages is empty"},
      {"unknown role",
       [chat](auto& r) {
         auto* m = chat(r).add_messages();
         m->set_role("wizard");
         m->set_content("hi");
       },
       "prompt.chat.messages[0].role 'wizard' is not one of"},
      {"tool call on a user message",
       [chat, user](auto& r) { user(chat(r), "hi")->add_tool_calls()->set_name("f"); },
       "prompt.chat.messages[0].tool_calls"},
      {"tool call arguments not JSON",
       [chat, user](auto& r) {
         user(chat(r), "hi");
         auto* m = chat(r).add_messages();
         m->set_role("assistant");
         auto* call = m->add_tool_calls();
         call->set_name("f");
         call->set_arguments_json("{not json");
       },
       "prompt.chat.messages[1].tool_calls[0].arguments_json is not a JSON object"},
      {"tool without a name",
       [chat, user](auto& r) {
         user(chat(r), "hi");
         chat(r).add_tools()->set_description("x");
       },
       "prompt.chat.tools[0].name is empty"},
      {"tool parameters not JSON",
       [chat, user](auto& r) {
         user(chat(r), "hi");
         auto* t = chat(r).add_tools();
         t->set_name("f");
         t->set_parameters_json("[1, 2");
       },
       "prompt.chat.tools[0].parameters_json is not a JSON object"},
      {"tool parameters nested too deep",
       [chat, user](auto& r) {
         user(chat(r), "hi");
         auto* t = chat(r).add_tools();
         t->set_name("f");
         t->set_parameters_json("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') +
                                "}");
       },
       "prompt.chat.tools[0].parameters_json nests deeper than 64 levels"},
      // proto3 strings must be UTF-8: protobuf refuses to parse the request before our handler
      // runs (gRPC would answer INTERNAL with no message); the router names the field.
      {"invalid UTF-8 in text", [](auto& r) { r.set_text("ab\xff\xfe"); },
       "String field 'nextserve.v1.GenerateRequest.text' contains invalid UTF-8"},
      {"invalid UTF-8 in a stop string", [](auto& r) { r.add_stop("\xc3"); },
       "String field 'nextserve.v1.GenerateRequest.stop' contains invalid UTF-8"},
      {"invalid UTF-8 in a chat message", [chat, user](auto& r) { user(chat(r), "caf\xc3("); },
       "String field 'nextserve.v1.ChatMessage.content' contains invalid UTF-8"},
  };
}

TEST_F(RequestsTest, BadRequestsGetTheRightCodeAndNameTheProblem) {
  const std::vector<BadCase> cases = BadCases();
  ASSERT_GE(cases.size(), 20u);
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::GenerateRequest req = Valid();
    c.edit(req);
    Collected got = Collect(*client_->StartGenerate(req, {.timeout = absl::Seconds(10)}));
    EXPECT_EQ(got.status.code(), c.code) << got.status;
    EXPECT_TRUE(absl::StrContains(got.status.message(), c.expect)) << got.status;
    EXPECT_TRUE(got.deltas.empty());
  }
  ExpectServing();
  EXPECT_TRUE(cluster_->WaitRankIdle(0, absl::Seconds(2)).ok());
}

TEST_F(RequestsTest, BadTokenizeAndDetokenize) {
  v1::TokenizeRequest empty;
  v1::TokenizeResponse out;
  grpc::ClientContext ctx;
  grpc::Status s = client_->stub()->Tokenize(&ctx, empty, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "input")) << s.error_message();
  absl::StatusOr<std::string> text = client_->Detokenize({1, 2, kTestVocab + 5});
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(text.status().message(), "ids[2] = 517")) << text.status();
  ExpectServing();
}

// A long generation (eos ignored) that the client abandons.
v1::GenerateRequest LongRequest() {
  v1::GenerateRequest req = IdsRequest({3, 1, 4, 1, 5, 9, 2, 6}, 1500);
  req.set_ignore_eos(true);
  req.mutable_sampling()->set_temperature(0);
  return req;
}

TEST_F(RequestsTest, CancelFreesTheRequestsBlocksAndSlot) {
  auto before = cluster_->RankLoad(0);
  ASSERT_TRUE(before.ok()) << before.status();
  auto stream = client_->StartGenerate(LongRequest());
  v1::GenerateResponse r;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Next(&r)) << cluster_->Logs();
  auto during = cluster_->RankLoad(0);
  ASSERT_TRUE(during.ok());
  EXPECT_EQ(during->running(), 1);
  EXPECT_LT(during->free_kv_blocks(), before->free_kv_blocks());
  EXPECT_EQ(during->free_state_slots(), before->free_state_slots() - 1);
  const absl::Time cancelled = absl::Now();
  stream->Cancel();
  EXPECT_EQ(stream->Finish().code(), absl::StatusCode::kCancelled);
  absl::Status idle = cluster_->WaitRankIdle(0, absl::Seconds(1));
  EXPECT_TRUE(idle.ok()) << idle;
  std::printf("cancel -> rank idle: %s\n", absl::FormatDuration(absl::Now() - cancelled).c_str());
  ExpectServing();
}

TEST_F(RequestsTest, DeadlineEndsTheRequestAndFreesItsBlocksAndSlot) {
  Collected c =
      Collect(*client_->StartGenerate(LongRequest(), {.timeout = absl::Milliseconds(300)}));
  EXPECT_EQ(c.status.code(), absl::StatusCode::kDeadlineExceeded) << c.status;
  EXPECT_FALSE(c.deltas.empty());
  EXPECT_FALSE(c.final.has_value());
  absl::Status idle = cluster_->WaitRankIdle(0, absl::Seconds(1));
  EXPECT_TRUE(idle.ok()) << idle;
  ExpectServing();
}

}  // namespace
}  // namespace nextserve::testing
