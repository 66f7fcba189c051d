// The pre-tokenizer's split regex, compiled once with PCRE2 (UTF + UCP, JIT when available).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct pcre2_real_code_8;

namespace nextserve::tokenizer {

class Regex {
 public:
  // `pattern` is the Oniguruma-style pattern of a tokenizer.json (PCRE2 reads the ones HF
  // tokenizers use: \p{L}, \p{N}, (?i:...), (?!\S)). `source` names it in errors.
  static absl::StatusOr<Regex> Compile(std::string_view pattern, std::string_view source);

  // Splits `text` (valid UTF-8) the way HF's Split pre-tokenizer with behavior "Isolated" does:
  // every match is a piece and so is every gap between matches. Calls fn(begin, end) in order.
  absl::Status Split(std::string_view text, absl::FunctionRef<void(size_t, size_t)> fn) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct CodeDeleter {
    void operator()(pcre2_real_code_8* code) const;
  };
  std::unique_ptr<pcre2_real_code_8, CodeDeleter> code_;
  std::string pattern_;
  bool jit_ = false;
};

}  // namespace nextserve::tokenizer
