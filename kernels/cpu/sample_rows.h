// Sampling over all logit rows of a step: the CPU form of Backend::SampleRows.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "kernels/sampling.h"

namespace nextserve::kernels::cpu {

// tokens[r] = the token sampling::Sampler would choose for logits row r (logits + r * vocab) with
// settings[r]: the same transforms and the same Philox draw (seed, counter = draw). It runs the
// Sampler's own row code (sampling/row_step.h), so the two cannot differ. Rows are independent and
// run in parallel (OpenMP; a single row on the calling thread). Each thread sizes its scratch for
// any row of this vocab the first time it takes part in a call, so after that no call allocates.
// InvalidArgument naming the row (the lowest one that fails) for settings out of range, ids outside
// [0, vocab), a NaN or +inf logit, or a row where every token is masked; tokens are then
// unspecified.
absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                        std::span<const SamplingRow> settings, int32_t* tokens);

}  // namespace nextserve::kernels::cpu
