#include "sampling/row_settings.h"

#include <algorithm>

namespace nextserve::sampling {

RowHistory::RowHistory(const SamplingParams& params, std::span<const int32_t> stop_ids,
                       std::span<const int32_t> prompt_tokens, int64_t already_generated)
    : min_tokens_(params.min_tokens),
      track_seen_(params.repetition_penalty != 1.0f),
      track_counts_(params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f),
      stop_ids_(stop_ids.begin(), stop_ids.end()) {
  std::sort(stop_ids_.begin(), stop_ids_.end());
  stop_ids_.erase(std::unique(stop_ids_.begin(), stop_ids_.end()), stop_ids_.end());
  for (const auto& [token, bias] : params.logit_bias) {
    bias_ids_.push_back(token);
    bias_values_.push_back(bias);
  }
  const size_t prompt_only = prompt_tokens.size() - static_cast<size_t>(already_generated);
  if (track_seen_) {
    for (int32_t t : prompt_tokens.first(prompt_only)) {
      if (seen_set_.insert(t).second) seen_.push_back(t);
    }
  }
  // A resumed request's output so far: the same bookkeeping as if it had been recorded here.
  for (int32_t t : prompt_tokens.last(static_cast<size_t>(already_generated))) Record(t);
}

void RowHistory::Record(int32_t token) {
  ++num_generated_;
  if (track_seen_ && seen_set_.insert(token).second) seen_.push_back(token);
  if (track_counts_) {
    const auto [it, added] =
        output_index_.try_emplace(token, static_cast<int32_t>(output_ids_.size()));
    if (added) {
      output_ids_.push_back(token);
      output_counts_.push_back(0);
    }
    ++output_counts_[it->second];
  }
}

bool RowHistory::IsStop(int32_t token) const {
  return std::binary_search(stop_ids_.begin(), stop_ids_.end(), token);
}

kernels::SamplingRow RowSettings(const SamplingParams& params, uint64_t seed,
                                 const RowHistory& history) {
  kernels::SamplingRow row;
  row.temperature = params.temperature;
  row.top_k = params.top_k;
  row.top_p = params.top_p;
  row.min_p = params.min_p;
  row.repetition_penalty = params.repetition_penalty;
  row.frequency_penalty = params.frequency_penalty;
  row.presence_penalty = params.presence_penalty;
  row.seed = seed;
  row.draw = static_cast<uint64_t>(history.num_generated_);
  row.seen = history.seen_;
  row.output_ids = history.output_ids_;
  row.output_counts = history.output_counts_;
  if (history.num_generated_ < history.min_tokens_) row.banned = history.stop_ids_;
  row.bias_ids = history.bias_ids_;
  row.bias_values = history.bias_values_;
  return row;
}

}  // namespace nextserve::sampling
