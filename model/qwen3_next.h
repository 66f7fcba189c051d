// The Qwen3-Next forward pass, built from the kernel interface: the model runner turns the batch
// into step metadata, then every op runs over the whole step on buffers the backend owns (a
// workspace reused from step to step, the two cache arenas).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/cache_pool.h"
#include "model/expert_placement.h"
#include "model/model_runner.h"
#include "model/weights.h"

namespace nextserve {
namespace comm {
class Communicator;
}

// Timings of the parts of one forward call, for benchmarks (seconds, summed over layers).
struct ForwardProfile {
  double linear = 0, attention = 0, delta_net = 0, moe = 0, lm_head = 0;
  double communication = 0;      // inside moe: counts exchange, dispatch and combine
  int64_t all_to_all_bytes = 0;  // payload this rank sent (dispatch + combine)
  double prepare = 0;            // the model runner: metadata built and uploaded
  double total = 0;              // the whole Forward call
};

struct ModelOptions {
  // Dispatch records carry hidden rows in this dtype: fp32 (exact) or bf16 (half the bytes).
  DType dispatch_dtype = DType::kF32;
};

class Qwen3NextModel {
 public:
  // `comm` (not owned) joins this model to an expert-parallel group: each rank holds the experts
  // `placement` gives it (loaded with LoadOptions.experts) and every rank must call Forward the
  // same number of times, with an empty batch when it has nothing to do. Without `comm` the model
  // is a group of one and must hold every expert.
  Qwen3NextModel(std::shared_ptr<const ModelWeights> weights, kernels::Backend* backend,
                 CacheLimits cache_limits = {}, comm::Communicator* comm = nullptr,
                 std::optional<ExpertPlacement> placement = std::nullopt,
                 ModelOptions options = {});
  ~Qwen3NextModel();

  const ModelConfig& config() const { return weights_->config(); }
  const ModelWeights& weights() const { return *weights_; }
  CachePool& cache_pool() { return pool_; }
  comm::Communicator& communicator() { return *comm_; }
  const ExpertPlacement& placement() const { return placement_; }
  // Tokens each (layer, expert) held here has processed: [layers * experts], for placement tuning.
  const std::vector<int64_t>& expert_token_counts() const { return expert_tokens_; }
  // A new, empty sequence whose cache lives in this model's pool.
  std::unique_ptr<SequenceState> NewSequence();

  // Runs one step over the batch and returns logits [rows, vocab]: for each input in order, one row
  // per new token (all_logits), none (no_logits) or one row for its last token. Validates token ids
  // and emptiness and reserves cache room (ResourceExhausted when the pool is full); on error no
  // sequence advances.
  absl::StatusOr<std::vector<float>> Forward(std::span<const SequenceInput> batch,
                                             ForwardProfile* profile = nullptr);
  // The same, with the logits in a host buffer the model keeps and reuses: valid until the next
  // call. Serving steps use this (no per-step allocation of rows x vocab floats).
  // With logits_on_host false the span is in backend memory (the workspace), for a backend op
  // such as SampleRows to read without a copy; also valid until the next call.
  absl::StatusOr<std::span<const float>> Step(std::span<const SequenceInput> batch,
                                              ForwardProfile* profile = nullptr,
                                              bool logits_on_host = true);
  kernels::Backend& backend() const { return *backend_; }
  // Sizes the workspace for steps of up to `tokens` new tokens (and the records the other ranks
  // may send for theirs), so that serving steps allocate nothing. Optional: it grows on demand.
  void ReserveWorkspace(int64_t tokens);

 private:
  struct Workspace;  // the step's buffers, in backend memory, reused
  struct StepContext;
  absl::Status Execute(const kernels::StepMeta& meta, StepContext& step);
  void AttentionLayer(int64_t layer, StepContext& step, const float* h, float* out);
  void DeltaNetLayer(int64_t layer, StepContext& step, const float* h, float* out);
  absl::Status MoeLayer(int64_t layer, StepContext& step, const float* h, float* out);
  void DenseMlp(const MlpWeights& w, const float* h, int64_t n, float* out, float* scratch);

  std::shared_ptr<const ModelWeights> weights_;
  kernels::Backend* backend_;
  ModelOptions options_;
  CachePool pool_;
  ModelRunner runner_;
  std::unique_ptr<Workspace> workspace_;
  std::vector<float> host_logits_;                // Step's result, reused
  std::unique_ptr<comm::Communicator> own_comm_;  // the group of one, when none is given
  comm::Communicator* comm_;
  ExpertPlacement placement_;
  bool expert_parallel_ok_ = true;
  std::vector<int64_t> expert_tokens_;
  std::vector<int64_t> kind_index_;  // layer -> index among layers of its kind (pool addressing)
  std::vector<std::vector<kernels::ExpertMatrices>> experts_;  // [layer][expert], held ones set
  std::unique_ptr<kernels::Buffer> owner_;                     // int32 [experts]: expert -> rank
  std::unique_ptr<bool[]> held_;                               // host [experts]
  std::vector<int64_t> expert_offsets_, records_to_;           // host, per MoE layer
  std::vector<int64_t> send_counts_, recv_counts_, back_send_, back_recv_;
};

}  // namespace nextserve
