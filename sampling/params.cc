#include "sampling/params.h"

#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace nextserve::sampling {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view rule, double value) {
  return absl::InvalidArgumentError(
      absl::StrCat("sampling params: '", field, "' must be ", rule, ", got ", value));
}

absl::Status CheckTokens(absl::string_view field, const std::vector<int32_t>& ids,
                         int64_t vocab_size) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("sampling params: '", field, "[", i,
                                                     "]' = ", ids[i], " is not a token id in [0, ",
                                                     vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SamplingParams::Validate(int64_t vocab_size) const {
  if (vocab_size <= 0 || vocab_size > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling: vocab_size ", vocab_size, " must be in [1, 2^31)"));
  }
  // Written as !(in range) so that NaN fails too.
  if (!(temperature >= 0.0f) || std::isinf(temperature)) {
    return Bad("temperature", "finite and >= 0", temperature);
  }
  if (top_k < -1) return Bad("top_k", "-1 or 0 (disabled) or >= 1", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) return Bad("top_p", "in (0, 1]", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return Bad("min_p", "in [0, 1]", min_p);
  if (!(repetition_penalty > 0.0f) || std::isinf(repetition_penalty)) {
    return Bad("repetition_penalty", "finite and > 0", repetition_penalty);
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return Bad("presence_penalty", "in [-2, 2]", presence_penalty);
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return Bad("frequency_penalty", "in [-2, 2]", frequency_penalty);
  }
  absl::flat_hash_set<int32_t> biased;
  for (size_t i = 0; i < logit_bias.size(); ++i) {
    const auto [token, bias] = logit_bias[i];
    const std::string field = absl::StrCat("logit_bias[", i, "]");
    if (token < 0 || token >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("sampling params: '", field, "' token ", token,
                                                     " is not a token id in [0, ", vocab_size,
                                                     ")"));
    }
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling params: '", field, "' (token ", token, ") must be in [-100, 100], got ", bias));
    }
    if (!biased.insert(token).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling params: '", field, "' token ", token, " is listed twice"));
    }
  }
  if (absl::Status s = CheckTokens("stop_token_ids", stop_token_ids, vocab_size); !s.ok()) {
    return s;
  }
  if (min_tokens < 0) return Bad("min_tokens", ">= 0", min_tokens);
  if (logprobs < -1 || logprobs > kMaxLogprobs) {
    return Bad("logprobs", absl::StrCat("-1 (none) or in [0, ", kMaxLogprobs, "]"), logprobs);
  }
  return absl::OkStatus();
}

}  // namespace nextserve::sampling
