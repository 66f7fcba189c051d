// Gated full attention on the CPU: q/k (1 + w) RMSNorm, partial NeoX RoPE, causal GQA softmax
// attention in fp32, sigmoid output gate.
#include <algorithm>
#include <cmath>
#include <vector>

#include "dnnl.h"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve::kernels::cpu {
namespace {

void NormOnePlus(float* x, int64_t dim, const float* w, float eps) {
  float ss = 0;
  for (int64_t i = 0; i < dim; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) x[i] = x[i] * inv * (1.0f + w[i]);
}

// NeoX rotate-half on the first rotary_dim dims; cos/sin as transformers computes them (fp32).
void Rope(float* x, const float* cos, const float* sin, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * cos[i] - x2 * sin[i];
    x[i + half] = x2 * cos[i] + x1 * sin[i];
  }
}

}  // namespace

void AttentionPrep(const float* qg, float* k, int64_t t, int64_t first_pos, const AttentionShape& s,
                   const float* q_norm, const float* k_norm, float eps, float* q, float* gate) {
  const int64_t d = s.head_dim, half = s.rotary_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // transformers: 1 / base ** (arange(0, dim, 2) / dim), all fp32.
    inv_freq[i] =
        1.0f / std::pow(s.rope_theta, static_cast<float>(2 * i) / static_cast<float>(s.rotary_dim));
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < t; ++i) {
    std::vector<float> cos(static_cast<size_t>(half)), sin(static_cast<size_t>(half));
    const float pos = static_cast<float>(first_pos + i);
    for (int64_t j = 0; j < half; ++j) {
      const float f = pos * inv_freq[j];
      cos[j] = std::cos(f);
      sin[j] = std::sin(f);
    }
    for (int64_t h = 0; h < s.num_heads; ++h) {
      const float* src = qg + (i * s.num_heads + h) * 2 * d;
      float* qh = q + (i * s.num_heads + h) * d;
      std::copy(src, src + d, qh);
      std::copy(src + d, src + 2 * d, gate + (i * s.num_heads + h) * d);
      NormOnePlus(qh, d, q_norm, eps);
      Rope(qh, cos.data(), sin.data(), half);
    }
    for (int64_t h = 0; h < s.num_kv_heads; ++h) {
      float* kh = k + (i * s.num_kv_heads + h) * d;
      NormOnePlus(kh, d, k_norm, eps);
      Rope(kh, cos.data(), sin.data(), half);
    }
  }
}

// Per (head, block of queries): scores = Q Kᵀ block by block into one row-major buffer, causal
// softmax per row, then O = Σ_blocks P_block V_block — all products through sgemm.
void Attention(const float* q, const PagedKv& kv, int64_t t, int64_t past, const AttentionShape& s,
               const float* gate, float* out) {
  const int64_t d = s.head_dim, group = s.num_heads / s.num_kv_heads, bs = kv.block_size;
  const int64_t q_stride = s.num_heads * d, kv_stride = s.num_kv_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  constexpr int64_t kQueries = 64;  // queries per task: bounds the score buffer to 64 x keys
  const int64_t tasks = (t + kQueries - 1) / kQueries;
#pragma omp parallel
  {
    std::vector<float> scores;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t h = 0; h < s.num_heads; ++h) {
      for (int64_t task = 0; task < tasks; ++task) {
        const int64_t i0 = task * kQueries, rows = std::min(kQueries, t - i0);
        const int64_t keys = past + i0 + rows;  // causal: this block of queries sees keys [0, keys)
        const int64_t head_offset = (h / group) * d;
        const float* Q = q + i0 * q_stride + h * d;
        float* O = out + i0 * q_stride + h * d;
        scores.resize(static_cast<size_t>(rows * keys));
        for (int64_t j0 = 0; j0 < keys; j0 += bs) {
          const int64_t n = std::min(bs, keys - j0);
          dnnl_sgemm('N', 'T', rows, n, d, scale, Q, q_stride, kv.k_blocks[j0 / bs] + head_offset,
                     kv_stride, 0.0f, scores.data() + j0, keys);
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* p = scores.data() + r * keys;
          const int64_t visible = past + i0 + r + 1;
          const float mx = *std::max_element(p, p + visible);
          float sum = 0;
          for (int64_t j = 0; j < visible; ++j) sum += p[j] = std::exp(p[j] - mx);
          const float inv = 1.0f / sum;
          for (int64_t j = 0; j < visible; ++j) p[j] *= inv;
          for (int64_t j = visible; j < keys; ++j) p[j] = 0.0f;
        }
        for (int64_t j0 = 0; j0 < keys; j0 += bs) {
          const int64_t n = std::min(bs, keys - j0);
          dnnl_sgemm('N', 'N', rows, d, n, 1.0f, scores.data() + j0, keys,
                     kv.v_blocks[j0 / bs] + head_offset, kv_stride, j0 == 0 ? 0.0f : 1.0f, O,
                     q_stride);
        }
        for (int64_t r = 0; r < rows; ++r) {
          const float* gh = gate + (i0 + r) * q_stride + h * d;
          float* o = O + r * q_stride;
          for (int64_t e = 0; e < d; ++e) o[e] *= Sigmoid(gh[e]);
        }
      }
    }
  }
}

}  // namespace nextserve::kernels::cpu
