// The OpenAI-compatible HTTP API as a translation onto nextserve.v1: request JSON ->
// GenerateRequest (field errors name the OpenAI parameter), GenerateResponse stream -> response /
// SSE chunk JSON, the OpenAI error shape, and Qwen's <tool_call> blocks in the generated text ->
// tool_calls. Pure functions and small state machines, no I/O: router/openai_frontend.cc does the
// serving.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nextserve/v1/inference.pb.h"
#include "tokenizer/tokenizer.h"

namespace nextserve::router::openai {

enum class Endpoint { kChat, kCompletions };

// One parsed POST body.
struct ParsedRequest {
  Endpoint endpoint = Endpoint::kChat;
  v1::GenerateRequest request;
  std::string model;  // as the client named it
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // chat: logprobs; completions: logprobs != null
  int top_logprobs = 0;
  bool tools = false;  // tools were offered (then <tool_call> blocks become tool_calls)
};

// Errors are InvalidArgument whose message starts with the OpenAI parameter it is about.
absl::StatusOr<ParsedRequest> ParseChatCompletions(const std::string& body);
absl::StatusOr<ParsedRequest> ParseCompletions(const std::string& body);

// An error as the OpenAI API shapes it: {"error": {"message", "type", "param", "code"}}.
struct HttpError {
  int status = 500;
  std::string body;
};
// From a nextserve status: INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403,
// NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, others 500.
HttpError ErrorFor(const absl::Status& status);
HttpError MakeError(int http_status, const std::string& type, const std::string& message,
                    const std::string& param = "");

// Splits generated text into content and <tool_call>{json}</tool_call> blocks as it streams: text
// that may begin a block is held back until it is known not to.
class ToolCallParser {
 public:
  struct ToolCall {
    std::string id, name, arguments;  // arguments: a JSON object as text
  };
  // The content that is certainly not inside a tool call.
  std::string Add(const std::string& text);
  // At the end: the held-back rest as content, and the calls found. A block that does not parse
  // as {"name", "arguments"} stays content.
  std::string Finish();
  const std::vector<ToolCall>& calls() const { return calls_; }

 private:
  void ParseBlock(const std::string& block);
  std::string held_;
  bool in_block_ = false;
  std::string block_;
  std::vector<ToolCall> calls_;
  std::string unparsed_;  // blocks that were not tool calls, returned as content
};

// Builds the JSON bodies for one request. `id` like "chatcmpl-..." / "cmpl-...".
class ResponseBuilder {
 public:
  ResponseBuilder(const ParsedRequest& request, const tokenizer::Tokenizer& tokenizer,
                  std::string id, int64_t created);

  // Streaming: the chunks for one Delta (none when it carries nothing to send).
  std::vector<std::string> DeltaChunks(const v1::Delta& delta);
  // Streaming: the closing chunk(s) for the Final (finish reason; tool calls; usage if asked).
  std::vector<std::string> FinalChunks(const v1::Final& final);
  // Non-streaming: record a Delta; then the whole response for the Final.
  void Add(const v1::Delta& delta);
  std::string Whole(const v1::Final& final);

 private:
  std::string FinishReason(const v1::Final& final) const;
  std::string Chunk(const std::string& choice_json, bool with_usage_null) const;
  std::string LogprobsJson(const std::vector<v1::TokenLogprobs>& lps) const;

  const ParsedRequest& request_;
  const tokenizer::Tokenizer& tokenizer_;
  const std::string id_;
  const int64_t created_;
  bool role_sent_ = false;
  ToolCallParser tool_calls_;
  std::string text_;                         // non-streaming: all content
  std::vector<v1::TokenLogprobs> logprobs_;  // non-streaming
};

// GET /v1/models.
std::string ModelsJson(const std::string& model_name, int64_t created, int64_t max_context);

}  // namespace nextserve::router::openai
