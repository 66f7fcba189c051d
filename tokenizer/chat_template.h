// The Qwen3-Next Instruct chat template (ChatML with tool calling), written out in C++. It gives
// the same text as transformers' apply_chat_template with the model's Jinja template
// (tests/golden/tokenizer/qwen3_next_instruct.jinja) — checked on recorded conversations.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace nextserve::tokenizer {

struct ToolCall {
  std::string name;
  // A JSON string goes in as it is (the client already serialised it); any other value is
  // serialised as Python's json.dumps does, like the template's `tojson`.
  nlohmann::ordered_json arguments;
};

struct ChatMessage {
  // system, user, assistant, tool. Other roles render nothing, as in the template.
  std::string role;
  // Absent (null, or a list of content parts) renders as the empty string.
  std::optional<std::string> content;
  std::vector<ToolCall> tool_calls;  // assistant only
};

// `tools` are the tool definitions as the client sent them (OpenAI style, any JSON objects);
// they are printed in order with Python's json.dumps spacing. InvalidArgument for an empty
// conversation or a leading system message without string content (the template fails there).
absl::StatusOr<std::string> RenderChat(absl::Span<const ChatMessage> messages,
                                       absl::Span<const nlohmann::ordered_json> tools,
                                       bool add_generation_prompt);

// OpenAI-style messages ([{"role", "content", "tool_calls": [{"function": {"name",
// "arguments"}}]}]) -> ChatMessage. Errors name the message index and field.
absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(const nlohmann::ordered_json& messages);

// json.dumps(value, ensure_ascii=False) of Python: ", " and ": " separators, keys in the given
// order, floats as Python's repr (1e-05, 100000.0).
std::string PythonJsonDumps(const nlohmann::ordered_json& value);

}  // namespace nextserve::tokenizer
