// The model runner: turns the scheduler's batch (sequences with their caches and new tokens) into
// the step's metadata (kernels/step.h) once — token ids, positions, cu_seqlens, context lengths,
// the KV slot mapping, an int32 block table, state slots, logit rows — and uploads it to the
// backend in one copy. After it, nothing in the step knows about sequences or requests.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/cache_pool.h"

namespace nextserve {

// New tokens of one sequence for this step. Positions continue from state->num_tokens().
struct SequenceInput {
  SequenceState* state = nullptr;
  std::span<const int32_t> tokens;
  bool all_logits = false;  // logits for every new token, else only for the last one
  bool no_logits = false;   // none at all (a prompt chunk that is not the last)
};

class ModelRunner {
 public:
  ModelRunner(kernels::Backend* backend, CachePool* pool, int64_t vocab_size);

  // Validates the batch (states from this pool, tokens present and in the vocabulary), reserves
  // cache room for the new tokens (ResourceExhausted when the pool is full; then no sequence holds
  // more than before the call... except what earlier sequences of the batch reserved, which they
  // keep for their retry) and uploads the metadata. The returned view is valid until the next
  // Prepare.
  absl::StatusOr<kernels::StepMeta> Prepare(std::span<const SequenceInput> batch);
  // After the step ran: every sequence's cache now holds its new tokens.
  static void Advance(std::span<const SequenceInput> batch);

  // The host copy of the last step's metadata arrays (tests, the profile).
  const kernels::StepMeta& host_meta() const { return host_meta_; }

 private:
  kernels::Backend* backend_;
  CachePool* pool_;
  int64_t vocab_size_;
  std::vector<int32_t> staging_;             // host: every array of the step, back to back
  std::unique_ptr<kernels::Buffer> device_;  // the same in backend memory, grown when needed
  kernels::StepMeta host_meta_;
};

}  // namespace nextserve
