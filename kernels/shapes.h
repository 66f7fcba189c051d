// Weight matrices and layer shapes as the kernels see them: plain values shared by every backend's
// ops (and kept free of absl and std::span so that CUDA sources can include it).
#pragma once

#include <cstdint>

#include "base/dtype.h"

namespace nextserve::kernels {

// Block edge of FP8 block-scaled weights (quantization_config.weight_block_size [128, 128]).
inline constexpr int64_t kFp8Block = 128;

// A weight matrix [rows, cols] in its stored dtype (nn.Linear: [out, in]); data may be unaligned.
// F8_E4M3 matrices carry block_scale: fp32 [ceil(rows / 128), ceil(cols / 128)] (the checkpoint's
// weight_scale_inv), and w[r, c] = fp8[r, c] * block_scale[r / 128][c / 128].
struct Matrix {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* block_scale = nullptr;
  int64_t scale_cols() const { return (cols + kFp8Block - 1) / kFp8Block; }
};

// Shapes of one Gated DeltaNet layer.
struct DeltaNetShape {
  int64_t num_key_heads, num_value_heads, key_head_dim, value_head_dim, conv_kernel;
  int64_t key_dim() const { return num_key_heads * key_head_dim; }
  int64_t value_dim() const { return num_value_heads * value_head_dim; }
  int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
  int64_t conv_floats() const { return (conv_kernel - 1) * conv_dim(); }  // window per slot
  int64_t recurrent_floats() const { return num_value_heads * key_head_dim * value_head_dim; }
};

struct AttentionShape {
  int64_t num_heads, num_kv_heads, head_dim, rotary_dim;
  float rope_theta;
};

}  // namespace nextserve::kernels
