// The C++ chat template against transformers' apply_chat_template on the recorded conversations
// (tests/golden/tokenizer/chat_cases.json, tools/make_tokenizer_golden.py --record-chat).
#include "tokenizer/chat_template.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

namespace nextserve::tokenizer {
namespace {

using ojson = nlohmann::ordered_json;

ojson LoadCases() {
  const char* root = std::getenv("NEXTSERVE_SOURCE_DIR");
  const std::string path =
      std::string(root ? root : ".") + "/tests/golden/tokenizer/chat_cases.json";
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ojson::parse(ss.str(), nullptr, false);
}

TEST(ChatTemplate, MatchesTransformersOnRecordedConversations) {
  const ojson data = LoadCases();
  ASSERT_FALSE(data.is_discarded())
      << "chat_cases.json missing or not JSON (NEXTSERVE_SOURCE_DIR?)";
  ASSERT_GE(data["cases"].size(), 20u);
  for (const ojson& c : data["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    auto messages = ParseChatMessages(c["messages"]);
    ASSERT_TRUE(messages.ok()) << messages.status();
    std::vector<ojson> tools;
    if (c["tools"].is_array()) tools.assign(c["tools"].begin(), c["tools"].end());
    auto text = RenderChat(*messages, tools, c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["text"].get<std::string>());
  }
}

TEST(ChatTemplate, RejectsWhatTheTemplateCannotRender) {
  EXPECT_EQ(RenderChat({}, {}, true).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<ChatMessage> no_content = {{"system", std::nullopt, {}}};
  EXPECT_EQ(RenderChat(no_content, {}, true).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad = ParseChatMessages(
      ojson::parse(R"([{"role": "assistant", "tool_calls": [{"function": {}}]}])"));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("messages[0].tool_calls[0]"), std::string::npos)
      << bad.status();
  EXPECT_FALSE(ParseChatMessages(ojson::parse(R"([{"content": "x"}])")).ok());
}

TEST(PythonJsonDumps, FormatsLikePython) {
  // Expected strings are Python 3.11's json.dumps(..., ensure_ascii=False).
  const std::pair<const char*, const char*> cases[] = {
      {"1.0", "1.0"},
      {"100000.0", "100000.0"},
      {"1e-05", "1e-05"},
      {"0.0001", "0.0001"},
      {"1e16", "1e+16"},
      {"1e15", "1000000000000000.0"},
      {"-0.0", "-0.0"},
      {"0.1", "0.1"},
      {"1.5e300", "1.5e+300"},
      {"123456789.125", "123456789.125"},
      {"2.5e-7", "2.5e-07"},
      {"-3", "-3"},
      {"18446744073709551615", "18446744073709551615"},
      {R"({"b": [1, {"a": null}], "a": true})", R"({"b": [1, {"a": null}], "a": true})"},
      {R"("tab\t nl\n quote\" bs\\ ctl\u0001 del\u007f é 中")",
       "\"tab\\t nl\\n quote\\\" bs\\\\ ctl\\u0001 del\x7f é 中\""},
      {"[]", "[]"},
      {"{}", "{}"},
  };
  for (const auto& [in, want] : cases) EXPECT_EQ(PythonJsonDumps(ojson::parse(in)), want) << in;
}

}  // namespace
}  // namespace nextserve::tokenizer
