#include "router/openai_api.h"

#include <cctype>
#include <random>
#include <span>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace nextserve::router::openai {
namespace {

using json = nlohmann::ordered_json;

const std::string kOpen = "<tool_call>";
const std::string kClose = "</tool_call>";

absl::Status Bad(const std::string& param, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", message));
}

absl::StatusOr<json> ParseBody(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("body: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("body: must be a JSON object");
  return j;
}

// Reads typed fields of one JSON object, remembering the first error.
class Fields {
 public:
  explicit Fields(const json& j) : j_(j) {}
  const json* Get(const char* name) const {
    auto it = j_.find(name);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  absl::Status Number(const char* name, std::optional<double>* out) const {
    if (const json* v = Get(name)) {
      if (!v->is_number()) return Bad(name, "must be a number");
      *out = v->get<double>();
    }
    return absl::OkStatus();
  }
  absl::Status Int(const char* name, std::optional<int64_t>* out) const {
    if (const json* v = Get(name)) {
      if (!v->is_number_integer()) return Bad(name, "must be an integer");
      *out = v->get<int64_t>();
    }
    return absl::OkStatus();
  }
  absl::Status Bool(const char* name, std::optional<bool>* out) const {
    if (const json* v = Get(name)) {
      if (!v->is_boolean()) return Bad(name, "must be true or false");
      *out = v->get<bool>();
    }
    return absl::OkStatus();
  }

 private:
  const json& j_;
};

#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    if (absl::Status _s = (expr); !_s.ok()) return _s; \
  } while (0)

using FieldList = std::span<const std::string_view>;
// What ParseCommon reads, and what each endpoint adds (OpenAI's names, plus vLLM's extras).
constexpr std::string_view kCommonFields[] = {"model",
                                              "max_tokens",
                                              "temperature",
                                              "top_p",
                                              "n",
                                              "stream",
                                              "stream_options",
                                              "stop",
                                              "seed",
                                              "logprobs",
                                              "presence_penalty",
                                              "frequency_penalty",
                                              "logit_bias",
                                              "user",
                                              "top_k",
                                              "min_p",
                                              "repetition_penalty",
                                              "min_tokens",
                                              "ignore_eos",
                                              "stop_token_ids",
                                              "response_format"};
constexpr std::string_view kChatFields[] = {
    "messages",    "max_completion_tokens", "top_logprobs", "tools",
    "tool_choice", "parallel_tool_calls",   "metadata",     "store"};
constexpr std::string_view kCompletionsFields[] = {"prompt", "echo", "suffix", "best_of"};

absl::Status CheckKnown(const json& j, std::initializer_list<FieldList> known,
                        const std::string& where = "") {
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool ok = false;
    for (const FieldList& list : known) {
      for (std::string_view k : list) ok = ok || it.key() == k;
    }
    if (!ok) {
      return Bad(where.empty() ? it.key() : absl::StrCat(where, ".", it.key()),
                 "unknown or unsupported parameter");
    }
  }
  return absl::OkStatus();
}

int32_t ClampInt32(int64_t v) {
  return static_cast<int32_t>(std::clamp<int64_t>(v, INT32_MIN, INT32_MAX));
}

// The parameters both endpoints share: sampling, limits, stop, stream.
absl::Status ParseCommon(const json& j, ParsedRequest* out) {
  Fields f(j);
  const json* model = f.Get("model");
  if (model == nullptr) return Bad("model", "is required");
  if (!model->is_string()) return Bad("model", "must be a string");
  out->model = model->get<std::string>();

  v1::GenerateRequest& r = out->request;
  v1::SamplingParams& s = *r.mutable_sampling();
  std::optional<double> d;
  std::optional<int64_t> i;
  std::optional<bool> b;
  RETURN_IF_ERROR(f.Number("temperature", &d));
  if (d) s.set_temperature(static_cast<float>(*d));
  d.reset();
  RETURN_IF_ERROR(f.Number("top_p", &d));
  if (d) s.set_top_p(static_cast<float>(*d));
  d.reset();
  RETURN_IF_ERROR(f.Number("min_p", &d));
  if (d) s.set_min_p(static_cast<float>(*d));
  d.reset();
  RETURN_IF_ERROR(f.Number("presence_penalty", &d));
  if (d) s.set_presence_penalty(static_cast<float>(*d));
  d.reset();
  RETURN_IF_ERROR(f.Number("frequency_penalty", &d));
  if (d) s.set_frequency_penalty(static_cast<float>(*d));
  d.reset();
  RETURN_IF_ERROR(f.Number("repetition_penalty", &d));
  if (d) s.set_repetition_penalty(static_cast<float>(*d));
  RETURN_IF_ERROR(f.Int("top_k", &i));
  if (i) s.set_top_k(ClampInt32(*i));
  i.reset();
  RETURN_IF_ERROR(f.Int("seed", &i));
  if (i) s.set_seed(static_cast<uint64_t>(*i));
  i.reset();
  RETURN_IF_ERROR(f.Int("n", &i));
  if (i && *i != 1) return Bad("n", "only n = 1 is supported");
  i.reset();
  RETURN_IF_ERROR(f.Int("min_tokens", &i));
  if (i) r.set_min_tokens(ClampInt32(*i));
  RETURN_IF_ERROR(f.Bool("ignore_eos", &b));
  if (b) r.set_ignore_eos(*b);
  b.reset();
  RETURN_IF_ERROR(f.Bool("stream", &b));
  out->stream = b.value_or(false);
  if (const json* so = f.Get("stream_options")) {
    if (!so->is_object()) return Bad("stream_options", "must be an object");
    if (!out->stream) return Bad("stream_options", "is only allowed with stream: true");
    constexpr std::string_view kStreamOptions[] = {"include_usage", "continuous_usage_stats"};
    RETURN_IF_ERROR(CheckKnown(*so, {kStreamOptions}, "stream_options"));
    std::optional<bool> usage;
    RETURN_IF_ERROR(Fields(*so).Bool("include_usage", &usage));
    out->include_usage = usage.value_or(false);
  }
  if (const json* stop = f.Get("stop")) {
    if (stop->is_string()) {
      r.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& one : *stop) {
        if (!one.is_string()) return Bad("stop", "must be a string or an array of strings");
        r.add_stop(one.get<std::string>());
      }
    } else {
      return Bad("stop", "must be a string or an array of strings");
    }
  }
  if (const json* ids = f.Get("stop_token_ids")) {
    if (!ids->is_array()) return Bad("stop_token_ids", "must be an array of token ids");
    for (const json& id : *ids) {
      if (!id.is_number_integer()) return Bad("stop_token_ids", "must be an array of token ids");
      r.add_stop_token_ids(ClampInt32(id.get<int64_t>()));
    }
  }
  if (const json* bias = f.Get("logit_bias")) {
    if (!bias->is_object()) return Bad("logit_bias", "must map token ids to numbers");
    for (auto it = bias->begin(); it != bias->end(); ++it) {
      const std::string& key = it.key();
      if (key.empty() || key.size() > 10 ||
          !std::all_of(key.begin(), key.end(), [](char c) { return std::isdigit(c) != 0; })) {
        return Bad("logit_bias", absl::StrCat("key '", key, "' is not a token id"));
      }
      if (!it->is_number())
        return Bad("logit_bias", absl::StrCat("value of '", key, "' is not a number"));
      (*s.mutable_logit_bias())[ClampInt32(std::stoll(key))] = it->get<float>();
    }
  }
  if (const json* fmt = f.Get("response_format")) {
    if (!fmt->is_object() || fmt->value("type", "") != "text")
      return Bad("response_format", "only {\"type\": \"text\"} is supported");
  }
  return absl::OkStatus();
}

absl::Status SetMaxTokens(const json& j, ParsedRequest* out, std::optional<int64_t> fallback) {
  Fields f(j);
  std::optional<int64_t> max_tokens, max_completion;
  RETURN_IF_ERROR(f.Int("max_tokens", &max_tokens));
  RETURN_IF_ERROR(f.Int("max_completion_tokens", &max_completion));
  std::optional<int64_t> n = max_completion ? max_completion : max_tokens;
  if (!n) n = fallback;
  if (n) {
    if (*n < 1)
      return Bad(max_completion ? "max_completion_tokens" : "max_tokens", "must be at least 1");
    out->request.set_max_tokens(ClampInt32(*n));
  }
  return absl::OkStatus();
}

// A message's content: a string, null, or an array of {"type": "text", "text": ...} parts.
absl::StatusOr<std::string> ContentText(const json& m, const std::string& where) {
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) return Bad(where + ".content", "must be a string or an array of parts");
  std::string text;
  for (size_t k = 0; k < it->size(); ++k) {
    const json& part = (*it)[k];
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return Bad(absl::StrCat(where, ".content[", k, "]"), "only text parts are supported");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

absl::StatusOr<ParsedRequest> ParseChatCompletions(const std::string& body) {
  absl::StatusOr<json> j = ParseBody(body);
  if (!j.ok()) return j.status();
  RETURN_IF_ERROR(CheckKnown(*j, {kCommonFields, kChatFields}));
  ParsedRequest out;
  out.endpoint = Endpoint::kChat;
  RETURN_IF_ERROR(ParseCommon(*j, &out));
  RETURN_IF_ERROR(SetMaxTokens(*j, &out, std::nullopt));
  Fields f(*j);
  std::optional<bool> logprobs;
  RETURN_IF_ERROR(f.Bool("logprobs", &logprobs));
  std::optional<int64_t> top;
  RETURN_IF_ERROR(f.Int("top_logprobs", &top));
  out.logprobs = logprobs.value_or(false);
  if (top) {
    if (!out.logprobs) return Bad("top_logprobs", "requires logprobs: true");
    if (*top < 0 || *top > 20) return Bad("top_logprobs", "must be in [0, 20]");
    out.top_logprobs = static_cast<int>(*top);
  }
  if (out.logprobs) out.request.set_logprobs(out.top_logprobs);

  v1::Chat* chat = out.request.mutable_chat();
  const json* messages = f.Get("messages");
  if (messages == nullptr) return Bad("messages", "is required");
  if (!messages->is_array() || messages->empty())
    return Bad("messages", "must be a non-empty array");
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return Bad(where, "must be an object");
    constexpr std::string_view kMessageFields[] = {
        "role", "content", "name", "tool_calls", "tool_call_id", "refusal", "reasoning_content"};
    RETURN_IF_ERROR(CheckKnown(m, {kMessageFields}, where));
    if (!m.contains("role") || !m["role"].is_string()) return Bad(where + ".role", "is required");
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for it
    v1::ChatMessage* out_m = chat->add_messages();
    out_m->set_role(role);
    absl::StatusOr<std::string> content = ContentText(m, where);
    if (!content.ok()) return content.status();
    out_m->set_content(*content);
    if (m.contains("name") && m["name"].is_string()) out_m->set_name(m["name"].get<std::string>());
    if (m.contains("tool_call_id") && m["tool_call_id"].is_string())
      out_m->set_tool_call_id(m["tool_call_id"].get<std::string>());
    if (auto tc = m.find("tool_calls"); tc != m.end() && !tc->is_null()) {
      if (!tc->is_array()) return Bad(where + ".tool_calls", "must be an array");
      for (size_t k = 0; k < tc->size(); ++k) {
        const json& call = (*tc)[k];
        const std::string at = absl::StrCat(where, ".tool_calls[", k, "]");
        const json* fn =
            call.is_object() && call.contains("function") ? &call["function"] : nullptr;
        if (fn == nullptr || !fn->is_object() || !fn->contains("name") ||
            !(*fn)["name"].is_string())
          return Bad(at + ".function.name", "is required");
        v1::ToolCall* out_c = out_m->add_tool_calls();
        out_c->set_name((*fn)["name"].get<std::string>());
        const json args = fn->value("arguments", json("{}"));
        out_c->set_arguments_json(args.is_string() ? args.get<std::string>() : args.dump());
      }
    }
  }
  bool render_tools = true;
  if (const json* choice = f.Get("tool_choice")) {
    if (choice->is_string() && choice->get<std::string>() == "none") {
      render_tools = false;
    } else if (!(choice->is_string() && choice->get<std::string>() == "auto")) {
      return Bad("tool_choice", "only \"auto\" and \"none\" are supported");
    }
  }
  if (const json* tools = f.Get("tools"); tools != nullptr && render_tools) {
    if (!tools->is_array()) return Bad("tools", "must be an array");
    for (size_t t = 0; t < tools->size(); ++t) {
      const json& tool = (*tools)[t];
      const std::string at = absl::StrCat("tools[", t, "]");
      if (!tool.is_object() || tool.value("type", "function") != "function" ||
          !tool.contains("function") || !tool["function"].is_object())
        return Bad(at, "must be {\"type\": \"function\", \"function\": {...}}");
      const json& fn = tool["function"];
      if (!fn.contains("name") || !fn["name"].is_string())
        return Bad(at + ".function.name", "is required");
      v1::Tool* out_t = chat->add_tools();
      out_t->set_name(fn["name"].get<std::string>());
      if (fn.contains("description") && fn["description"].is_string())
        out_t->set_description(fn["description"].get<std::string>());
      if (fn.contains("parameters") && !fn["parameters"].is_null())
        out_t->set_parameters_json(fn["parameters"].dump());
    }
    out.tools = tools->size() > 0;
  }
  return out;
}

absl::StatusOr<ParsedRequest> ParseCompletions(const std::string& body) {
  absl::StatusOr<json> j = ParseBody(body);
  if (!j.ok()) return j.status();
  RETURN_IF_ERROR(CheckKnown(*j, {kCommonFields, kCompletionsFields}));
  ParsedRequest out;
  out.endpoint = Endpoint::kCompletions;
  RETURN_IF_ERROR(ParseCommon(*j, &out));
  RETURN_IF_ERROR(SetMaxTokens(*j, &out, /*OpenAI's default=*/16));
  Fields f(*j);
  std::optional<bool> echo;
  RETURN_IF_ERROR(f.Bool("echo", &echo));
  if (echo.value_or(false)) return Bad("echo", "is not supported");
  if (f.Get("suffix") != nullptr) return Bad("suffix", "is not supported");
  std::optional<int64_t> best_of, logprobs;
  RETURN_IF_ERROR(f.Int("best_of", &best_of));
  if (best_of && *best_of != 1) return Bad("best_of", "only best_of = 1 is supported");
  RETURN_IF_ERROR(f.Int("logprobs", &logprobs));
  if (logprobs) {
    if (*logprobs < 0 || *logprobs > 20) return Bad("logprobs", "must be in [0, 20]");
    out.logprobs = true;
    out.top_logprobs = static_cast<int>(*logprobs);
    out.request.set_logprobs(out.top_logprobs);
  }
  const json* prompt = f.Get("prompt");
  if (prompt == nullptr) return Bad("prompt", "is required");
  const json* p = prompt;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
  if (p->is_string()) {
    out.request.set_text(p->get<std::string>());
  } else if (p->is_array() && !p->empty() && std::all_of(p->begin(), p->end(), [](const json& v) {
               return v.is_number_integer();
             })) {
    for (const json& id : *p)
      out.request.mutable_token_ids()->add_ids(ClampInt32(id.get<int64_t>()));
  } else if (p->is_array() && p->size() > 1) {
    return Bad("prompt", "a batch of prompts is not supported: send one request per prompt");
  } else {
    return Bad("prompt", "must be a string or an array of token ids");
  }
  return out;
}

HttpError MakeError(int http_status, const std::string& type, const std::string& message,
                    const std::string& param) {
  json err = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", http_status}};
  if (!param.empty()) err["param"] = param;
  return {http_status, json{{"error", err}}.dump()};
}

HttpError ErrorFor(const absl::Status& status) {
  const std::string message(status.message());
  // The parameter is the message's leading path (ours, or the router's nextserve.v1 field path).
  size_t end = 0;
  while (end < message.size() &&
         (std::isalnum(static_cast<unsigned char>(message[end])) || message[end] == '_' ||
          message[end] == '.' || message[end] == '[' || message[end] == ']'))
    ++end;
  std::string param = message.substr(0, end);
  for (const std::string prefix : {"sampling.", "prompt.chat."}) {
    if (absl::StartsWith(param, prefix)) param = param.substr(prefix.size());
  }
  if (absl::StartsWith(param, "prompt.")) param = "prompt";
  if (param == "sampling") {  // "sampling params: 'temperature' must be ..."
    const size_t open = message.find('\'');
    const size_t close = open == std::string::npos ? open : message.find('\'', open + 1);
    param = close == std::string::npos ? "" : message.substr(open + 1, close - open - 1);
  }
  if (param == "request") param.clear();
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return MakeError(400, "invalid_request_error", message, param);
    case absl::StatusCode::kUnauthenticated:
      return MakeError(401, "authentication_error", message);
    case absl::StatusCode::kPermissionDenied:
      return MakeError(403, "permission_error", message);
    case absl::StatusCode::kNotFound:
      return MakeError(404, "not_found_error", message);
    case absl::StatusCode::kResourceExhausted:
      return MakeError(429, "rate_limit_error", message);
    case absl::StatusCode::kUnavailable:
      return MakeError(503, "service_unavailable", message);
    case absl::StatusCode::kDeadlineExceeded:
      return MakeError(504, "timeout", message);
    default:
      return MakeError(500, "server_error", message);
  }
}

// --- tool calls ---------------------------------------------------------------------------------

std::string ToolCallParser::Add(const std::string& text) {
  held_ += text;
  std::string content;
  for (;;) {
    if (!in_block_) {
      const size_t at = held_.find(kOpen);
      if (at == std::string::npos) {
        // Keep the longest tail that could still grow into "<tool_call>".
        size_t keep = 0;
        for (size_t n = std::min(held_.size(), kOpen.size() - 1); n > 0; --n) {
          if (held_.compare(held_.size() - n, n, kOpen, 0, n) == 0) {
            keep = n;
            break;
          }
        }
        content += held_.substr(0, held_.size() - keep);
        held_.erase(0, held_.size() - keep);
        return content;
      }
      content += held_.substr(0, at);
      held_.erase(0, at + kOpen.size());
      in_block_ = true;
    }
    const size_t end = held_.find(kClose);
    if (end == std::string::npos) return content;
    const std::string block = held_.substr(0, end);
    held_.erase(0, end + kClose.size());
    in_block_ = false;
    const size_t before = calls_.size();
    ParseBlock(block);
    if (calls_.size() == before) absl::StrAppend(&content, kOpen, block, kClose);
  }
}

std::string ToolCallParser::Finish() {
  std::string rest = in_block_ ? absl::StrCat(kOpen, held_) : held_;
  held_.clear();
  in_block_ = false;
  return rest;
}

void ToolCallParser::ParseBlock(const std::string& block) {
  json j = json::parse(block, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("name") || !j["name"].is_string()) return;
  const json args = j.value("arguments", json::object());
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  calls_.push_back({.id = absl::StrCat("call_", absl::Hex(rng(), absl::kZeroPad16)),
                    .name = j["name"].get<std::string>(),
                    .arguments = args.is_string() ? args.get<std::string>() : args.dump()});
}

// --- responses ----------------------------------------------------------------------------------

ResponseBuilder::ResponseBuilder(const ParsedRequest& request,
                                 const tokenizer::Tokenizer& tokenizer, std::string id,
                                 int64_t created)
    : request_(request), tokenizer_(tokenizer), id_(std::move(id)), created_(created) {}

namespace {

json Usage(const v1::Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens()},
          {"completion_tokens", u.completion_tokens()},
          {"total_tokens", u.prompt_tokens() + u.completion_tokens()}};
}

// The token as text (invalid UTF-8 of a partial character replaced, as vLLM does) and its bytes.
std::pair<std::string, json> TokenText(const tokenizer::Tokenizer& tok, int32_t id) {
  const std::string_view bytes = tok.InRange(id) ? tok.TokenBytes(id) : std::string_view();
  json list = json::array();
  for (unsigned char c : bytes) list.push_back(static_cast<int>(c));
  return {json(std::string(bytes)).dump(-1, ' ', false, json::error_handler_t::replace), list};
}

std::string TokenString(const tokenizer::Tokenizer& tok, int32_t id) {
  return json::parse(TokenText(tok, id).first).get<std::string>();
}

json ToolCallsJson(const std::vector<ToolCallParser::ToolCall>& calls, bool with_index) {
  json out = json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    json c = {{"id", calls[i].id},
              {"type", "function"},
              {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
    if (with_index) {
      json indexed = {{"index", i}};
      indexed.update(c);
      c = std::move(indexed);
    }
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

std::string ResponseBuilder::LogprobsJson(const std::vector<v1::TokenLogprobs>& lps) const {
  if (request_.endpoint == Endpoint::kChat) {
    json content = json::array();
    for (const v1::TokenLogprobs& lp : lps) {
      auto [text, bytes] = TokenText(tokenizer_, lp.token_id());
      json top = json::array();
      for (const v1::TopLogprob& t : lp.top()) {
        auto [ttext, tbytes] = TokenText(tokenizer_, t.token_id());
        top.push_back({{"token", json::parse(ttext)}, {"logprob", t.logprob()}, {"bytes", tbytes}});
      }
      content.push_back({{"token", json::parse(text)},
                         {"logprob", lp.logprob()},
                         {"bytes", bytes},
                         {"top_logprobs", top}});
    }
    return json{{"content", content}}.dump();
  }
  json tokens = json::array(), token_logprobs = json::array(), tops = json::array();
  for (const v1::TokenLogprobs& lp : lps) {
    tokens.push_back(TokenString(tokenizer_, lp.token_id()));
    token_logprobs.push_back(lp.logprob());
    json top = json::object();
    for (const v1::TopLogprob& t : lp.top())
      top[TokenString(tokenizer_, t.token_id())] = t.logprob();
    tops.push_back(top);
  }
  return json{{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", tops}}
      .dump();
}

std::string ResponseBuilder::FinishReason(const v1::Final& final) const {
  if (!tool_calls_.calls().empty()) return "tool_calls";
  return final.finish_reason() == v1::FINISH_REASON_LENGTH ? "length" : "stop";
}

std::string ResponseBuilder::Chunk(const std::string& choice_json, bool with_usage_null) const {
  const bool chat = request_.endpoint == Endpoint::kChat;
  json chunk = {{"id", id_},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created_},
                {"model", request_.model},
                {"choices", json::array({json::parse(choice_json)})}};
  if (with_usage_null) chunk["usage"] = nullptr;
  return chunk.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::vector<std::string> ResponseBuilder::DeltaChunks(const v1::Delta& delta) {
  std::vector<std::string> out;
  const bool chat = request_.endpoint == Endpoint::kChat;
  std::string text = request_.tools ? tool_calls_.Add(delta.text()) : delta.text();
  const std::vector<v1::TokenLogprobs> lps(delta.logprobs().begin(), delta.logprobs().end());
  if (text.empty() && !(request_.logprobs && !lps.empty()) && role_sent_) return out;
  json choice = {{"index", 0}};
  if (chat) {
    json d = json::object();
    if (!role_sent_) d["role"] = "assistant";
    d["content"] = text;
    choice["delta"] = d;
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] =
      request_.logprobs && !lps.empty() ? json::parse(LogprobsJson(lps)) : json(nullptr);
  choice["finish_reason"] = nullptr;
  role_sent_ = true;
  out.push_back(
      Chunk(choice.dump(-1, ' ', false, json::error_handler_t::replace), request_.include_usage));
  return out;
}

std::vector<std::string> ResponseBuilder::FinalChunks(const v1::Final& final) {
  std::vector<std::string> out;
  const bool chat = request_.endpoint == Endpoint::kChat;
  const std::string rest = request_.tools ? tool_calls_.Finish() : "";
  json choice = {{"index", 0}};
  if (chat) {
    json d = json::object();
    if (!role_sent_) d["role"] = "assistant";
    if (!rest.empty()) d["content"] = rest;
    if (!tool_calls_.calls().empty()) d["tool_calls"] = ToolCallsJson(tool_calls_.calls(), true);
    choice["delta"] = d;
  } else {
    choice["text"] = rest;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = FinishReason(final);
  out.push_back(
      Chunk(choice.dump(-1, ' ', false, json::error_handler_t::replace), request_.include_usage));
  if (request_.include_usage) {
    json usage_chunk = {{"id", id_},
                        {"object", chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created_},
                        {"model", request_.model},
                        {"choices", json::array()},
                        {"usage", Usage(final.usage())}};
    out.push_back(usage_chunk.dump());
  }
  return out;
}

void ResponseBuilder::Add(const v1::Delta& delta) {
  text_ += request_.tools ? tool_calls_.Add(delta.text()) : delta.text();
  logprobs_.insert(logprobs_.end(), delta.logprobs().begin(), delta.logprobs().end());
}

std::string ResponseBuilder::Whole(const v1::Final& final) {
  if (request_.tools) text_ += tool_calls_.Finish();
  const bool chat = request_.endpoint == Endpoint::kChat;
  json choice = {{"index", 0}};
  if (chat) {
    json message = {{"role", "assistant"}};
    message["content"] =
        text_.empty() && !tool_calls_.calls().empty() ? json(nullptr) : json(text_);
    if (!tool_calls_.calls().empty())
      message["tool_calls"] = ToolCallsJson(tool_calls_.calls(), false);
    choice["message"] = message;
  } else {
    choice["text"] = text_;
  }
  choice["logprobs"] = request_.logprobs ? json::parse(LogprobsJson(logprobs_)) : json(nullptr);
  choice["finish_reason"] = FinishReason(final);
  json body = {{"id", id_},
               {"object", chat ? "chat.completion" : "text_completion"},
               {"created", created_},
               {"model", request_.model},
               {"choices", json::array({choice})},
               {"usage", Usage(final.usage())}};
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ModelsJson(const std::string& model_name, int64_t created, int64_t max_context) {
  json model = {{"id", model_name},
                {"object", "model"},
                {"created", created},
                {"owned_by", "nextserve"},
                {"max_model_len", max_context}};
  return json{{"object", "list"}, {"data", json::array({model})}}.dump();
}

}  // namespace nextserve::router::openai
