#include "router/request.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "sampling/params.h"
#include "tokenizer/chat_template.h"

namespace nextserve::router {
namespace {

using ojson = nlohmann::ordered_json;

absl::Status Invalid(auto&&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(parts...));
}

// JSON from clients is rendered recursively later: bound its nesting first.
constexpr int kMaxJsonDepth = 64;

int JsonDepth(const std::string& text) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return deepest;
}

absl::StatusOr<ojson> ParseJsonObject(const std::string& text, const std::string& field) {
  if (JsonDepth(text) > kMaxJsonDepth)
    return Invalid(field, " nests deeper than ", kMaxJsonDepth, " levels");
  ojson j = ojson::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Invalid(field, " is not a JSON object");
  return j;
}

absl::StatusOr<std::string> RenderChatText(const v1::Chat& chat, const RequestLimits& limits) {
  if (chat.messages().empty()) return Invalid("prompt.chat.messages is empty");
  if (chat.messages_size() > limits.max_chat_messages) {
    return Invalid("prompt.chat.messages has ", chat.messages_size(), " entries; at most ",
                   limits.max_chat_messages, " are allowed");
  }
  if (chat.tools_size() > limits.max_tools) {
    return Invalid("prompt.chat.tools has ", chat.tools_size(), " entries; at most ",
                   limits.max_tools, " are allowed");
  }
  std::vector<tokenizer::ChatMessage> messages;
  messages.reserve(chat.messages_size());
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    const std::string where = absl::StrCat("prompt.chat.messages[", i, "]");
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant" &&
        m.role() != "tool") {
      return Invalid(where, ".role '", m.role(), "' is not one of system, user, assistant, tool");
    }
    // A system message after the first renders as its own turn, as the model's template does.
    if (!m.tool_calls().empty() && m.role() != "assistant") {
      return Invalid(where, ".tool_calls: only assistant messages carry tool calls");
    }
    tokenizer::ChatMessage out{.role = m.role(), .content = m.content(), .tool_calls = {}};
    for (int k = 0; k < m.tool_calls_size(); ++k) {
      const v1::ToolCall& call = m.tool_calls(k);
      const std::string at = absl::StrCat(where, ".tool_calls[", k, "]");
      if (call.name().empty()) return Invalid(at, ".name is empty");
      absl::StatusOr<ojson> args = ParseJsonObject(call.arguments_json(), at + ".arguments_json");
      if (!args.ok()) return args.status();
      // As the client serialised it (the template prints a string argument verbatim).
      out.tool_calls.push_back({.name = call.name(), .arguments = ojson(call.arguments_json())});
    }
    messages.push_back(std::move(out));
  }
  std::vector<ojson> tools;
  for (int t = 0; t < chat.tools_size(); ++t) {
    const v1::Tool& tool = chat.tools(t);
    const std::string at = absl::StrCat("prompt.chat.tools[", t, "]");
    if (tool.name().empty()) return Invalid(at, ".name is empty");
    ojson fn = {{"name", tool.name()}};
    if (!tool.description().empty()) fn["description"] = tool.description();
    if (!tool.parameters_json().empty()) {
      absl::StatusOr<ojson> params =
          ParseJsonObject(tool.parameters_json(), at + ".parameters_json");
      if (!params.ok()) return params.status();
      fn["parameters"] = *std::move(params);
    }
    tools.push_back({{"type", "function"}, {"function", std::move(fn)}});
  }
  absl::StatusOr<std::string> text = tokenizer::RenderChat(
      messages, tools, chat.has_add_generation_prompt() ? chat.add_generation_prompt() : true);
  if (!text.ok()) return Invalid("prompt.", text.status().message());
  return text;
}

absl::Status CheckIds(const google::protobuf::RepeatedField<int32_t>& ids, const char* field,
                      int64_t vocab) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return Invalid(field, "[", i, "] = ", ids[i], " is not a token id in [0, ", vocab, ")");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> TokenizeText(const std::string& text, const char* field,
                                                  const ModelSpec& model) {
  absl::StatusOr<std::vector<int32_t>> ids = model.tokenizer->Encode(text);
  if (!ids.ok()) return Invalid(field, ": ", ids.status().message());
  return ids;
}

absl::StatusOr<std::string> DetokenizeIds(const google::protobuf::RepeatedField<int32_t>& ids,
                                          bool skip_special_tokens, const ModelSpec& model) {
  if (absl::Status s = CheckIds(ids, "ids", model.vocab_size); !s.ok()) return s;
  const tokenizer::Tokenizer& tok = *model.tokenizer;
  std::vector<int32_t> with_text;
  with_text.reserve(ids.size());
  for (int32_t id : ids) {
    if (tok.InRange(id)) with_text.push_back(id);
  }
  absl::StatusOr<std::string> text = tok.Decode(with_text, skip_special_tokens);
  if (!text.ok()) return Invalid("ids: ", text.status().message());
  return text;
}

absl::StatusOr<std::vector<int32_t>> TokenizeChat(const v1::Chat& chat, const ModelSpec& model,
                                                  const RequestLimits& limits) {
  absl::StatusOr<std::string> text = RenderChatText(chat, limits);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<int32_t>> ids =
      model.tokenizer->Encode(*text, {.parse_special = true});
  if (!ids.ok()) return Invalid("prompt.chat: ", ids.status().message());
  return ids;
}

absl::StatusOr<ResolvedRequest> ResolveGenerate(const v1::GenerateRequest& request,
                                                const ModelSpec& model, int64_t max_context,
                                                const RequestLimits& limits) {
  ResolvedRequest out;
  if (request.request_id().size() > limits.max_request_id_bytes) {
    return Invalid("request_id is ", request.request_id().size(), " bytes; at most ",
                   limits.max_request_id_bytes, " are allowed");
  }

  // Cheap checks first, so that a bad request costs no tokenization.
  const v1::SamplingParams& p = request.sampling();
  if (request.stop_size() > limits.max_stop_strings) {
    return Invalid("stop has ", request.stop_size(), " strings; at most ", limits.max_stop_strings,
                   " are allowed");
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    const std::string& s = request.stop(i);
    if (s.empty()) return Invalid("stop[", i, "] is empty");
    if (s.size() > limits.max_stop_bytes) {
      return Invalid("stop[", i, "] is ", s.size(), " bytes; at most ", limits.max_stop_bytes,
                     " are allowed");
    }
    out.stop.push_back(s);
  }
  if (request.stop_token_ids_size() > limits.max_stop_token_ids) {
    return Invalid("stop_token_ids has ", request.stop_token_ids_size(), " entries; at most ",
                   limits.max_stop_token_ids, " are allowed");
  }
  if (p.logit_bias_size() > limits.max_logit_bias) {
    return Invalid("sampling.logit_bias has ", p.logit_bias_size(), " entries; at most ",
                   limits.max_logit_bias, " are allowed");
  }
  if (request.has_max_tokens() && request.max_tokens() < 1) {
    return Invalid("max_tokens must be >= 1, got ", request.max_tokens());
  }
  if (request.has_min_tokens() && request.min_tokens() < 0) {
    return Invalid("min_tokens must be >= 0, got ", request.min_tokens());
  }

  // Sampling: the request's value where present, else the model's default; then the sampling
  // library's own range checks, which name the field.
  const SamplingDefaults& d = model.defaults;
  sampling::SamplingParams sp;
  sp.temperature = p.has_temperature() ? p.temperature() : d.temperature;
  sp.top_p = p.has_top_p() ? p.top_p() : d.top_p;
  sp.top_k = p.has_top_k() ? p.top_k() : d.top_k;
  sp.min_p = p.has_min_p() ? p.min_p() : d.min_p;
  sp.repetition_penalty =
      p.has_repetition_penalty() ? p.repetition_penalty() : d.repetition_penalty;
  sp.presence_penalty = p.has_presence_penalty() ? p.presence_penalty() : 0.0f;
  sp.frequency_penalty = p.has_frequency_penalty() ? p.frequency_penalty() : 0.0f;
  for (const auto& [token, bias] : p.logit_bias()) sp.logit_bias.emplace_back(token, bias);
  std::sort(sp.logit_bias.begin(), sp.logit_bias.end());  // map order is unspecified
  sp.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  sp.ignore_eos = request.ignore_eos();
  sp.min_tokens = request.has_min_tokens() ? request.min_tokens() : 0;
  if (p.has_seed()) sp.seed = p.seed();
  sp.logprobs = request.has_logprobs() ? request.logprobs() : -1;
  if (request.has_logprobs() && request.logprobs() < 0) {
    return Invalid("logprobs must be in [0, ", sampling::kMaxLogprobs, "], got ",
                   request.logprobs());
  }
  if (absl::Status s = sp.Validate(model.vocab_size); !s.ok()) return s;

  // The prompt.
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (request.text().empty()) return Invalid("prompt.text is empty");
      absl::StatusOr<std::vector<int32_t>> ids = TokenizeText(request.text(), "prompt.text", model);
      if (!ids.ok()) return ids.status();
      out.prompt_ids = *std::move(ids);
      break;
    }
    case v1::GenerateRequest::kChat: {
      absl::StatusOr<std::vector<int32_t>> ids = TokenizeChat(request.chat(), model, limits);
      if (!ids.ok()) return ids.status();
      out.prompt_ids = *std::move(ids);
      break;
    }
    case v1::GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return Invalid("prompt.token_ids is empty");
      if (absl::Status s = CheckIds(ids, "prompt.token_ids.ids", model.vocab_size); !s.ok())
        return s;
      out.prompt_ids.assign(ids.begin(), ids.end());
      break;
    }
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return Invalid("prompt: one of text, chat or token_ids is required");
  }
  if (out.prompt_ids.empty()) return Invalid("prompt gives no tokens");
  const int64_t prompt_len = static_cast<int64_t>(out.prompt_ids.size());
  if (prompt_len >= max_context) {
    return Invalid("prompt is ", prompt_len, " tokens; the context holds ", max_context,
                   " including at least one generated token");
  }
  if (request.has_max_tokens()) {
    if (prompt_len + request.max_tokens() > max_context) {
      return Invalid("max_tokens: prompt (", prompt_len, " tokens) + max_tokens (",
                     request.max_tokens(), ") exceeds the context length ", max_context);
    }
    out.max_tokens = request.max_tokens();
  } else {
    out.max_tokens = static_cast<int32_t>(std::min<int64_t>(max_context - prompt_len, INT32_MAX));
  }
  if (sp.min_tokens > out.max_tokens) {
    return Invalid("min_tokens (", sp.min_tokens, ") exceeds max_tokens (", out.max_tokens, ")");
  }
  out.min_tokens = sp.min_tokens;

  // The rank's resolved parameters. The model's eos ids travel as stop ids too (generation_config
  // may list more than config.json), unless the client ignores eos.
  internal::v1::Sampling& s = out.sampling;
  s.set_temperature(sp.temperature);
  s.set_top_p(sp.top_p);
  s.set_top_k(sp.top_k);
  s.set_min_p(sp.min_p);
  s.set_repetition_penalty(sp.repetition_penalty);
  s.set_presence_penalty(sp.presence_penalty);
  s.set_frequency_penalty(sp.frequency_penalty);
  for (const auto& [token, bias] : sp.logit_bias) (*s.mutable_logit_bias())[token] = bias;
  if (sp.seed) s.set_seed(*sp.seed);
  for (int32_t id : sp.stop_token_ids) s.add_stop_token_ids(id);
  if (!sp.ignore_eos) {
    for (int32_t id : model.eos_token_ids) {
      if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), id) ==
          sp.stop_token_ids.end()) {
        s.add_stop_token_ids(id);
      }
    }
  }
  s.set_ignore_eos(sp.ignore_eos);
  s.set_min_tokens(sp.min_tokens);
  s.set_logprobs(sp.logprobs);
  return out;
}

v1::SamplingParams DefaultSampling(const ModelSpec& model) {
  v1::SamplingParams p;
  p.set_temperature(model.defaults.temperature);
  p.set_top_p(model.defaults.top_p);
  p.set_top_k(model.defaults.top_k);
  p.set_min_p(model.defaults.min_p);
  p.set_repetition_penalty(model.defaults.repetition_penalty);
  p.set_presence_penalty(0.0f);
  p.set_frequency_penalty(0.0f);
  return p;
}

}  // namespace nextserve::router
