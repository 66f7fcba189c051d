#include "sampling/sampler.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "sampling/philox.h"
#include "sampling/row_ops.h"
#include "sampling/row_step.h"

namespace nextserve::sampling {
namespace {

absl::Status Prefixed(const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat("sampler: ", s.message()));
}

}  // namespace

absl::StatusOr<Sampler> Sampler::Create(const SamplingParams& params, int64_t vocab_size,
                                        std::span<const int32_t> prompt_tokens,
                                        std::span<const int32_t> eos_token_ids,
                                        int64_t already_generated) {
  if (absl::Status s = params.Validate(vocab_size); !s.ok()) return s;
  if (already_generated < 0 || already_generated > static_cast<int64_t>(prompt_tokens.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampler: already_generated = ", already_generated, " is not in [0, ",
                     prompt_tokens.size(), "] (the prompt's size)"));
  }
  auto check_ids = [&](absl::string_view what, std::span<const int32_t> ids) -> absl::Status {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sampler: ", what, "[", i, "] = ", ids[i],
                                                       " is not a token id in [0, ", vocab_size,
                                                       ")"));
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status s = check_ids("prompt_tokens", prompt_tokens); !s.ok()) return s;
  if (absl::Status s = check_ids("eos_token_ids", eos_token_ids); !s.ok()) return s;

  Sampler r;
  r.params_ = params;
  r.vocab_size_ = vocab_size;
  if (params.seed.has_value()) {
    r.seed_ = *params.seed;
  } else {
    std::random_device device;
    r.seed_ = (uint64_t{device()} << 32) ^ device();
  }
  std::vector<int32_t> stop_ids = params.stop_token_ids;
  if (!params.ignore_eos)
    stop_ids.insert(stop_ids.end(), eos_token_ids.begin(), eos_token_ids.end());
  r.history_ = RowHistory(params, stop_ids, prompt_tokens, already_generated);
  return r;
}

absl::Status Sampler::CheckSize(std::span<const float> logits) const {
  if (static_cast<int64_t>(logits.size()) != vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat("sampler: logits row has ", logits.size(),
                                                   " entries, vocabulary has ", vocab_size_));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Sampler::Record(int32_t token) {
  if (token < 0 || token >= vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat("sampler: recorded token ", token,
                                                   " is not a token id in [0, ", vocab_size_, ")"));
  }
  history_.Record(token);
  return IsStop(token);
}

absl::StatusOr<SampleResult> Sampler::Sample(std::span<const float> logits) {
  if (absl::Status s = CheckSize(logits); !s.ok()) return s;
  const bool want_logprobs = params_.logprobs >= 0;
  const kernels::SamplingRow row = Row();
  absl::StatusOr<internal::RowStep> prepared = internal::PrepareRow(logits, row, want_logprobs);
  if (!prepared.ok()) return Prefixed(prepared.status());
  const internal::RowStep& st = *prepared;
  internal::RowScratch& s = internal::ThreadScratch();

  // One draw per step, greedy or not: draw t depends only on (seed, t).
  const int64_t token = internal::PickToken(st, PhiloxUniform(row.seed, row.draw));

  SampleResult result;
  result.token = static_cast<int32_t>(token);
  if (want_logprobs) {
    const float wt = st.w[token];
    result.logprob = static_cast<float>(st.Logprob(token));
    const size_t n_top = static_cast<size_t>(params_.logprobs);
    if (st.listed) {
      result.rank = static_cast<int32_t>(
          std::count_if(s.kept.begin(), s.kept.end(), [&](int32_t i) { return st.w[i] >= wt; }));
      for (size_t j = 0; j < std::min(n_top, s.kept.size()); ++j) {
        result.top_logprobs.push_back({s.kept[j], static_cast<float>(st.Logprob(s.kept[j]))});
      }
    } else {
      result.rank = static_cast<int32_t>(internal::CountKeptAtLeast(st.w, st.n, st.cut, wt));
      if (n_top > 0) {
        std::vector<int32_t>& top = s.top;
        top.clear();
        internal::TopKWithTies(st.w, st.n, static_cast<int64_t>(n_top), &top, &s.top_k);
        internal::SortInOrder(st.w, top);
        for (int32_t i : top) {
          if (result.top_logprobs.size() == n_top) break;
          if (st.cut.Keeps(st.w[i], i)) {
            result.top_logprobs.push_back({i, static_cast<float>(st.Logprob(i))});
          }
        }
      }
    }
  }
  history_.Record(result.token);  // invalidates `row`
  result.stop = IsStop(result.token);
  return result;
}

absl::StatusOr<std::vector<float>> Sampler::Probabilities(std::span<const float> logits) const {
  if (absl::Status s = CheckSize(logits); !s.ok()) return s;
  absl::StatusOr<internal::RowStep> prepared =
      internal::PrepareRow(logits, Row(), /*want_logprobs=*/false);
  if (!prepared.ok()) return Prefixed(prepared.status());
  const internal::RowStep& st = *prepared;
  const internal::RowScratch& s = internal::ThreadScratch();
  std::vector<float> probs(st.n, 0.0f);
  if (st.argmax >= 0) {
    probs[st.argmax] = 1.0f;
  } else if (st.listed) {
    for (size_t j = 0; j < s.kept.size(); ++j) probs[s.kept[j]] = s.kept_e[j] / st.total;
  } else {
    for (int64_t i = 0; i < st.n; ++i) {
      if (st.cut.Keeps(st.w[i], i)) probs[i] = static_cast<float>(s.e[i] / st.total);
    }
  }
  return probs;
}

}  // namespace nextserve::sampling
