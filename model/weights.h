// The Qwen3-Next weights bound from a checkpoint: every tensor checked against the config, large
// matrices left in their stored dtype inside the mapping, small vectors converted to fp32.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/dtype.h"
#include "model/checkpoint.h"
#include "model/config.h"

namespace nextserve {

// A row-major matrix [rows, cols] (nn.Linear: [out_features, in_features]) or a vector (rows = 1).
// `data` may be unaligned and points into the checkpoint mapping or into ModelWeights' own storage.
// F8_E4M3 matrices (block-scaled FP8 checkpoints) also carry `block_scale`: the tensor's
// weight_scale_inv as fp32 [ceil(rows / 128), ceil(cols / 128)] in ModelWeights' storage;
// w[r, c] = fp8[r, c] * block_scale[(r / 128) * ceil(cols / 128) + c / 128].
struct WeightRef {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* block_scale = nullptr;
  bool present() const { return data != nullptr; }
  const float* f32() const { return static_cast<const float*>(data); }
};

struct AttentionWeights {
  WeightRef q_proj, k_proj, v_proj, o_proj;  // q_proj rows: per head [query | gate]
  WeightRef q_norm, k_norm;                  // fp32, (1 + w) convention
};

struct DeltaNetWeights {
  WeightRef in_proj_qkvz, in_proj_ba, out_proj;
  WeightRef conv1d;   // fp32 [conv_dim, kernel]
  WeightRef dt_bias;  // fp32 [num_value_heads]
  WeightRef A_log;    // fp32 [num_value_heads]
  WeightRef norm;     // fp32 [value_head_dim], plain w
};

struct MlpWeights {
  WeightRef gate_proj, up_proj, down_proj;
  bool present() const { return gate_proj.present(); }
};

struct MoeWeights {
  WeightRef router;                 // [num_experts, hidden]
  std::vector<MlpWeights> experts;  // indexed by global expert id; absent where not owned
  MlpWeights shared_expert;
  WeightRef shared_expert_gate;  // [1, hidden]
};

struct LayerWeights {
  LayerType type = LayerType::kLinearAttention;
  WeightRef input_layernorm, post_attention_layernorm;  // fp32, (1 + w)
  AttentionWeights attention;                           // full-attention layers
  DeltaNetWeights delta_net;                            // linear-attention layers
  bool is_moe = true;
  MoeWeights moe;  // sparse layers
  MlpWeights mlp;  // dense layers (mlp_only_layers, decoder_sparse_step)
};

struct LoadOptions {
  // Routed experts to load (global ids). Empty optional: all. The other experts' bytes are never
  // read.
  std::optional<std::vector<int64_t>> experts;
};

class ModelWeights {
 public:
  // Checks every tensor name, shape and dtype against `config`: missing, unexpected (other than
  // mtp.*), wrong shape or dtype each give an error naming the file and tensor. With an FP8
  // config.quantization, every nn.Linear weight not in modules_to_not_convert must be F8_E4M3 with
  // a `<module>.weight_scale_inv` (fp32 or bf16, one scale per 128x128 block).
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Bind(std::shared_ptr<const Checkpoint> ckpt,
                                                            const ModelConfig& config,
                                                            const LoadOptions& options = {});
  // LoadModelConfig(dir/config.json) + Checkpoint::Open(dir) + Bind.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(const std::string& dir,
                                                            const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  WeightRef embed_tokens, final_norm, lm_head;
  std::vector<LayerWeights> layers;
  std::vector<bool> owns_expert;  // [num_experts]
  // dtype of the large matrices: F8_E4M3 in an FP8 checkpoint, where the modules the
  // quantization_config leaves unquantised (modules_to_not_convert, embeddings) are in
  // `unquantized_dtype`; otherwise both are the one float dtype of the checkpoint.
  DType stored_dtype = DType::kF32;
  DType unquantized_dtype = DType::kF32;
  int64_t fp8_matrices = 0;  // bound (or header-checked) F8_E4M3 matrices
  size_t skipped_mtp_tensors = 0;

 private:
  ModelConfig config_;
  std::shared_ptr<const Checkpoint> checkpoint_;
  std::vector<std::unique_ptr<float[]>> owned_;  // fp32 copies of small tensors
  friend class WeightBinder;
};

}  // namespace nextserve
