// Qwen3-Next model configuration (config.json), with transformers' Qwen3NextConfig defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace nextserve {

enum class LayerType : uint8_t { kLinearAttention, kFullAttention };

// config.json's `quantization_config` (transformers' FineGrainedFP8Config). Only block-scaled
// FP8 is loaded: quant_method "fp8", fmt "e4m3", weight_block_size [128, 128], dynamic activations
// (the CPU path keeps activations in fp32 and dequantises the weights tile by tile).
struct QuantizationConfig {
  bool fp8 = false;  // false: no quantization_config, every matrix in the checkpoint's float dtype
  std::string activation_scheme = "dynamic";
  std::vector<int64_t> weight_block_size = {128, 128};
  std::vector<std::string> modules_to_not_convert;
  // Whether the nn.Linear / embedding `module` (e.g. "model.layers.0.mlp.gate") stays unquantised,
  // by transformers' rule: an entry is a prefix of it up to a "." boundary, or a suffix of it.
  bool IsNotConverted(const std::string& module) const;
};

struct ModelConfig {
  std::string model_type = "qwen3_next";
  int64_t vocab_size = 151936;
  int64_t hidden_size = 2048;
  int64_t intermediate_size = 5632;  // dense MLP (mlp_only_layers / non-sparse layers)
  int64_t num_hidden_layers = 48;
  int64_t num_attention_heads = 16;
  int64_t num_key_value_heads = 2;
  int64_t head_dim = 256;
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 32768;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  double rope_theta = 10000.0;
  double partial_rotary_factor = 0.25;
  bool attention_bias = false;
  // Gated DeltaNet.
  int64_t linear_conv_kernel_dim = 4;
  int64_t linear_key_head_dim = 128;
  int64_t linear_value_head_dim = 128;
  int64_t linear_num_key_heads = 16;
  int64_t linear_num_value_heads = 32;
  // MoE.
  int64_t decoder_sparse_step = 1;
  int64_t moe_intermediate_size = 512;
  int64_t shared_expert_intermediate_size = 512;
  int64_t num_experts_per_tok = 10;
  int64_t num_experts = 512;
  bool norm_topk_prob = true;
  std::vector<int64_t> mlp_only_layers;
  // One entry per layer: from `layer_types`, or derived from `full_attention_interval`.
  std::vector<LayerType> layer_types;
  int64_t full_attention_interval = 4;
  std::string torch_dtype = "bfloat16";
  int64_t bos_token_id = -1;  // -1: absent
  std::vector<int64_t> eos_token_ids;
  QuantizationConfig quantization;

  // Derived helpers.
  int64_t rotary_dim() const { return static_cast<int64_t>(head_dim * partial_rotary_factor); }
  bool is_full_attention(int64_t layer) const {
    return layer_types[layer] == LayerType::kFullAttention;
  }
  // transformers' rule: sparse iff layer not in mlp_only_layers, num_experts > 0 and
  // (layer + 1) % decoder_sparse_step == 0.
  bool is_moe_layer(int64_t layer) const;
  int64_t linear_key_dim() const { return linear_num_key_heads * linear_key_head_dim; }
  int64_t linear_value_dim() const { return linear_num_value_heads * linear_value_head_dim; }
  int64_t linear_conv_dim() const { return 2 * linear_key_dim() + linear_value_dim(); }
};

// Parses and validates config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// Writes config.json text that ParseModelConfig (and transformers) accept.
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace nextserve
