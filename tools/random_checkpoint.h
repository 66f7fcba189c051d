// Random Qwen3-Next checkpoints in the real Hugging Face format (config.json + model.safetensors),
// for the default job, benchmarks and tests. Weights are scaled so activations stay O(1).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "base/dtype.h"

namespace nextserve {

// Named shapes: "micro" (unit tests: hidden 64, 8 experts top-2), "tiny" (the default job: hidden 256, 4 layers, real vocabulary size), "small" (the
// real layer shapes scaled down for benchmarks: hidden 1024, 8 layers, 128 experts, top-8).
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

struct RandomCheckpointOptions {
  DType dtype = DType::kBF16;
  uint64_t seed = 1;
};

// Writes DIR/config.json and DIR/model.safetensors (creating DIR).
absl::Status WriteRandomCheckpoint(const ModelConfig& config, const std::string& dir,
                                   const RandomCheckpointOptions& options = {});

}  // namespace nextserve
