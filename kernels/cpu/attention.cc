// Gated full attention on the CPU: q/k (1 + w) RMSNorm, partial NeoX RoPE, causal GQA softmax
// attention in fp32, sigmoid output gate.
#include <algorithm>
#include <cmath>
#include <vector>

#include "base/dtype.h"
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

namespace {

// q/k norm + RoPE for t tokens, token i at position_of(i).
template <typename PositionOf>
void PrepTokens(const float* qg, float* k, int64_t t, PositionOf position_of,
                const AttentionShape& s, const float* q_norm, const float* k_norm, float eps,
                float* q, float* gate) {
  const int64_t d = s.head_dim, half = s.rotary_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // transformers: 1 / base ** (arange(0, dim, 2) / dim), all fp32.
    inv_freq[i] =
        1.0f / std::pow(s.rope_theta, static_cast<float>(2 * i) / static_cast<float>(s.rotary_dim));
  }
#pragma omp parallel if (t > 1 && WorthThreads(t * (s.num_heads + s.num_kv_heads) * d))
  {
    std::vector<float> cos(static_cast<size_t>(half)), sin(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < t; ++i) {
      const float pos = static_cast<float>(position_of(i));
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
}

}  // namespace

void AttentionPrep(const float* qg, float* k, int64_t t, int64_t first_pos, const AttentionShape& s,
                   const float* q_norm, const float* k_norm, float eps, float* q, float* gate) {
  PrepTokens(
      qg, k, t, [first_pos](int64_t i) { return first_pos + i; }, s, q_norm, k_norm, eps, q, gate);
}

void AttentionPrep(const float* qg, float* k, const StepMeta& step, const AttentionShape& s,
                   const float* q_norm, const float* k_norm, float eps, float* q, float* gate) {
  const int32_t* positions = step.positions;
  PrepTokens(
      qg, k, step.num_tokens, [positions](int64_t i) { return positions[i]; }, s, q_norm, k_norm,
      eps, q, gate);
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

namespace nextserve::kernels::cpu {
namespace {

// Rows [j0, j0 + n) of one kv head of a paged cache layer as fp32: a pointer into the arena (fp32)
// or into `scratch` after widening (bf16). Returns the row stride.
const float* KvRows(const void* arena, DType dtype, int64_t row0, int64_t n, int64_t width,
                    int64_t head_offset, int64_t d, std::vector<float>& scratch, int64_t* stride) {
  if (dtype == DType::kF32) {
    *stride = width;
    return static_cast<const float*>(arena) + row0 * width + head_offset;
  }
  scratch.resize(static_cast<size_t>(n * d));
  const uint16_t* src = static_cast<const uint16_t*>(arena) + row0 * width + head_offset;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t e = 0; e < d; ++e) scratch[r * d + e] = Bf16ToF32(src[r * width + e]);
  }
  *stride = d;
  return scratch.data();
}

// One unit of attention work: `rows` query rows that share a kv head and a causal horizon
// pattern. Decode tokens take all heads of a GQA group at once (rows = group, one key horizon);
// prefill pieces take one head and up to 64 queries.
struct AttentionTask {
  int32_t seq, head;  // head: q head (prefill) or kv head (decode)
  int32_t i0, rows;   // query rows within the sequence (prefill) / unused (decode)
  bool decode;
};

}  // namespace

void PagedAttention(const float* q, const StepMeta& step, const KvLayer& cache,
                    const AttentionShape& s, const float* gate, float* out) {
  const int64_t d = s.head_dim, group = s.num_heads / s.num_kv_heads, bs = cache.block_size;
  const int64_t q_stride = s.num_heads * d, width = cache.width;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  constexpr int32_t kQueries = 64;  // queries per prefill task: bounds scores to 64 x keys
  static thread_local std::vector<AttentionTask> tasks;
  tasks.clear();
  for (int32_t sq = 0; sq < step.num_seqs; ++sq) {
    const int32_t t = step.query_len(sq);
    if (t == 1) {
      for (int32_t g = 0; g < s.num_kv_heads; ++g) tasks.push_back({sq, g, 0, 1, true});
      continue;
    }
    for (int32_t h = 0; h < s.num_heads; ++h) {
      for (int32_t i0 = 0; i0 < t; i0 += kQueries)
        tasks.push_back({sq, h, i0, std::min(kQueries, t - i0), false});
    }
  }
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  const AttentionTask* task_list = tasks.data();  // the caller's thread_local, for every thread
#pragma omp parallel
  {
    std::vector<float> scores, kbuf, vbuf;
#pragma omp for schedule(dynamic, 1)
    for (int64_t ti = 0; ti < num_tasks; ++ti) {
      const AttentionTask task = task_list[ti];
      const int64_t first = step.cu_seqlens_q[task.seq], ctx = step.context_lens[task.seq];
      const int64_t t = step.query_len(task.seq), past = ctx - t;
      const int32_t* table = step.block_table + int64_t{task.seq} * step.max_blocks_per_seq;
      // Decode: rows are the group's heads of the one new token, contiguous [group, d].
      const int64_t kv_head = task.decode ? task.head : task.head / group;
      const int64_t rows = task.decode ? group : task.rows;
      const int64_t keys = task.decode ? ctx : past + task.i0 + task.rows;
      const int64_t lda = task.decode ? d : q_stride;
      const int64_t row0 = first + (task.decode ? 0 : task.i0);
      const int64_t head0 = task.decode ? kv_head * group : task.head;
      const float* Q = q + row0 * q_stride + head0 * d;
      float* O = out + row0 * q_stride + head0 * d;
      scores.resize(static_cast<size_t>(rows * keys));
      for (int64_t j0 = 0; j0 < keys; j0 += bs) {
        const int64_t n = std::min(bs, keys - j0);
        int64_t ldk;
        const float* K = KvRows(cache.k, cache.dtype, int64_t{table[j0 / bs]} * bs, n, width,
                                kv_head * d, d, kbuf, &ldk);
        dnnl_sgemm('N', 'T', rows, n, d, scale, Q, lda, K, ldk, 0.0f, scores.data() + j0, keys);
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* p = scores.data() + r * keys;
        const int64_t visible = task.decode ? ctx : past + task.i0 + r + 1;
        const float mx = *std::max_element(p, p + visible);
        float sum = 0;
        for (int64_t j = 0; j < visible; ++j) sum += p[j] = std::exp(p[j] - mx);
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < visible; ++j) p[j] *= inv;
        for (int64_t j = visible; j < keys; ++j) p[j] = 0.0f;
      }
      for (int64_t j0 = 0; j0 < keys; j0 += bs) {
        const int64_t n = std::min(bs, keys - j0);
        int64_t ldv;
        const float* V = KvRows(cache.v, cache.dtype, int64_t{table[j0 / bs]} * bs, n, width,
                                kv_head * d, d, vbuf, &ldv);
        dnnl_sgemm('N', 'N', rows, d, n, 1.0f, scores.data() + j0, keys, V, ldv,
                   j0 == 0 ? 0.0f : 1.0f, O, lda);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float* gh = gate + row0 * q_stride + head0 * d + r * lda;
        float* o = O + r * lda;
        for (int64_t e = 0; e < d; ++e) o[e] *= Sigmoid(gh[e]);
      }
    }
  }
}

void AppendKv(const float* k, const float* v, const StepMeta& step, const KvLayer& cache) {
  const int64_t w = cache.width;
#pragma omp parallel for schedule(static) if (step.num_tokens > 16)
  for (int64_t i = 0; i < step.num_tokens; ++i) {
    const int64_t row = step.slot_mapping[i];
    if (cache.dtype == DType::kF32) {
      std::copy_n(k + i * w, w, static_cast<float*>(cache.k) + row * w);
      std::copy_n(v + i * w, w, static_cast<float*>(cache.v) + row * w);
    } else {
      uint16_t* kd = static_cast<uint16_t*>(cache.k) + row * w;
      uint16_t* vd = static_cast<uint16_t*>(cache.v) + row * w;
      for (int64_t e = 0; e < w; ++e) {
        kd[e] = F32ToBf16(k[i * w + e]);
        vd[e] = F32ToBf16(v[i * w + e]);
      }
    }
  }
}

}  // namespace nextserve::kernels::cpu
