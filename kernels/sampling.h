// One row's sampling settings for Backend::SampleRows: the host sampling::Sampler's transforms
// (sampling/sampler.h has the definitions and is the reference), flattened into plain values and
// host spans so that a backend can apply them to many rows in one call.
#pragma once

#include <cstdint>
#include <span>

namespace nextserve::kernels {

struct SamplingRow {
  float temperature = 1.0f;  // < 1e-5: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f, frequency_penalty = 0.0f, presence_penalty = 0.0f;
  uint64_t seed = 0;
  uint64_t draw = 0;  // Philox counter: tokens generated so far
  // Token ids seen in prompt or output (repetition penalty) and the output's ids with their counts
  // (frequency / presence), host memory.
  std::span<const int32_t> seen;
  std::span<const int32_t> output_ids;
  std::span<const int32_t> output_counts;
  // Ids set to -inf (min_tokens: stop ids) and additive biases.
  std::span<const int32_t> banned;
  std::span<const int32_t> bias_ids;
  std::span<const float> bias_values;
};

}  // namespace nextserve::kernels
