// The one kernel interface of nextserve: every op of the Qwen3-Next forward pass, implemented by
// the CPU backend (the reference for all others) and the CUDA backend. Kernels know tensors and
// shapes, never requests. Activations are fp32; weight matrices stay in their stored dtype.
//
// Pointers are in the backend's memory space (host for CPU, device for CUDA); buffers come from
// Allocate(). Shapes are row-major. Where an op works on one sequence, the caller loops.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "model/dtype.h"

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

// Owned backend memory; freed through the backend that made it.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual void* data() = 0;
  virtual size_t size() const = 0;
  float* f32() { return static_cast<float*>(data()); }
};

// Shapes of one Gated DeltaNet layer.
struct DeltaNetShape {
  int64_t num_key_heads, num_value_heads, key_head_dim, value_head_dim, conv_kernel;
  int64_t key_dim() const { return num_key_heads * key_head_dim; }
  int64_t value_dim() const { return num_value_heads * value_head_dim; }
  int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
};

// One sequence's keys and values in fixed-size blocks: key j is row j % block_size of
// k_blocks[j / block_size]; rows are [kv_heads * head_dim].
struct PagedKv {
  const float* const* k_blocks = nullptr;
  const float* const* v_blocks = nullptr;
  int64_t block_size = 0;
};

struct AttentionShape {
  int64_t num_heads, num_kv_heads, head_dim, rotary_dim;
  float rope_theta;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  virtual std::unique_ptr<Buffer> Allocate(size_t bytes) = 0;
  virtual void CopyToHost(const void* src, void* host_dst, size_t bytes) = 0;
  virtual void CopyFromHost(const void* host_src, void* dst, size_t bytes) = 0;
  virtual void Fill(float* dst, float value, int64_t n) = 0;

  // ---- dense algebra
  // y[m, n] = x[m, k] · wᵀ  (+= when accumulate). w: [n, k].
  virtual void Linear(const float* x, int64_t m, const Matrix& w, float* y,
                      bool accumulate = false) = 0;
  // out[i] = fp32(table[ids[i]]).
  virtual void Embedding(const int32_t* ids, int64_t n, const Matrix& table, float* out) = 0;
  // y = x * rsqrt(mean(x²) + eps) * (one_plus ? 1 + w : w), per row of `dim`. y may alias x.
  virtual void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps,
                       bool one_plus, float* y) = 0;
  // y += x.
  virtual void Add(const float* x, int64_t n, float* y) = 0;
  // y = silu(gate) * up, element-wise over n values. y may alias gate.
  virtual void SiluMul(const float* gate, const float* up, int64_t n, float* y) = 0;
  // x[r, :] *= sigmoid(gate[r]) for a per-row scalar gate (shared-expert gate).
  virtual void ScaleRowsBySigmoid(const float* gate, int64_t rows, int64_t dim, float* x) = 0;

  // ---- gated attention
  // qg: [t, heads, 2*head_dim] as q_proj writes it (query | gate per head); k: [t, kv_heads,
  // head_dim]. Writes q [t, heads, head_dim] and gate [t, heads*head_dim]; normalises q and k per
  // head with (1 + w) RMSNorm, then applies partial NeoX RoPE at positions first_pos .. first_pos +
  // t - 1.
  virtual void AttentionPrep(const float* qg, float* k, int64_t t, int64_t first_pos,
                             const AttentionShape& s, const float* q_norm, const float* k_norm,
                             float eps, float* q, float* gate) = 0;
  // Causal attention of t new queries (positions past .. past + t - 1) against the paged cache,
  // which already holds their keys and values. out: [t, heads*head_dim], then out *= sigmoid(gate).
  virtual void Attention(const float* q, const PagedKv& kv, int64_t t, int64_t past,
                         const AttentionShape& s, const float* gate, float* out) = 0;

  // ---- Gated DeltaNet
  // Splits in_proj_qkvz [t, ·] and in_proj_ba [t, 2*nv] outputs from their per-key-head grouped
  // layout into mixed_qkv [t, conv_dim] (q | k | v), z [t, value_dim], b [t, nv], a [t, nv].
  virtual void DeltaNetSplit(const float* qkvz, const float* ba, int64_t t, const DeltaNetShape& s,
                             float* mixed_qkv, float* z, float* b, float* a) = 0;
  // Causal depthwise conv + SiLU over t tokens of one sequence. conv_state [kernel-1, conv_dim]
  // holds the previous raw inputs (zeros for a new sequence) and is updated. w: [conv_dim, kernel].
  virtual void CausalConvSilu(const float* x, int64_t t, int64_t channels, int64_t kernel,
                              const float* w, float* conv_state, float* y) = 0;
  // beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias). All [t, nv].
  virtual void DeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv,
                             const float* a_log, const float* dt_bias, float* beta, float* g) = 0;
  // The gated delta rule over t tokens of one sequence, from and into `state` [nv, dk, dv] (fp32).
  // conv_out: [t, conv_dim] (q | k | v after conv + SiLU; q and k are l2-normalised here, q scaled
  // by dk^-0.5). out: [t, nv, dv]. Uses the chunked form (C = 64) or the recurrence by `chunked`.
  virtual void DeltaRule(const float* conv_out, const float* g, const float* beta, int64_t t,
                         const DeltaNetShape& s, float* state, float* out, bool chunked) = 0;
  // y = w * rmsnorm(x) * silu(z) per row of dim (plain w). y may alias x.
  virtual void RmsNormGated(const float* x, const float* z, int64_t rows, int64_t dim,
                            const float* w, float eps, float* y) = 0;

  // ---- MoE helpers
  // dst[i, :] = src[rows[i], :].
  virtual void GatherRows(const float* src, const int32_t* rows, int64_t n, int64_t dim,
                          float* dst) = 0;
  // dst[rows[i], :] += scale[i] * src[i, :], in order of i (deterministic).
  virtual void ScatterAddRows(const float* src, const int32_t* rows, const float* scale, int64_t n,
                              int64_t dim, float* dst) = 0;
};

// The CPU backend (oneDNN GEMMs, OpenMP threads).
std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace nextserve::kernels
