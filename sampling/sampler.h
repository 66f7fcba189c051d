// One request's sampler: turns the fp32 logits row of each step into the next token.
//
// Each step transforms the row in vLLM V1's order (HF transformers' logits processors agree on
// every step both have), with their definitions:
//   1. min_tokens: while fewer than min_tokens tokens were generated, the stop ids (and the eos ids
//      unless ignore_eos) get -inf.
//   2. logit_bias: added.
//   3. repetition_penalty p, tokens seen in prompt or output: logit > 0 ? logit / p : logit * p.
//   4. frequency f, presence r, output tokens only: logit -= f * count; logit -= r * (count > 0).
//   5. greedy (temperature < 1e-5): argmax, ties to the lowest id. Otherwise:
//   6. temperature: logit / T.
//   7. top_k: keep the k highest, plus every token tied with the k-th.
//   8. top_p, on the top-k survivors renormalised: in order of probability (ties: lower id first)
//      keep each token while the probability before it is < top_p; the first is always kept.
//   9. min_p: keep tokens with p >= min_p * p_max, i.e. (logit - max) / T >= ln(min_p).
//  10. draw u in [0, 1) from the request's RNG and take the inverse CDF over the kept tokens
//      in increasing id order.
// Steps 1-4 come before greedy, so they change greedy choices too (as in vLLM and HF). HF applies
// min_p after top_p as here; vLLM V1 applies it before top_k/top_p, which differs only when both
// top_p < 1 and min_p > 0 are set (min_p then thins the set top_p sees). Top-k and min-p commute.
//
// Logprobs (vLLM's logprobs_mode = "processed_logprobs"): the log-probabilities of the
// distribution the token was actually drawn from: after steps 1-9, renormalised over the kept
// tokens. Greedy requests report log_softmax of the steps 1-4 logits (temperature 1, nothing cut),
// as vLLM does. vLLM's default mode is "raw_logprobs" (log_softmax of the model's logits before
// any processing); "raw_logits"/"processed_logits" return logits instead. Tokens outside the kept
// set have logprob -inf and are never listed, so top_logprobs can be shorter than requested. Rank
// follows vLLM: the number of tokens whose logprob is >= the sampled token's (1 = most likely).
//
// RNG: Philox4x32-10 keyed by the request's seed; draw number t uses counter t (t = tokens
// generated so far, resumed requests included), so exactly one draw per step, none shared with
// other requests, and the sequence of a (prompt, seed) pair does not depend on batching. Greedy
// steps advance it too. Identical inputs give identical tokens; across compilers a draw can differ
// only within float rounding of a boundary between two tokens' intervals.
//
// Cost per step for a 151,936 vocabulary: no full sort. Greedy is two vectorised passes; top-k
// is one pass with a size-k heap, then work on the k survivors only; top-p without top-k is an
// exp pass, a bisection on the logit with vectorised mass passes, and a weighted quickselect in
// the small band that holds the boundary (bench/sampling_bench.cc gives figures).
//
// The steps themselves live in sampling/row_step.h (SampleRow on flat kernels::SamplingRow
// settings), shared with the batched kernels::cpu::SampleRows; a Sampler adds the request's
// history and the logprobs.
//
// Not thread-safe per object; different Samplers may run on different threads at once (scratch
// memory is per thread).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/sampling.h"
#include "sampling/params.h"
#include "sampling/row_settings.h"

namespace nextserve::sampling {

struct TokenLogprob {
  int32_t token;
  float logprob;
  bool operator==(const TokenLogprob&) const = default;
};

struct SampleResult {
  int32_t token = -1;
  bool stop = false;  // token is a stop id, or an eos id and !ignore_eos
  // Set when params.logprobs >= 0:
  float logprob = 0;
  int32_t rank = 0;
  std::vector<TokenLogprob> top_logprobs;  // min(N, kept) most likely first, ties lower id first
};

class Sampler {
 public:
  // Validates params (and the ids) against the vocabulary. eos_token_ids come from the model's
  // generation config. A request resumed elsewhere (migrated after its rank was lost) passes its
  // output so far as the last `already_generated` prompt tokens: they count as output (presence,
  // frequency, min_tokens) and the RNG continues at draw `already_generated`, so the resumed
  // sampler continues exactly as the original would have.
  static absl::StatusOr<Sampler> Create(const SamplingParams& params, int64_t vocab_size,
                                        std::span<const int32_t> prompt_tokens,
                                        std::span<const int32_t> eos_token_ids = {},
                                        int64_t already_generated = 0);

  // Chooses the next token from this step's logits (size vocab_size), records it for the
  // penalties and min_tokens, and advances the RNG by one draw. InvalidArgument for a wrong size,
  // a NaN or +inf logit, or a row where every token is masked.
  absl::StatusOr<SampleResult> Sample(std::span<const float> logits);

  // The probabilities Sample would draw from for these logits (one-hot for greedy), without
  // recording anything. For tests and debugging.
  absl::StatusOr<std::vector<float>> Probabilities(std::span<const float> logits) const;

  // For sampling many requests in one batched op (kernels::cpu::SampleRows, Backend::SampleRows):
  // this step's settings, for which the op picks the token Sample would, then Record(token) in
  // place of Sample. Row() views this Sampler's memory: valid until the next Sample or Record, or
  // until the Sampler moves. Record returns IsStop(token); InvalidArgument for a token outside
  // the vocabulary.
  kernels::SamplingRow Row() const { return RowSettings(params_, seed_, history_); }
  absl::StatusOr<bool> Record(int32_t token);

  bool IsStop(int32_t token) const { return history_.IsStop(token); }
  const SamplingParams& params() const { return params_; }
  uint64_t seed() const { return seed_; }
  int64_t num_generated() const { return history_.num_generated(); }

 private:
  Sampler() = default;
  absl::Status CheckSize(std::span<const float> logits) const;

  SamplingParams params_;
  int64_t vocab_size_ = 0;
  uint64_t seed_ = 0;
  RowHistory history_;  // stop ids (eos included unless ignore_eos), seen ids, output counts
};

}  // namespace nextserve::sampling
