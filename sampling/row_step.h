// One sampling step on one logits row with flat settings (kernels::SamplingRow): steps 1-10 of
// sampler.h. The one implementation behind both Sampler::Sample and kernels::cpu::SampleRows, so
// the batched op and the per-request sampler cannot drift apart.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/sampling.h"
#include "sampling/row_ops.h"

namespace nextserve::sampling {

// InvalidArgument naming the field when a row's settings are out of range (the ranges of
// SamplingParams::Validate) or one of its ids is not a token id in [0, vocab_size), or its paired
// spans differ in length. SampleRow itself trusts its row; callers that did not build it from
// validated SamplingParams check it with this first.
absl::Status CheckRow(const kernels::SamplingRow& row, int64_t vocab_size);

// The token steps 1-10 choose for this row with draw PhiloxUniform(row.seed, row.draw).
// InvalidArgument (no prefix: callers add theirs) for a NaN or +inf logit, or a row where every
// token is masked. Uses per-thread scratch: allocates nothing once this thread's buffers have
// grown to what the row needs.
absl::StatusOr<int32_t> SampleRow(std::span<const float> logits, const kernels::SamplingRow& row);

namespace internal {

// Per-thread buffers, reused across steps, requests and rows.
struct RowScratch {
  std::vector<float> w;            // processed logits, when steps 1-4 change anything
  std::vector<float> e;            // weights exp((w - max) / T) over the row
  std::vector<double> block_sums;  // sums of kept weights per kBlock tokens
  std::vector<int32_t> kept;       // top-k path: kept ids in order; top-p path: candidates
  std::vector<float> kept_e;       // top-k path: their weights
  std::vector<int32_t> by_id;      // top-k path: positions in `kept`, by increasing token id
  std::vector<int32_t> top;        // top logprobs candidates
  TopKScratch top_k;
  std::vector<uint8_t> marks;  // CheckRow: one flag per token id, all zero between calls
};
RowScratch& ThreadScratch();

// Grows this thread's scratch to the most any row of vocab_size tokens can need, so that no later
// row of that size allocates whatever its settings (reserved, not touched: pages that no row uses
// cost no memory).
void ReserveThreadScratch(int64_t vocab_size);

// One step: the processed row (steps 1-4) and, for sampling or logprobs, the kept set with its
// weights e = exp((w - max) / T), either listed (top-k path, in ThreadScratch().kept/kept_e/by_id)
// or as a cut over the row (weights in ThreadScratch().e).
struct RowStep {
  const float* w = nullptr;
  int64_t n = 0;
  float max = 0;
  int64_t argmax = -1;  // greedy only
  double t = 1;         // temperature (1 for greedy logprobs)
  double total = 0;     // sum of kept weights
  bool listed = false;
  Cut cut = kKeepFinite;  // !listed: kept tokens

  double Logprob(int64_t i) const;
};

// Steps 1-9. With want_logprobs, a greedy step also gets the temperature-1 weights of the whole
// row. Errors as SampleRow's.
absl::StatusOr<RowStep> PrepareRow(std::span<const float> logits, const kernels::SamplingRow& row,
                                   bool want_logprobs);

// Step 10: the token for draw u in [0, 1) (the argmax for greedy).
int64_t PickToken(const RowStep& step, double u);

}  // namespace internal
}  // namespace nextserve::sampling
