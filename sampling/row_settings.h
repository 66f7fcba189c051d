// A request's sampling state in the flat form a kernels::SamplingRow points into, and the row
// settings of its next step. The Sampler keeps one; so can an engine that samples a whole step
// with one Backend::SampleRows call:
//
//   rows[i] = RowSettings(params, seed, history);      // views into history
//   ... backend.SampleRows(logits, rows, tokens) ...
//   history.Record(tokens[i]);                          // invalidates rows[i]
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "kernels/sampling.h"
#include "sampling/params.h"

namespace nextserve::sampling {

class RowHistory {
 public:
  RowHistory() = default;
  // stop_ids: masked while fewer than params.min_tokens tokens are generated (the Sampler passes
  // params.stop_token_ids plus the eos ids unless ignore_eos). A request resumed elsewhere passes
  // its output so far as the last `already_generated` prompt tokens: they count as output. Ids
  // must be token ids and already_generated in [0, prompt size] (Sampler::Create checks).
  RowHistory(const SamplingParams& params, std::span<const int32_t> stop_ids,
             std::span<const int32_t> prompt_tokens, int64_t already_generated);

  // The token this step produced: for the penalties, min_tokens and the draw counter.
  void Record(int32_t token);

  int64_t num_generated() const { return num_generated_; }
  bool IsStop(int32_t token) const;

 private:
  friend kernels::SamplingRow RowSettings(const SamplingParams& params, uint64_t seed,
                                          const RowHistory& history);

  int32_t min_tokens_ = 0;
  bool track_seen_ = false;    // repetition_penalty != 1
  bool track_counts_ = false;  // presence or frequency penalty != 0
  int64_t num_generated_ = 0;
  std::vector<int32_t> stop_ids_;  // sorted, unique
  std::vector<int32_t> bias_ids_;
  std::vector<float> bias_values_;
  std::vector<int32_t> seen_;  // prompt + output, unique, in order of first appearance
  absl::flat_hash_set<int32_t> seen_set_;
  std::vector<int32_t> output_ids_, output_counts_;     // unique ids, in order of first appearance
  absl::flat_hash_map<int32_t, int32_t> output_index_;  // id -> position in output_ids_
};

// The settings of the request's next step: params' values, `seed`, draw = tokens generated so
// far, and views into `history` (valid until history is recorded into, moved or destroyed).
// Only the fields that change the result are filled: no seen ids when repetition_penalty is 1, no
// banned ids once min_tokens are generated.
kernels::SamplingRow RowSettings(const SamplingParams& params, uint64_t seed,
                                 const RowHistory& history);

}  // namespace nextserve::sampling
