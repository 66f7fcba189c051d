// `nextserve plan`: what a config.json needs per rank (weights by dtype, KV cache per token,
// DeltaNet state per sequence) and how many sequences / how much context fit in a GPU's memory,
// with the routed experts sharded over the ranks and everything else replicated (docs/scaling.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace nextserve::cli {

struct WeightBytes {
  int64_t f8 = 0;           // F8_E4M3 matrices (FP8 checkpoints)
  int64_t f8_scales = 0;    // their 128x128 block scales, fp32 as loaded
  int64_t unquantized = 0;  // matrices in the checkpoint's float dtype (all of them without FP8)
  int64_t f32_small = 0;    // norms, conv1d, A_log, dt_bias: fp32 copies made at load
  int64_t total() const { return f8 + f8_scales + unquantized + f32_small; }
};

struct RankPlan {
  int64_t ranks = 1;
  int64_t experts_on_rank = 0;  // the most any rank holds (contiguous placement, ceil(E / ranks))
  WeightBytes weights;          // of that rank
  int64_t free_bytes = 0;       // gpu_memory * utilization - weights (may be negative)
  int64_t sequences_at_context = 0;      // per rank, each `context` tokens long
  int64_t max_context_one_sequence = 0;  // per rank, uncapped by max_position_embeddings
};

struct MemoryPlan {
  std::string unquantized_dtype;  // config's dtype name: "bfloat16", ...
  bool fp8 = false;
  int64_t kv_bytes_per_token = 0;        // fp32 K and V of every full-attention layer
  int64_t state_bytes_per_sequence = 0;  // fp32 DeltaNet recurrent + conv states, linear layers
  int64_t context = 0;
  std::vector<RankPlan> ranks;
};

struct PlanOptions {
  std::vector<int64_t> ranks = {1};
  int64_t gpu_memory_bytes = 0;
  double memory_utilization = 0.9;  // share of the GPU memory for weights + caches
  int64_t context = 32768;
};

absl::StatusOr<MemoryPlan> ComputePlan(const ModelConfig& config, const PlanOptions& options);
std::string FormatPlan(const ModelConfig& config, const MemoryPlan& plan,
                       const PlanOptions& options);
// "141GiB", "80GB", "1.5TiB", "1048576" (bytes).
absl::StatusOr<int64_t> ParseByteSize(const std::string& text);

// The subcommand: nextserve plan --model DIR --gpus N[,N...] --gpu-memory 141GiB [...].
int PlanCommand(int argc, char** argv);

}  // namespace nextserve::cli
