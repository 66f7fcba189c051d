#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"

namespace nextserve::tokenizer {
namespace {

// Debian's Abseil has its own string_view type.
absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }

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

}  // namespace

void Regex::CodeDeleter::operator()(pcre2_real_code_8* code) const { pcre2_code_free(code); }

absl::StatusOr<Regex> Regex::Compile(std::string_view pattern, std::string_view source) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(AV(source), ": split regex does not compile at offset ",
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
  if (st.data == nullptr || st.context == nullptr) return absl::ResourceExhaustedError("PCRE2: out of memory");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0, gap = 0;
  while (pos < n) {
    // The caller validated the UTF-8, so PCRE2 need not check it again on every call.
    int rc = jit_ ? pcre2_jit_match(code_.get(), subject, n, pos, PCRE2_NO_UTF_CHECK, st.data, st.context)
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
