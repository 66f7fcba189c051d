#include "tokenizer/chat_template.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace nextserve::tokenizer {
namespace {

// Debian's Abseil has its own string_view type.
absl::string_view AV(std::string_view s) {
  return {s.data(), s.size()};
}

using ojson = nlohmann::ordered_json;

constexpr std::string_view kToolsHeader =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr std::string_view kToolsFooter =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

// Python's repr(float): shortest round-trip digits; positional when the decimal exponent is in
// [-4, 16), with ".0" if integral; else d.ddde+XX with at least two exponent digits.
void AppendPythonFloat(double x, std::string* out) {
  if (std::isnan(x)) {
    out->append("NaN");
    return;
  }
  if (std::isinf(x)) {
    out->append(x < 0 ? "-Infinity" : "Infinity");
    return;
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::scientific);
  std::string_view s(buf, end - buf);  // e.g. "-1.2345e+02"
  const bool negative = s[0] == '-';
  if (negative) s.remove_prefix(1);
  const size_t e_pos = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e_pos)) {
    if (c != '.') digits.push_back(c);
  }
  const int exp10 = std::atoi(std::string(s.substr(e_pos + 1)).c_str());
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (negative) out->push_back('-');
  if (exp10 < -4 || exp10 >= 16) {
    out->push_back(digits[0]);
    if (digits.size() > 1) absl::StrAppend(out, ".", digits.substr(1));
    char e[16];
    std::snprintf(e, sizeof(e), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out->append(e);
    return;
  }
  if (exp10 < 0) {
    absl::StrAppend(out, "0.", std::string(-exp10 - 1, '0'), digits);
    return;
  }
  const size_t int_len = static_cast<size_t>(exp10) + 1;
  if (digits.size() <= int_len) {
    absl::StrAppend(out, digits, std::string(int_len - digits.size(), '0'), ".0");
  } else {
    absl::StrAppend(out, digits.substr(0, int_len), ".", digits.substr(int_len));
  }
}

// json.dumps string escaping with ensure_ascii=False: only '"', '\\' and control characters.
void AppendPythonString(std::string_view s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned char>(c));
          out->append(buf);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

void AppendPythonJson(const ojson& v, std::string* out) {
  switch (v.type()) {
    case ojson::value_t::null:
      out->append("null");
      break;
    case ojson::value_t::boolean:
      out->append(v.get<bool>() ? "true" : "false");
      break;
    case ojson::value_t::number_integer:
      absl::StrAppend(out, v.get<int64_t>());
      break;
    case ojson::value_t::number_unsigned:
      absl::StrAppend(out, v.get<uint64_t>());
      break;
    case ojson::value_t::number_float:
      AppendPythonFloat(v.get<double>(), out);
      break;
    case ojson::value_t::string:
      AppendPythonString(v.get_ref<const std::string&>(), out);
      break;
    case ojson::value_t::array: {
      out->push_back('[');
      bool first = true;
      for (const ojson& e : v) {
        if (!first) out->append(", ");
        first = false;
        AppendPythonJson(e, out);
      }
      out->push_back(']');
      break;
    }
    case ojson::value_t::object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, e] : v.items()) {
        if (!first) out->append(", ");
        first = false;
        AppendPythonString(key, out);
        out->append(": ");
        AppendPythonJson(e, out);
      }
      out->push_back('}');
      break;
    }
    default:
      out->append("null");
      break;  // binary / discarded: not produced by the parser
  }
}

}  // namespace

std::string PythonJsonDumps(const ojson& value) {
  std::string out;
  AppendPythonJson(value, &out);
  return out;
}

absl::StatusOr<std::string> RenderChat(absl::Span<const ChatMessage> messages,
                                       absl::Span<const ojson> tools, bool add_generation_prompt) {
  if (messages.empty()) return absl::InvalidArgumentError("chat: no messages");
  const bool leading_system = messages[0].role == "system";
  if (leading_system && !messages[0].content) {
    return absl::InvalidArgumentError("chat: messages[0] (system) has no string content");
  }
  std::string out;
  // The system turn: the client's system prompt, then the tool definitions if there are any.
  if (!tools.empty()) {
    out.append("<|im_start|>system\n");
    if (leading_system) absl::StrAppend(&out, *messages[0].content, "\n\n");
    out.append(kToolsHeader);
    for (const ojson& tool : tools) {
      out.push_back('\n');
      AppendPythonJson(tool, &out);
    }
    out.append(kToolsFooter);
  } else if (leading_system) {
    absl::StrAppend(&out, "<|im_start|>system\n", *messages[0].content, "<|im_end|>\n");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string_view content = m.content ? std::string_view(*m.content) : std::string_view();
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      absl::StrAppend(&out, "<|im_start|>", m.role, "\n", AV(content), "<|im_end|>\n");
    } else if (m.role == "assistant") {
      absl::StrAppend(&out, "<|im_start|>assistant\n", AV(content));
      for (size_t k = 0; k < m.tool_calls.size(); ++k) {
        const ToolCall& call = m.tool_calls[k];
        if (k > 0 || !content.empty()) out.push_back('\n');
        absl::StrAppend(&out, "<tool_call>\n{\"name\": \"", call.name, "\", \"arguments\": ");
        if (call.arguments.is_string()) {
          out.append(call.arguments.get_ref<const std::string&>());
        } else {
          AppendPythonJson(call.arguments, &out);
        }
        out.append("}\n</tool_call>");
      }
      out.append("<|im_end|>\n");
    } else if (m.role == "tool") {
      // Consecutive tool results share one user turn.
      if (i == 0 || messages[i - 1].role != "tool") out.append("<|im_start|>user");
      absl::StrAppend(&out, "\n<tool_response>\n", AV(content), "\n</tool_response>");
      if (i + 1 == messages.size() || messages[i + 1].role != "tool") out.append("<|im_end|>\n");
    }
  }
  if (add_generation_prompt) out.append("<|im_start|>assistant\n");
  return out;
}

absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(const ojson& messages) {
  if (!messages.is_array()) return absl::InvalidArgumentError("chat: messages must be an array");
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    const ojson& m = messages[i];
    const std::string where = absl::StrCat("chat: messages[", i, "]");
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " needs a string 'role'"));
    }
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (m.contains("content") && m["content"].is_string())
      msg.content = m["content"].get<std::string>();
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      const ojson& calls = m["tool_calls"];
      if (!calls.is_array())
        return absl::InvalidArgumentError(absl::StrCat(where, ".tool_calls must be an array"));
      for (size_t k = 0; k < calls.size(); ++k) {
        // {"function": {"name", "arguments"}} (OpenAI) or the inner object itself.
        const ojson* fn = &calls[k];
        if (fn->is_object() && fn->contains("function") && (*fn)["function"].is_object() &&
            !(*fn)["function"].empty()) {
          fn = &(*fn)["function"];
        }
        const std::string at = absl::StrCat(where, ".tool_calls[", k, "]");
        if (!fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(at, " needs a string 'name'"));
        }
        if (!fn->contains("arguments"))
          return absl::InvalidArgumentError(absl::StrCat(at, " needs 'arguments'"));
        msg.tool_calls.push_back({(*fn)["name"].get<std::string>(), (*fn)["arguments"]});
      }
    }
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace nextserve::tokenizer
