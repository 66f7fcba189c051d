// The OpenAI translation: request parsing and its errors, the error shape, response JSON, and the
// <tool_call> parser over text split at every possible point.
#include "router/openai_api.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/serving/cluster.h"

namespace nextserve::router::openai {
namespace {

using json = nlohmann::json;

TEST(OpenAiParse, ChatFieldsMapOntoTheGenerateRequest) {
  absl::StatusOr<ParsedRequest> p = ParseChatCompletions(R"({
    "model": "m", "messages": [
      {"role": "developer", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]},
      {"role": "assistant", "content": null,
       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "42"}],
    "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "x",
    "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {"17": -5},
    "logprobs": true, "top_logprobs": 4, "stream": true, "stream_options": {"include_usage": true},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})");
  ASSERT_TRUE(p.ok()) << p.status();
  const v1::GenerateRequest& r = p->request;
  EXPECT_EQ(p->model, "m");
  EXPECT_TRUE(p->stream);
  EXPECT_TRUE(p->include_usage);
  EXPECT_TRUE(p->tools);
  EXPECT_EQ(r.max_tokens(), 7);
  EXPECT_FLOAT_EQ(r.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(r.sampling().top_p(), 0.9f);
  EXPECT_EQ(r.sampling().seed(), 3u);
  EXPECT_FLOAT_EQ(r.sampling().logit_bias().at(17), -5.0f);
  EXPECT_EQ(r.logprobs(), 4);
  ASSERT_EQ(r.stop_size(), 1);
  EXPECT_EQ(r.stop(0), "x");
  ASSERT_EQ(r.chat().messages_size(), 4);
  EXPECT_EQ(r.chat().messages(0).role(), "system");
  EXPECT_EQ(r.chat().messages(1).content(), "hello");
  EXPECT_EQ(r.chat().messages(2).tool_calls(0).arguments_json(), R"({"a": 1})");
  EXPECT_EQ(r.chat().messages(3).tool_call_id(), "c1");
  EXPECT_EQ(r.chat().tools(0).name(), "f");
  // Absent sampling fields stay absent (the model's defaults apply).
  absl::StatusOr<ParsedRequest> bare =
      ParseChatCompletions(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}]})");
  ASSERT_TRUE(bare.ok());
  EXPECT_FALSE(bare->request.sampling().has_temperature());
  EXPECT_FALSE(bare->request.has_max_tokens());
  EXPECT_FALSE(bare->request.has_logprobs());
}

TEST(OpenAiParse, CompletionsPromptForms) {
  auto prompt = [](const std::string& p) {
    return ParseCompletions(R"({"model": "m", "prompt": )" + p + "}");
  };
  absl::StatusOr<ParsedRequest> text = prompt(R"("abc")");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->request.text(), "abc");
  EXPECT_EQ(text->request.max_tokens(), 16);  // OpenAI's default
  absl::StatusOr<ParsedRequest> ids = prompt("[1, 2, 3]");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->request.token_ids().ids_size(), 3);
  EXPECT_TRUE(prompt(R"(["one"])").ok());
  EXPECT_TRUE(prompt("[[4, 5]]").ok());
  EXPECT_FALSE(prompt(R"(["a", "b"])").ok());
  EXPECT_FALSE(prompt("{}").ok());
}

TEST(OpenAiParse, ErrorsNameTheParameter) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"messages": []})", "model"},
      {R"({"model": "m"})", "messages"},
      {R"({"model": "m", "messages": {}})", "messages"},
      {R"({"model": "m", "messages": [{"content": "x"}]})", "messages[0].role"},
      {R"({"model": "m", "messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x", "colour": 1}]})",
       "messages[0].colour"},
      {R"({"model": "m", "messages": [{"role": "user"}], "temperature": "hot"})", "temperature"},
      {R"({"model": "m", "messages": [{"role": "user"}], "n": 3})", "n"},
      {R"({"model": "m", "messages": [{"role": "user"}], "max_tokens": 0})", "max_tokens"},
      {R"({"model": "m", "messages": [{"role": "user"}], "top_logprobs": 3})", "top_logprobs"},
      {R"({"model": "m", "messages": [{"role": "user"}], "logit_bias": {"x": 1}})", "logit_bias"},
      {R"({"model": "m", "messages": [{"role": "user"}], "stream_options": {}})", "stream_options"},
      {R"({"model": "m", "messages": [{"role": "user"}], "tool_choice": "required"})",
       "tool_choice"},
      {R"({"model": "m", "messages": [{"role": "user"}], "unknown_thing": 1})", "unknown_thing"},
      {"not json", "body"},
      {"[1]", "body"},
  };
  for (const auto& [body, param] : cases) {
    SCOPED_TRACE(body);
    absl::StatusOr<ParsedRequest> p = ParseChatCompletions(body);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    HttpError e = ErrorFor(p.status());
    EXPECT_EQ(e.status, 400);
    json j = json::parse(e.body);
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_EQ(j["error"]["param"], param) << e.body;
  }
}

TEST(OpenAiErrors, CodesMapToTheUsualStatuses) {
  EXPECT_EQ(ErrorFor(absl::ResourceExhaustedError("queue full")).status, 429);
  EXPECT_EQ(ErrorFor(absl::UnavailableError("no rank")).status, 503);
  EXPECT_EQ(ErrorFor(absl::UnauthenticatedError("key")).status, 401);
  EXPECT_EQ(ErrorFor(absl::DeadlineExceededError("late")).status, 504);
  EXPECT_EQ(ErrorFor(absl::InternalError("bug")).status, 500);
  // The router's field paths become OpenAI parameter names.
  json j = json::parse(
      ErrorFor(absl::InvalidArgumentError("sampling params: 'top_p' must be in (0, 1], got 2"))
          .body);
  EXPECT_EQ(j["error"]["param"], "top_p");
  j = json::parse(ErrorFor(absl::InvalidArgumentError("prompt.chat.messages[1].role bad")).body);
  EXPECT_EQ(j["error"]["param"], "messages[1].role");
  j = json::parse(ErrorFor(absl::UnavailableError("request r-1 on rank x: lost")).body);
  EXPECT_TRUE(j["error"]["param"].is_null());
}

TEST(ToolCallParser, BlocksSplitAnywhereBecomeCallsAndTheRestStaysContent) {
  const std::string text =
      "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\"}}\n</tool_call><tool_call>{\"name\": \"now\"}</tool_call> done <tool_ca";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    SCOPED_TRACE(cut);
    ToolCallParser p;
    std::string content = p.Add(text.substr(0, cut));
    content += p.Add(text.substr(cut));
    content += p.Finish();
    EXPECT_EQ(content, "Let me check. done <tool_ca");
    ASSERT_EQ(p.calls().size(), 2u);
    EXPECT_EQ(p.calls()[0].name, "get_weather");
    EXPECT_EQ(json::parse(p.calls()[0].arguments), json::parse(R"({"city": "Paris"})"));
    EXPECT_EQ(p.calls()[1].name, "now");
    EXPECT_EQ(p.calls()[1].arguments, "{}");
    EXPECT_NE(p.calls()[0].id, p.calls()[1].id);
  }
}

TEST(ToolCallParser, WhatIsNotACallStaysContent) {
  ToolCallParser p;
  std::string content = p.Add("a <tool_call>not json</tool_call> b <tool_call>{\"x\": 1}");
  content += p.Finish();
  EXPECT_EQ(content, "a <tool_call>not json</tool_call> b <tool_call>{\"x\": 1}");
  EXPECT_TRUE(p.calls().empty());
  // Text that merely starts like the tag is released once it cannot be one.
  ToolCallParser q;
  EXPECT_EQ(q.Add("x <tool"), "x ");
  EXPECT_EQ(q.Add("box"), "<toolbox");
}

class OpenAiResponses : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() / ("openai_test_" + std::to_string(getpid())))
               .string();
    std::filesystem::create_directories(dir_);
    ASSERT_TRUE(nextserve::testing::WriteTestTokenizer(dir_).ok());
    auto tok = tokenizer::Tokenizer::Load(dir_);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  static v1::Delta Delta(const std::string& text, std::vector<int32_t> ids) {
    v1::Delta d;
    d.set_text(text);
    for (int32_t id : ids) {
      d.add_token_ids(id);
      v1::TokenLogprobs* lp = d.add_logprobs();
      lp->set_token_id(id);
      lp->set_logprob(-0.5f);
      lp->set_rank(1);
      v1::TopLogprob* t = lp->add_top();
      t->set_token_id(id);
      t->set_logprob(-0.5f);
    }
    return d;
  }
  static v1::Final Final(v1::FinishReason reason, int prompt, int completion) {
    v1::Final f;
    f.set_finish_reason(reason);
    f.mutable_usage()->set_prompt_tokens(prompt);
    f.mutable_usage()->set_completion_tokens(completion);
    return f;
  }
  std::string dir_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
};

TEST_F(OpenAiResponses, WholeChatResponseWithToolCallsAndLogprobs) {
  absl::StatusOr<ParsedRequest> req = ParseChatCompletions(
      R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": true,
          "tools": [{"type": "function", "function": {"name": "f"}}]})");
  ASSERT_TRUE(req.ok());
  ResponseBuilder b(*req, *tok_, "chatcmpl-1", 1000);
  b.Add(Delta("hi", {104, 105}));
  b.Add(Delta("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", {1}));
  json j = json::parse(b.Whole(Final(v1::FINISH_REASON_STOP, 5, 3)));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"], "chatcmpl-1");
  EXPECT_EQ(j["created"], 1000);
  const json& choice = j["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_EQ(choice["message"]["content"], "hi");
  EXPECT_EQ(choice["message"]["tool_calls"][0]["function"]["name"], "f");
  EXPECT_EQ(choice["message"]["tool_calls"][0]["type"], "function");
  ASSERT_EQ(choice["logprobs"]["content"].size(), 3u);
  EXPECT_EQ(choice["logprobs"]["content"][0]["token"], "h");
  EXPECT_EQ(choice["logprobs"]["content"][0]["bytes"], json::array({104}));
  EXPECT_EQ(j["usage"]["total_tokens"], 8);
}

TEST_F(OpenAiResponses, StreamingChunksCarryTheRoleOnceThenFinishThenUsage) {
  absl::StatusOr<ParsedRequest> req = ParseChatCompletions(
      R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true,
          "stream_options": {"include_usage": true}})");
  ASSERT_TRUE(req.ok());
  ResponseBuilder b(*req, *tok_, "chatcmpl-2", 1);
  std::vector<std::string> first = b.DeltaChunks(Delta("he", {104, 101}));
  std::vector<std::string> second = b.DeltaChunks(Delta("", {}));  // nothing to send
  std::vector<std::string> third = b.DeltaChunks(Delta("y", {121}));
  std::vector<std::string> last = b.FinalChunks(Final(v1::FINISH_REASON_LENGTH, 2, 3));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_TRUE(second.empty());
  ASSERT_EQ(last.size(), 2u);
  json c1 = json::parse(first[0]), c3 = json::parse(third[0]);
  EXPECT_EQ(c1["choices"][0]["delta"]["role"], "assistant");
  EXPECT_FALSE(c3["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(c3["choices"][0]["delta"]["content"], "y");
  EXPECT_TRUE(c1["usage"].is_null());
  json f = json::parse(last[0]), u = json::parse(last[1]);
  EXPECT_EQ(f["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["completion_tokens"], 3);
}

TEST_F(OpenAiResponses, CompletionsLogprobsShape) {
  absl::StatusOr<ParsedRequest> req =
      ParseCompletions(R"({"model": "m", "prompt": "x", "logprobs": 1})");
  ASSERT_TRUE(req.ok());
  ResponseBuilder b(*req, *tok_, "cmpl-1", 1);
  b.Add(Delta("ab", {97, 98}));
  json j = json::parse(b.Whole(Final(v1::FINISH_REASON_STOP, 1, 2)));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "ab");
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"], json::array({"a", "b"}));
  EXPECT_EQ(j["choices"][0]["logprobs"]["top_logprobs"][1]["b"], -0.5);
}

}  // namespace
}  // namespace nextserve::router::openai
