// A request's sampling parameters, with vLLM's names, defaults and ranges (OpenAI API semantics).
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace nextserve::sampling {

// Temperatures below this are greedy (vLLM's _SAMPLING_EPS): dividing by them overflows.
inline constexpr float kGreedyTemperature = 1e-5f;
// Most top logprobs a request may ask for (vLLM's default max_logprobs).
inline constexpr int32_t kMaxLogprobs = 20;

struct SamplingParams {
  // 0 (or < kGreedyTemperature): greedy, argmax with ties to the lowest id; top_k, top_p, min_p
  // and seed are then ignored. Otherwise logits are divided by it. Must be finite and >= 0.
  float temperature = 1.0f;
  // Keep the k highest logits, plus every token tied with the k-th (as HF and vLLM do).
  // 0 or -1: disabled. k >= vocab: disabled.
  int32_t top_k = 0;
  // Keep the smallest most-likely-first prefix whose probability reaches top_p (ties in order of
  // id); always at least one token. In (0, 1]; 1 disables.
  float top_p = 1.0f;
  // Drop tokens whose probability is below min_p times the largest. In [0, 1]; 0 disables.
  float min_p = 0.0f;
  // HF/vLLM: for every token seen in prompt or output, logit > 0 ? logit / p : logit * p.
  // > 0; 1 disables.
  float repetition_penalty = 1.0f;
  // OpenAI/vLLM, over output tokens only: logit -= presence * (count > 0) + frequency * count.
  // Each in [-2, 2].
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Added to the logit of each listed token; each bias in [-100, 100] (OpenAI), ids unique.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Sampling one of these ends the request (besides the model's eos ids, unless ignore_eos).
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  // Stop ids (and eos unless ignore_eos) are masked until this many tokens are generated.
  int32_t min_tokens = 0;
  // Same seed, same prompt, same logits: same tokens, whatever else is in the batch.
  // Absent: drawn from std::random_device when the sampler is created.
  std::optional<uint64_t> seed;
  // -1: no logprobs. N in [0, kMaxLogprobs]: the sampled token's logprob and rank, and the N most
  // likely tokens with their logprobs.
  int32_t logprobs = -1;

  bool greedy() const { return temperature < kGreedyTemperature; }

  // InvalidArgument naming the field (and entry) that is out of range for this vocabulary.
  absl::Status Validate(int64_t vocab_size) const;
};

}  // namespace nextserve::sampling
