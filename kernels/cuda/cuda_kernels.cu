// The CUDA backend's own kernels: simple, correct first forms (one thread or warp per output, one
// block per row / head / sequence), fp32 arithmetic throughout. The GEMMs go through cuBLASLt
// (cuda_backend.cc). Host-side shapes come in as launch arguments; step metadata is read on the
// device.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace nextserve::kernels::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;

unsigned GridFor(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

#define GRID_STRIDE(i, n)                                                                \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__device__ __forceinline__ float Silu(float x) {
  return x / (1.0f + expf(-x));
}
__device__ __forceinline__ float Sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

__device__ __forceinline__ float Bf16Bits(uint16_t v) {
  return __uint_as_float(static_cast<uint32_t>(v) << 16);
}
// As base/dtype.h: round to nearest even, NaN kept quiet.
__device__ __forceinline__ uint16_t ToBf16Bits(float f) {
  uint32_t bits = __float_as_uint(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
__device__ __forceinline__ float F16Bits(uint16_t v) {
  return __half2float(__ushort_as_half(v));
}
// float8_e4m3fn: bias 7, subnormals, 0x7f / 0xff NaN.
__device__ __forceinline__ float Fp8Bits(uint8_t v) {
  const int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
  float mag;
  if (exp == 0xf && man == 7) {
    mag = __int_as_float(0x7fc00000);
  } else if (exp == 0) {
    mag = ldexpf(static_cast<float>(man), -9);
  } else {
    mag = ldexpf(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
  }
  return sign ? -mag : mag;
}

// Element i of a matrix in `dtype` at an aligned base (FP8: the code only, unscaled).
__device__ __forceinline__ float LoadAligned(DType dtype, const void* base, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(base)[i];
    case DType::kBF16:
      return Bf16Bits(static_cast<const uint16_t*>(base)[i]);
    case DType::kF16:
      return F16Bits(static_cast<const uint16_t*>(base)[i]);
    case DType::kF8E4M3:
      return Fp8Bits(static_cast<const uint8_t*>(base)[i]);
  }
  return 0.0f;
}
// The same from any byte address (checkpoint tensors need not be aligned).
__device__ __forceinline__ float LoadUnaligned(DType dtype, const void* base, int64_t i) {
  const uint8_t* p = static_cast<const uint8_t*>(base);
  switch (dtype) {
    case DType::kF32: {
      const uint8_t* q = p + 4 * i;
      return __uint_as_float(q[0] | (q[1] << 8) | (q[2] << 16) |
                             (static_cast<uint32_t>(q[3]) << 24));
    }
    case DType::kBF16:
    case DType::kF16: {
      const uint8_t* q = p + 2 * i;
      const uint16_t bits = static_cast<uint16_t>(q[0] | (q[1] << 8));
      return dtype == DType::kBF16 ? Bf16Bits(bits) : F16Bits(bits);
    }
    case DType::kF8E4M3:
      return Fp8Bits(p[i]);
  }
  return 0.0f;
}

__device__ float WarpSum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ float WarpMax(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum / max; every thread of the block calls it and gets the result. blockDim.x is a
// multiple of 32.
__device__ float BlockSum(float v) {
  __shared__ float partial[32];
  __syncthreads();  // partial may still be read by a previous call
  v = WarpSum(v);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  float total = 0;
  for (int w = 0; w < warps; ++w) total += partial[w];
  return total;
}
__device__ float BlockMax(float v) {
  __shared__ float partial[32];
  __syncthreads();
  v = WarpMax(v);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  float m = -INFINITY;
  for (int w = 0; w < warps; ++w) m = fmaxf(m, partial[w]);
  return m;
}

// The sequence whose new tokens hold row i: cu[s] <= i < cu[s + 1].
__device__ int32_t SeqOf(const int32_t* cu, int32_t num_seqs, int64_t i) {
  int32_t lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int32_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// ---- memory and dense algebra

__global__ void FillKernel(float* dst, float value, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = value;
}

// One warp per output feature j, all m (<= 16) rows at once: the weight row is read once.
__global__ void LinearFewRowsKernel(const float* x, int64_t m, DType dtype, const void* w,
                                    const float* scale, int64_t scale_cols, int64_t n, int64_t k,
                                    float* y, bool accumulate) {
  constexpr int kMaxRows = 16;
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= n) return;
  const int64_t j = warp;
  float acc[kMaxRows];
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) acc[r] = 0.0f;
  for (int64_t c = lane; c < k; c += kWarp) {
    float wv = LoadAligned(dtype, w, j * k + c);
    if (dtype == DType::kF8E4M3) wv *= scale[(j / 128) * scale_cols + c / 128];
#pragma unroll
    for (int r = 0; r < kMaxRows; ++r) {
      if (r < m) acc[r] += x[r * k + c] * wv;
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    if (r >= m) break;
    const float s = WarpSum(acc[r]);
    if (lane == 0) y[r * n + j] = accumulate ? y[r * n + j] + s : s;
  }
}

__global__ void DequantizeRowsKernel(DType dtype, const void* w, const float* scale,
                                     int64_t scale_cols, int64_t row0, int64_t rows, int64_t cols,
                                     float* out) {
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = row0 + i / cols, c = i % cols;
    float v = LoadUnaligned(dtype, w, r * cols + c);
    if (dtype == DType::kF8E4M3) v *= scale[(r / 128) * scale_cols + c / 128];
    out[i] = v;
  }
}

__global__ void RoundToKernel(bool bf16, const float* src, int64_t n, uint16_t* dst) {
  GRID_STRIDE(i, n) {
    dst[i] = bf16 ? ToBf16Bits(src[i]) : __half_as_ushort(__float2half_rn(src[i]));
  }
}

__global__ void EmbeddingKernel(const int32_t* ids, int64_t n, DType dtype, const void* table,
                                int64_t cols, float* out) {
  GRID_STRIDE(i, n * cols) {
    const int64_t row = ids[i / cols], c = i % cols;
    out[i] = LoadUnaligned(dtype, table, row * cols + c);
  }
}

// One block per row. z (gated form): y = w * (x * inv) * silu(z).
__global__ void RmsNormKernel(const float* x, int64_t dim, const float* w, float eps, bool one_plus,
                              const float* z, float* y) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = BlockSum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    if (z != nullptr) {
      yr[i] = w[i] * (xr[i] * inv) * Silu(z[blockIdx.x * dim + i]);
    } else {
      yr[i] = xr[i] * inv * (one_plus ? 1.0f + w[i] : w[i]);
    }
  }
}

__global__ void AddKernel(const float* x, int64_t n, float* y) {
  GRID_STRIDE(i, n) y[i] += x[i];
}
__global__ void SiluMulKernel(const float* gate, const float* up, int64_t n, float* y) {
  GRID_STRIDE(i, n) y[i] = Silu(gate[i]) * up[i];
}
__global__ void ScaleRowsBySigmoidKernel(const float* gate, int64_t rows, int64_t dim, float* x) {
  GRID_STRIDE(i, rows * dim) x[i] *= Sigmoid(gate[i / dim]);
}
__global__ void GatherRowsKernel(const float* src, const int32_t* rows, int64_t n, int64_t dim,
                                 float* dst) {
  GRID_STRIDE(i, n * dim) dst[i] = src[static_cast<int64_t>(rows[i / dim]) * dim + i % dim];
}

// ---- attention

// One block per (token, head); heads [0, num_heads) are q heads, the rest kv heads.
__global__ void AttentionPrepKernel(const float* qg, float* k, const int32_t* positions,
                                    int64_t heads, int64_t kv_heads, int64_t d, int64_t rotary_dim,
                                    float theta, const float* q_norm, const float* k_norm,
                                    float eps, float* q, float* gate) {
  extern __shared__ float buf[];
  const int64_t i = blockIdx.x, h = blockIdx.y;
  const bool is_q = h < heads;
  const float* src = is_q ? qg + (i * heads + h) * 2 * d : k + (i * kv_heads + (h - heads)) * d;
  float* dst = is_q ? q + (i * heads + h) * d : k + (i * kv_heads + (h - heads)) * d;
  const float* w = is_q ? q_norm : k_norm;
  float ss = 0;
  for (int64_t e = threadIdx.x; e < d; e += blockDim.x) {
    const float v = src[e];
    buf[e] = v;
    ss += v * v;
    if (is_q) gate[(i * heads + h) * d + e] = src[d + e];
  }
  ss = BlockSum(ss);  // also orders the buf writes before the reads below
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  for (int64_t e = threadIdx.x; e < d; e += blockDim.x) buf[e] = buf[e] * inv * (1.0f + w[e]);
  __syncthreads();
  const int64_t half = rotary_dim / 2;
  const float pos = static_cast<float>(positions[i]);
  for (int64_t e = threadIdx.x; e < d; e += blockDim.x) {
    if (e < half) {
      const float inv_freq =
          1.0f / powf(theta, static_cast<float>(2 * e) / static_cast<float>(rotary_dim));
      const float f = pos * inv_freq, c = cosf(f), s = sinf(f);
      const float x1 = buf[e], x2 = buf[e + half];
      dst[e] = x1 * c - x2 * s;
      dst[e + half] = x2 * c + x1 * s;
    } else if (e >= rotary_dim) {
      dst[e] = buf[e];
    }
  }
}

__global__ void AppendKvKernel(const float* k, const float* v, const int32_t* slot_mapping,
                               int64_t tokens, int64_t width, void* ck, void* cv, bool bf16) {
  GRID_STRIDE(i, tokens * width) {
    const int64_t t = i / width, e = i % width, row = slot_mapping[t];
    if (bf16) {
      static_cast<uint16_t*>(ck)[row * width + e] = ToBf16Bits(k[i]);
      static_cast<uint16_t*>(cv)[row * width + e] = ToBf16Bits(v[i]);
    } else {
      static_cast<float*>(ck)[row * width + e] = k[i];
      static_cast<float*>(cv)[row * width + e] = v[i];
    }
  }
}

__device__ __forceinline__ float KvAt(const void* arena, bool bf16, int64_t i) {
  return bf16 ? Bf16Bits(static_cast<const uint16_t*>(arena)[i])
              : static_cast<const float*>(arena)[i];
}

constexpr int kAttnThreads = 128;  // keys per tile; also output dims per pass (head_dim <= 256)

// One block per (query token, q head): online softmax over tiles of 128 keys, causal within the
// sequence's own new tokens.
__global__ void PagedAttentionKernel(const float* q, StepMeta step, const void* ck, const void* cv,
                                     bool bf16, int64_t bs, int64_t width, int64_t heads,
                                     int64_t kv_heads, int64_t d, const float* gate, float* out) {
  extern __shared__ float smem[];
  int64_t* rows = reinterpret_cast<int64_t*>(smem);           // [kAttnThreads], 8-byte aligned
  float* qs = reinterpret_cast<float*>(rows + kAttnThreads);  // [d]
  float* p = qs + d;                                          // [kAttnThreads]
  const int64_t i = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int32_t s = SeqOf(step.cu_seqlens_q, step.num_seqs, i);
  const int64_t first = step.cu_seqlens_q[s], t = step.cu_seqlens_q[s + 1] - first;
  const int64_t past = step.context_lens[s] - t, visible = past + (i - first) + 1;
  const int32_t* table = step.block_table + static_cast<int64_t>(s) * step.max_blocks_per_seq;
  const int64_t kv_head = h / (heads / kv_heads), head_off = kv_head * d;
  const float scale = 1.0f / sqrtf(static_cast<float>(d));
  for (int64_t e = tid; e < d; e += blockDim.x) qs[e] = q[(i * heads + h) * d + e];
  __syncthreads();
  float m = -INFINITY, l = 0.0f, acc[2] = {0.0f, 0.0f};
  for (int64_t j0 = 0; j0 < visible; j0 += kAttnThreads) {
    const int64_t j = j0 + tid;
    float score = -INFINITY;
    if (j < visible) {
      const int64_t row = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
      rows[tid] = row;
      float dot = 0.0f;
      for (int64_t e = 0; e < d; ++e) dot += qs[e] * KvAt(ck, bf16, row * width + head_off + e);
      score = dot * scale;
    }
    const float m_new = fmaxf(m, BlockMax(score));
    const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
    const float pj = j < visible ? expf(score - m_new) : 0.0f;
    p[tid] = pj;
    l = l * corr + BlockSum(pj);  // BlockSum's barrier publishes p and rows
    m = m_new;
    const int64_t n = min(static_cast<int64_t>(kAttnThreads), visible - j0);
    for (int pass = 0; pass < 2; ++pass) {
      const int64_t e = tid + pass * kAttnThreads;
      if (e >= d) break;
      float a = acc[pass] * corr;
      for (int64_t jj = 0; jj < n; ++jj)
        a += p[jj] * KvAt(cv, bf16, rows[jj] * width + head_off + e);
      acc[pass] = a;
    }
    __syncthreads();  // p and rows are rewritten by the next tile
  }
  for (int pass = 0; pass < 2; ++pass) {
    const int64_t e = tid + pass * kAttnThreads;
    if (e >= d) break;
    const int64_t o = i * heads * d + h * d + e;
    out[o] = acc[pass] / l * Sigmoid(gate[o]);
  }
}

// ---- Gated DeltaNet

__global__ void SplitQkvzKernel(const float* qkvz, int64_t t, int64_t nk, int64_t dk, int64_t r,
                                int64_t dv, float* mixed, float* z) {
  const int64_t group = 2 * dk + 2 * r * dv, width = nk * group, key_dim = nk * dk;
  const int64_t cd = 2 * key_dim + nk * r * dv, value_dim = nk * r * dv;
  GRID_STRIDE(idx, t * width) {
    const int64_t i = idx / width, c = idx % width, g = c / group, o = c % group;
    const float v = qkvz[idx];
    if (o < dk) {
      mixed[i * cd + g * dk + o] = v;
    } else if (o < 2 * dk) {
      mixed[i * cd + key_dim + g * dk + (o - dk)] = v;
    } else if (o < 2 * dk + r * dv) {
      mixed[i * cd + 2 * key_dim + g * r * dv + (o - 2 * dk)] = v;
    } else {
      z[i * value_dim + g * r * dv + (o - 2 * dk - r * dv)] = v;
    }
  }
}

__global__ void SplitBaKernel(const float* ba, int64_t t, int64_t nk, int64_t r, float* b,
                              float* a) {
  const int64_t nv = nk * r;
  GRID_STRIDE(idx, t * 2 * nv) {
    const int64_t i = idx / (2 * nv), c = idx % (2 * nv), g = c / (2 * r), o = c % (2 * r);
    if (o < r) {
      b[i * nv + g * r + o] = ba[idx];
    } else {
      a[i * nv + g * r + (o - r)] = ba[idx];
    }
  }
}

__global__ void CausalConvKernel(const float* x, StepMeta step, int64_t channels, int64_t kernel,
                                 const float* w, const float* state, int64_t slot_stride,
                                 float* y) {
  const int64_t hist = kernel - 1;
  GRID_STRIDE(idx, static_cast<int64_t>(step.num_tokens) * channels) {
    const int64_t i = idx / channels, c = idx % channels;
    const int32_t s = SeqOf(step.cu_seqlens_q, step.num_seqs, i);
    const int64_t first = step.cu_seqlens_q[s], r = i - first;
    const float* window = state + static_cast<int64_t>(step.state_slots[s]) * slot_stride;
    float acc = 0.0f;
    for (int64_t j = 0; j < kernel; ++j) {
      const int64_t p = r + j;
      const float v = p < hist ? window[p * channels + c] : x[(first + p - hist) * channels + c];
      acc += w[c * kernel + j] * v;
    }
    y[idx] = Silu(acc);
  }
}

// After CausalConvKernel (same stream): each sequence's window becomes its last `hist` raw
// inputs. One thread per (sequence, channel), rows ascending: row p reads row t + p >= p, which
// this loop has not yet overwritten.
__global__ void ConvWindowKernel(const float* x, StepMeta step, int64_t channels, int64_t kernel,
                                 float* state, int64_t slot_stride) {
  const int64_t hist = kernel - 1;
  GRID_STRIDE(idx, static_cast<int64_t>(step.num_seqs) * channels) {
    const int64_t s = idx / channels, c = idx % channels;
    const int64_t first = step.cu_seqlens_q[s], t = step.cu_seqlens_q[s + 1] - first;
    float* window = state + static_cast<int64_t>(step.state_slots[s]) * slot_stride;
    for (int64_t p = 0; p < hist; ++p) {
      const int64_t qrow = t + p;
      window[p * channels + c] =
          qrow < hist ? window[qrow * channels + c] : x[(first + qrow - hist) * channels + c];
    }
  }
}

__global__ void GatesKernel(const float* b, const float* a, int64_t t, int64_t nv,
                            const float* a_log, const float* dt_bias, float* beta, float* g) {
  GRID_STRIDE(e, t * nv) {
    const int64_t h = e % nv;
    beta[e] = Sigmoid(b[e]);
    const float x = a[e] + dt_bias[h];
    const float softplus = x > 20.0f ? x : log1pf(expf(x));  // torch's threshold
    g[e] = -expf(a_log[h]) * softplus;
  }
}

// One block per (sequence, value head); thread c owns state columns c, c + blockDim, ... The
// state lives in the arena (global memory) and is updated in place token by token.
__global__ void DeltaRuleRecurrentKernel(const float* conv_out, const float* g, const float* beta,
                                         StepMeta step, int64_t nk, int64_t nv, int64_t dk,
                                         int64_t dv, float* state_base, int64_t slot_stride,
                                         int64_t conv_floats, float* out) {
  extern __shared__ float smem[];
  float* qs = smem;       // [dk]
  float* ks = smem + dk;  // [dk]
  const int64_t s = blockIdx.x, h = blockIdx.y, kh = h / (nv / nk);
  const int64_t key_dim = nk * dk, cd = 2 * key_dim + nv * dv;
  const int64_t row0 = step.cu_seqlens_q[s], t = step.cu_seqlens_q[s + 1] - row0;
  float* S = state_base + static_cast<int64_t>(step.state_slots[s]) * slot_stride + conv_floats +
             h * dk * dv;
  const float qscale = 1.0f / sqrtf(static_cast<float>(dk));
  for (int64_t i = row0; i < row0 + t; ++i) {
    const float* row = conv_out + i * cd;
    float sq = 0, sk = 0;
    for (int64_t e = threadIdx.x; e < dk; e += blockDim.x) {
      const float qv = row[kh * dk + e], kv = row[key_dim + kh * dk + e];
      qs[e] = qv;
      ks[e] = kv;
      sq += qv * qv;
      sk += kv * kv;
    }
    sq = BlockSum(sq);
    sk = BlockSum(sk);
    const float qn = qscale / sqrtf(sq + 1e-6f), kn = 1.0f / sqrtf(sk + 1e-6f);
    const float decay = expf(g[i * nv + h]), b = beta[i * nv + h];
    for (int64_t c = threadIdx.x; c < dv; c += blockDim.x) {
      float mem = 0;
      for (int64_t r = 0; r < dk; ++r) {
        const float v = S[r * dv + c] * decay;
        S[r * dv + c] = v;
        mem += ks[r] * kn * v;
      }
      const float delta = b * (row[2 * key_dim + h * dv + c] - mem);
      float o = 0;
      for (int64_t r = 0; r < dk; ++r) {
        const float v = S[r * dv + c] + ks[r] * kn * delta;
        S[r * dv + c] = v;
        o += qs[r] * qn * v;
      }
      out[(i * nv + h) * dv + c] = o;
    }
    __syncthreads();  // qs and ks are rewritten by the next token
  }
}

// ---- mixture of experts

// One thread per row: softmax, then top_k picks by (probability desc, id asc) without a mask
// (each pick is the best strictly after the previous in that order), then ids sorted ascending.
__global__ void RouterTopKKernel(const float* logits, int64_t n, int64_t experts, int64_t top_k,
                                 bool renormalise, int32_t* ids, float* weights) {
  GRID_STRIDE(i, n) {
    const float* lg = logits + i * experts;
    float mx = -INFINITY;
    for (int64_t e = 0; e < experts; ++e) mx = fmaxf(mx, lg[e]);
    float sum = 0;
    for (int64_t e = 0; e < experts; ++e) sum += expf(lg[e] - mx);
    int32_t* out_ids = ids + i * top_k;
    float* out_w = weights + i * top_k;
    float prev_p = INFINITY, top_sum = 0;
    int64_t prev_id = -1;
    for (int64_t j = 0; j < top_k; ++j) {
      float best_p = -1.0f;
      int64_t best = -1;
      for (int64_t e = 0; e < experts; ++e) {
        const float pe = expf(lg[e] - mx) / sum;
        const bool after = pe < prev_p || (pe == prev_p && e > prev_id);
        if (after && pe > best_p) best_p = pe, best = e;
      }
      out_ids[j] = static_cast<int32_t>(best);
      out_w[j] = best_p;
      top_sum += best_p;
      prev_p = best_p;
      prev_id = best;
    }
    for (int64_t j = 1; j < top_k; ++j) {  // insertion sort by id
      const int32_t id = out_ids[j];
      const float w = out_w[j];
      int64_t q = j - 1;
      while (q >= 0 && out_ids[q] > id) {
        out_ids[q + 1] = out_ids[q];
        out_w[q + 1] = out_w[q];
        --q;
      }
      out_ids[q + 1] = id;
      out_w[q + 1] = w;
    }
    if (renormalise) {
      for (int64_t j = 0; j < top_k; ++j) out_w[j] /= top_sum;
    }
  }
}

__device__ __forceinline__ int64_t SlotsOffset(int64_t hidden_bytes) {
  return (hidden_bytes + 3) / 4 * 4;
}

// One block per record.
__global__ void PackRecordsKernel(const float* h, const int32_t* ids, const float* weights,
                                  const int32_t* owner, const int32_t* token_of,
                                  const int32_t* rank_of, int64_t hidden, bool bf16, int64_t top_k,
                                  int64_t record_bytes, uint8_t* out) {
  const int64_t rec = blockIdx.x;
  const int64_t i = token_of[rec];
  const int32_t rank = rank_of[rec];
  uint8_t* base = out + rec * record_bytes;
  const float* src = h + i * hidden;
  for (int64_t e = threadIdx.x; e < hidden; e += blockDim.x) {
    if (bf16) {
      reinterpret_cast<uint16_t*>(base)[e] = ToBf16Bits(src[e]);
    } else {
      reinterpret_cast<float*>(base)[e] = src[e];
    }
  }
  if (threadIdx.x == 0) {
    int32_t* slot_ids = reinterpret_cast<int32_t*>(base + SlotsOffset(hidden * (bf16 ? 2 : 4)));
    float* slot_w = reinterpret_cast<float*>(slot_ids + top_k);
    int64_t slot = 0;
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t e = ids[i * top_k + j];
      if (owner[e] != rank) continue;
      slot_ids[slot] = e;
      slot_w[slot++] = weights[i * top_k + j];
    }
    for (; slot < top_k; ++slot) slot_ids[slot] = -1, slot_w[slot] = 0.0f;
  }
}

__global__ void RecordIdsKernel(const uint8_t* records, int64_t count, int64_t hidden_bytes,
                                int64_t top_k, int64_t record_bytes, int32_t* slot_ids) {
  GRID_STRIDE(i, count * top_k) {
    const int64_t r = i / top_k, j = i % top_k;
    slot_ids[i] =
        reinterpret_cast<const int32_t*>(records + r * record_bytes + SlotsOffset(hidden_bytes))[j];
  }
}

__global__ void GatherPairsKernel(const uint8_t* records, int64_t count, int64_t hidden, bool bf16,
                                  int64_t top_k, int64_t record_bytes, const int32_t* pair_of,
                                  float* xs) {
  GRID_STRIDE(i, count * top_k * hidden) {
    const int64_t slot = i / hidden, e = i % hidden, r = slot / top_k;
    const int32_t pair = pair_of[slot];
    if (pair < 0) continue;
    const uint8_t* base = records + r * record_bytes;
    xs[static_cast<int64_t>(pair) * hidden + e] =
        bf16 ? Bf16Bits(reinterpret_cast<const uint16_t*>(base)[e])
             : reinterpret_cast<const float*>(base)[e];
  }
}

__global__ void WeightedSumKernel(const float* ys, const uint8_t* records, int64_t count,
                                  int64_t hidden, int64_t hidden_bytes, int64_t top_k,
                                  int64_t record_bytes, const int32_t* pair_of, float* partial) {
  GRID_STRIDE(i, count * hidden) {
    const int64_t r = i / hidden, e = i % hidden;
    const float* w =
        reinterpret_cast<const float*>(records + r * record_bytes + SlotsOffset(hidden_bytes)) +
        top_k;
    float acc = 0.0f;
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t pair = pair_of[r * top_k + j];
      if (pair < 0) continue;
      acc += w[j] * ys[static_cast<int64_t>(pair) * hidden + e];
    }
    partial[i] = acc;
  }
}

__global__ void CombineKernel(const float* combined, const int32_t* offsets,
                              const int32_t* record_list, int64_t n, int64_t hidden,
                              float* routed) {
  GRID_STRIDE(i, n * hidden) {
    const int64_t tok = i / hidden, e = i % hidden;
    float acc = 0.0f;
    for (int32_t q = offsets[tok]; q < offsets[tok + 1]; ++q) {
      acc += combined[static_cast<int64_t>(record_list[q]) * hidden + e];
    }
    routed[i] = acc;
  }
}

// One block per row.
__global__ void ArgmaxRowsKernel(const float* logits, int64_t vocab, int32_t* tokens,
                                 int32_t* bad) {
  __shared__ float best_v[kThreads];
  __shared__ int64_t best_i[kThreads];
  __shared__ int any_bad;
  const float* row = logits + blockIdx.x * vocab;
  if (threadIdx.x == 0) any_bad = 0;
  __syncthreads();
  float v = -INFINITY;
  int64_t id = -1;
  bool broken = false;
  for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    const float x = row[c];
    if (isnan(x) || (isinf(x) && x > 0)) broken = true;
    if (id < 0 || x > v) v = x, id = c;  // strided ascending: the first max is the lowest id
  }
  if (broken) atomicOr(&any_bad, 1);
  best_v[threadIdx.x] = v;
  best_i[threadIdx.x] = id;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const float ov = best_v[threadIdx.x + stride];
      const int64_t oi = best_i[threadIdx.x + stride];
      const int64_t mi = best_i[threadIdx.x];
      if (oi >= 0 &&
          (mi < 0 || ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < mi))) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    tokens[blockIdx.x] = static_cast<int32_t>(best_i[0]);
    bad[blockIdx.x] = any_bad;
  }
}

}  // namespace

cudaError_t LaunchFill(float* dst, float value, int64_t n, cudaStream_t stream) {
  if (n > 0) FillKernel<<<GridFor(n), kThreads, 0, stream>>>(dst, value, n);
  return cudaGetLastError();
}

cudaError_t LaunchLinearFewRows(const float* x, int64_t m, const Matrix& w, float* y,
                                bool accumulate, cudaStream_t stream) {
  if (m > 16) return cudaErrorInvalidValue;
  if (m == 0 || w.rows == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((w.rows * kWarp + kThreads - 1) / kThreads);
  LinearFewRowsKernel<<<blocks, kThreads, 0, stream>>>(
      x, m, w.dtype, w.data, w.block_scale, w.scale_cols(), w.rows, w.cols, y, accumulate);
  return cudaGetLastError();
}

cudaError_t LaunchDequantizeRows(const Matrix& w, int64_t row0, int64_t rows, float* out,
                                 cudaStream_t stream) {
  if (rows * w.cols > 0) {
    DequantizeRowsKernel<<<GridFor(rows * w.cols), kThreads, 0, stream>>>(
        w.dtype, w.data, w.block_scale, w.scale_cols(), row0, rows, w.cols, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchRoundTo(DType dtype, const float* src, int64_t n, void* dst,
                          cudaStream_t stream) {
  if (dtype != DType::kBF16 && dtype != DType::kF16) return cudaErrorInvalidValue;
  if (n > 0) {
    RoundToKernel<<<GridFor(n), kThreads, 0, stream>>>(dtype == DType::kBF16, src, n,
                                                       static_cast<uint16_t*>(dst));
  }
  return cudaGetLastError();
}

cudaError_t LaunchEmbedding(const int32_t* ids, int64_t n, const Matrix& table, float* out,
                            cudaStream_t stream) {
  if (n * table.cols > 0) {
    EmbeddingKernel<<<GridFor(n * table.cols), kThreads, 0, stream>>>(ids, n, table.dtype,
                                                                      table.data, table.cols, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps,
                          bool one_plus, const float* z, float* y, cudaStream_t stream) {
  if (rows > 0) {
    RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, dim, w, eps, one_plus, z,
                                                                        y);
  }
  return cudaGetLastError();
}

cudaError_t LaunchAdd(const float* x, int64_t n, float* y, cudaStream_t stream) {
  if (n > 0) AddKernel<<<GridFor(n), kThreads, 0, stream>>>(x, n, y);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate, const float* up, int64_t n, float* y,
                          cudaStream_t stream) {
  if (n > 0) SiluMulKernel<<<GridFor(n), kThreads, 0, stream>>>(gate, up, n, y);
  return cudaGetLastError();
}

cudaError_t LaunchScaleRowsBySigmoid(const float* gate, int64_t rows, int64_t dim, float* x,
                                     cudaStream_t stream) {
  if (rows * dim > 0) {
    ScaleRowsBySigmoidKernel<<<GridFor(rows * dim), kThreads, 0, stream>>>(gate, rows, dim, x);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const float* src, const int32_t* rows, int64_t n, int64_t dim,
                             float* dst, cudaStream_t stream) {
  if (n * dim > 0)
    GatherRowsKernel<<<GridFor(n * dim), kThreads, 0, stream>>>(src, rows, n, dim, dst);
  return cudaGetLastError();
}

cudaError_t LaunchAttentionPrep(const float* qg, float* k, const StepMeta& step,
                                const AttentionShape& s, const float* q_norm, const float* k_norm,
                                float eps, float* q, float* gate, cudaStream_t stream) {
  if (step.num_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(step.num_tokens),
                  static_cast<unsigned>(s.num_heads + s.num_kv_heads));
  AttentionPrepKernel<<<grid, 128, s.head_dim * sizeof(float), stream>>>(
      qg, k, step.positions, s.num_heads, s.num_kv_heads, s.head_dim, s.rotary_dim, s.rope_theta,
      q_norm, k_norm, eps, q, gate);
  return cudaGetLastError();
}

cudaError_t LaunchAppendKv(const float* k, const float* v, const StepMeta& step, void* cache_k,
                           void* cache_v, bool kv_bf16, int64_t width, cudaStream_t stream) {
  const int64_t n = int64_t{step.num_tokens} * width;
  if (n > 0) {
    AppendKvKernel<<<GridFor(n), kThreads, 0, stream>>>(k, v, step.slot_mapping, step.num_tokens,
                                                        width, cache_k, cache_v, kv_bf16);
  }
  return cudaGetLastError();
}

cudaError_t LaunchPagedAttention(const float* q, const StepMeta& step, const void* cache_k,
                                 const void* cache_v, bool kv_bf16, int64_t block_size,
                                 int64_t width, const AttentionShape& s, const float* gate,
                                 float* out, cudaStream_t stream) {
  if (s.head_dim > 2 * kAttnThreads) return cudaErrorInvalidValue;
  if (step.num_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(step.num_tokens), static_cast<unsigned>(s.num_heads));
  const size_t shared =
      (s.head_dim + kAttnThreads) * sizeof(float) + kAttnThreads * sizeof(int64_t);
  PagedAttentionKernel<<<grid, kAttnThreads, shared, stream>>>(
      q, step, cache_k, cache_v, kv_bf16, block_size, width, s.num_heads, s.num_kv_heads,
      s.head_dim, gate, out);
  return cudaGetLastError();
}

cudaError_t LaunchDeltaNetSplit(const float* qkvz, const float* ba, int64_t t,
                                const DeltaNetShape& s, float* mixed_qkv, float* z, float* b,
                                float* a, cudaStream_t stream) {
  if (t == 0) return cudaSuccess;
  const int64_t nk = s.num_key_heads, r = s.num_value_heads / nk;
  const int64_t width = nk * (2 * s.key_head_dim + 2 * r * s.value_head_dim);
  SplitQkvzKernel<<<GridFor(t * width), kThreads, 0, stream>>>(qkvz, t, nk, s.key_head_dim, r,
                                                               s.value_head_dim, mixed_qkv, z);
  SplitBaKernel<<<GridFor(t * 2 * s.num_value_heads), kThreads, 0, stream>>>(ba, t, nk, r, b, a);
  return cudaGetLastError();
}

cudaError_t LaunchCausalConvSilu(const float* x, const StepMeta& step, const DeltaNetShape& s,
                                 const float* w, float* state_base, int64_t slot_stride, float* y,
                                 cudaStream_t stream) {
  if (step.num_seqs == 0) return cudaSuccess;
  const int64_t channels = s.conv_dim();
  if (step.num_tokens > 0) {
    CausalConvKernel<<<GridFor(int64_t{step.num_tokens} * channels), kThreads, 0, stream>>>(
        x, step, channels, s.conv_kernel, w, state_base, slot_stride, y);
  }
  ConvWindowKernel<<<GridFor(int64_t{step.num_seqs} * channels), kThreads, 0, stream>>>(
      x, step, channels, s.conv_kernel, state_base, slot_stride);
  return cudaGetLastError();
}

cudaError_t LaunchDeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv,
                                const float* a_log, const float* dt_bias, float* beta, float* g,
                                cudaStream_t stream) {
  if (t * nv > 0) {
    GatesKernel<<<GridFor(t * nv), kThreads, 0, stream>>>(b, a, t, nv, a_log, dt_bias, beta, g);
  }
  return cudaGetLastError();
}

cudaError_t LaunchDeltaRuleRecurrent(const float* conv_out, const float* g, const float* beta,
                                     const StepMeta& step, const DeltaNetShape& s,
                                     float* state_base, int64_t slot_stride, float* out,
                                     cudaStream_t stream) {
  if (step.num_seqs == 0 || step.num_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(step.num_seqs), static_cast<unsigned>(s.num_value_heads));
  DeltaRuleRecurrentKernel<<<grid, 128, 2 * s.key_head_dim * sizeof(float), stream>>>(
      conv_out, g, beta, step, s.num_key_heads, s.num_value_heads, s.key_head_dim, s.value_head_dim,
      state_base, slot_stride, s.conv_floats(), out);
  return cudaGetLastError();
}

cudaError_t LaunchRouterTopK(const float* logits, int64_t n, int64_t experts, int64_t top_k,
                             bool renormalise, int32_t* ids, float* weights, cudaStream_t stream) {
  if (n > 0 && top_k > 0) {
    RouterTopKKernel<<<GridFor(n, 64), 64, 0, stream>>>(logits, n, experts, top_k, renormalise, ids,
                                                        weights);
  }
  return cudaGetLastError();
}

cudaError_t LaunchPackRecords(const float* h, const int32_t* ids, const float* weights,
                              const int32_t* owner, const int32_t* token_of, const int32_t* rank_of,
                              int64_t records, int64_t hidden, bool hidden_bf16, int64_t top_k,
                              int64_t record_bytes, void* out, cudaStream_t stream) {
  if (records > 0) {
    PackRecordsKernel<<<static_cast<unsigned>(records), kThreads, 0, stream>>>(
        h, ids, weights, owner, token_of, rank_of, hidden, hidden_bf16, top_k, record_bytes,
        static_cast<uint8_t*>(out));
  }
  return cudaGetLastError();
}

cudaError_t LaunchRecordIds(const void* records, int64_t count, int64_t hidden_bytes, int64_t top_k,
                            int64_t record_bytes, int32_t* slot_ids, cudaStream_t stream) {
  if (count * top_k > 0) {
    RecordIdsKernel<<<GridFor(count * top_k), kThreads, 0, stream>>>(
        static_cast<const uint8_t*>(records), count, hidden_bytes, top_k, record_bytes, slot_ids);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGatherPairs(const void* records, int64_t count, int64_t hidden, bool hidden_bf16,
                              int64_t top_k, int64_t record_bytes, const int32_t* pair_of,
                              float* xs, cudaStream_t stream) {
  const int64_t n = count * top_k * hidden;
  if (n > 0) {
    GatherPairsKernel<<<GridFor(n), kThreads, 0, stream>>>(static_cast<const uint8_t*>(records),
                                                           count, hidden, hidden_bf16, top_k,
                                                           record_bytes, pair_of, xs);
  }
  return cudaGetLastError();
}

cudaError_t LaunchMoeWeightedSum(const float* ys, const void* records, int64_t count,
                                 int64_t hidden, int64_t hidden_bytes, int64_t top_k,
                                 int64_t record_bytes, const int32_t* pair_of, float* partial,
                                 cudaStream_t stream) {
  if (count * hidden > 0) {
    WeightedSumKernel<<<GridFor(count * hidden), kThreads, 0, stream>>>(
        ys, static_cast<const uint8_t*>(records), count, hidden, hidden_bytes, top_k, record_bytes,
        pair_of, partial);
  }
  return cudaGetLastError();
}

cudaError_t LaunchMoeCombine(const float* combined, const int32_t* offsets,
                             const int32_t* record_list, int64_t n, int64_t hidden, float* routed,
                             cudaStream_t stream) {
  if (n * hidden > 0) {
    CombineKernel<<<GridFor(n * hidden), kThreads, 0, stream>>>(combined, offsets, record_list, n,
                                                                hidden, routed);
  }
  return cudaGetLastError();
}

cudaError_t LaunchArgmaxRows(const float* logits, int64_t rows, int64_t vocab, int32_t* tokens,
                             int32_t* bad, cudaStream_t stream) {
  if (rows > 0) {
    ArgmaxRowsKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, tokens,
                                                                           bad);
  }
  return cudaGetLastError();
}

}  // namespace nextserve::kernels::cuda
