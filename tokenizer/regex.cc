#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"

namespace nextserve::tokenizer {
namespace {

// Debian's Abseil has its own string_view type.
absl::string_view AV(std::string_view s) {
  return {s.data(), s.size()};
}

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

// Per-thread match state: match data sized for any pattern we compile (the split regexes have
// no capture groups, but size for a few) and a JIT stack large enough for long runs.
struct ThreadMatchState {
  ThreadMatchState() {
    data = pcre2_match_data_create(16, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context != nullptr && jit_stack != nullptr) {
      pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
};

ThreadMatchState& MatchState() {
  thread_local ThreadMatchState state;
  return state;
}

// Oniguruma (HF tokenizers' regex engine) reads \s as Unicode White_Space; PCRE2 with UCP
// adds U+180E MONGOLIAN VOWEL SEPARATOR (in its \h list, no longer a space since Unicode 6.3),
// which splits "-\u180e'" differently. So \s and \S are spelled out as White_Space itself.
constexpr std::string_view kWhiteSpace =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{"
    "202F}"
    "\\x{205F}\\x{3000}";

absl::StatusOr<std::string> TranslateOnigPattern(std::string_view pattern,
                                                 std::string_view source) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpace) : absl::StrCat("[", AV(kWhiteSpace), "]");
      } else if (e == 'S') {
        if (in_class) {
          return absl::UnimplementedError(
              absl::StrCat(AV(source), ": \\S inside a character class"));
        }
        out += absl::StrCat("[^", AV(kWhiteSpace), "]");
      } else if (e == 'Q') {
        return absl::UnimplementedError(absl::StrCat(AV(source), ": \\Q in the split regex"));
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

void Regex::CodeDeleter::operator()(pcre2_real_code_8* code) const {
  pcre2_code_free(code);
}

absl::StatusOr<Regex> Regex::Compile(std::string_view pattern, std::string_view source) {
  absl::StatusOr<std::string> translated = TranslateOnigPattern(pattern, source);
  if (!translated.ok()) return translated.status();
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated->data()), translated->size(),
                    PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(AV(source),
                                                   ": split regex does not compile at offset ",
                                                   offset, ": ", Pcre2Message(error)));
  }
  Regex regex;
  regex.code_.reset(code);
  regex.pattern_ = std::string(pattern);
  // JIT is a speed-up only; without it (e.g. an unsupported CPU) the interpreter is used.
  regex.jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

absl::Status Regex::Split(std::string_view text, absl::FunctionRef<void(size_t, size_t)> fn) const {
  ThreadMatchState& st = MatchState();
  if (st.data == nullptr || st.context == nullptr)
    return absl::ResourceExhaustedError("PCRE2: out of memory");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0, gap = 0;
  while (pos < n) {
    // The caller validated the UTF-8, so PCRE2 need not check it again on every call.
    int rc = jit_ ? pcre2_jit_match(code_.get(), subject, n, pos, PCRE2_NO_UTF_CHECK, st.data,
                                    st.context)
                  : PCRE2_ERROR_JIT_BADOPTION;
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_JIT_BADOPTION) {
      // The interpreter keeps its backtracking frames on the heap: slower, no stack limit.
      rc = pcre2_match(code_.get(), subject, n, pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) return absl::InternalError(absl::StrCat("PCRE2 match failed: ", Pcre2Message(rc)));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const size_t begin = ov[0], end = ov[1];
    if (end == begin) {
      // An empty match splits nothing; step over one character.
      pos = begin + 1;
      while (pos < n && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    if (begin > gap) fn(gap, begin);
    fn(begin, end);
    pos = gap = end;
  }
  if (gap < n) fn(gap, n);
  return absl::OkStatus();
}

}  // namespace nextserve::tokenizer
