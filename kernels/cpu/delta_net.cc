// Gated DeltaNet on the CPU: projection split, causal depthwise conv + SiLU, gates, and the gated
// delta rule in its chunked (UT/WY, C = 64) and recurrent forms. All state arithmetic in fp32.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "dnnl.h"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve::kernels::cpu {
namespace {

constexpr int64_t kChunk = 64;

// x / sqrt(sum(x²) + 1e-6) (FLA / transformers form), times `scale`.
void L2NormScaled(const float* x, int64_t d, float scale, float* y) {
  float ss = 0;
  for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
  const float inv = scale / std::sqrt(ss + 1e-6f);
  for (int64_t i = 0; i < d; ++i) y[i] = x[i] * inv;
}

inline void Axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Normalised q (scaled) and k for every token and key head: [t, nk, dk] each.
void NormaliseQK(const float* conv_out, int64_t t, const DeltaNetShape& s, std::vector<float>& qn,
                 std::vector<float>& kn) {
  const int64_t dk = s.key_head_dim, nk = s.num_key_heads, cd = s.conv_dim();
  qn.resize(static_cast<size_t>(t * nk * dk));
  kn.resize(qn.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
#pragma omp parallel for schedule(static) if (t > 1 && WorthThreads(2 * t * nk * dk))
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t h = 0; h < nk; ++h) {
      L2NormScaled(conv_out + i * cd + h * dk, dk, scale, &qn[(i * nk + h) * dk]);
      L2NormScaled(conv_out + i * cd + s.key_dim() + h * dk, dk, 1.0f, &kn[(i * nk + h) * dk]);
    }
  }
}

// One value head over all t tokens, recurrent form (definition, spec §3.3.5).
void RecurrentHead(const float* qn, const float* kn, const float* conv_out, const float* g,
                   const float* beta, int64_t t, const DeltaNetShape& s, int64_t h, float* S,
                   float* out) {
  const int64_t dk = s.key_head_dim, dv = s.value_head_dim, nk = s.num_key_heads,
                nv = s.num_value_heads, kh = h / (nv / nk), cd = s.conv_dim();
  static thread_local std::vector<float> m;
  m.resize(static_cast<size_t>(dv));
  for (int64_t i = 0; i < t; ++i) {
    const float* q = qn + (i * nk + kh) * dk;
    const float* k = kn + (i * nk + kh) * dk;
    const float* v = conv_out + i * cd + 2 * s.key_dim() + h * dv;
    const float a = std::exp(g[i * nv + h]), b = beta[i * nv + h];
    for (int64_t e = 0; e < dk * dv; ++e) S[e] *= a;
    std::fill(m.begin(), m.end(), 0.0f);
    for (int64_t r = 0; r < dk; ++r) Axpy(k[r], S + r * dv, m.data(), dv);
    for (int64_t c = 0; c < dv; ++c) m[c] = b * (v[c] - m[c]);
    for (int64_t r = 0; r < dk; ++r) Axpy(k[r], m.data(), S + r * dv, dv);
    float* o = out + (i * nv + h) * dv;
    std::fill(o, o + dv, 0.0f);
    for (int64_t r = 0; r < dk; ++r) Axpy(q[r], S + r * dv, o, dv);
  }
}

// The same recurrence in two passes over the state per token (the state is 64 KiB per head, so a
// decode token is bound by reading and writing it): m = a kᵀS is read first, then S = a S + k mᵀ
// and o = qᵀS are written and read in the same pass. Equal to RecurrentHead up to rounding.
void FusedRecurrentHead(const float* qn, const float* kn, const float* conv_out, const float* g,
                        const float* beta, int64_t t, const DeltaNetShape& s, int64_t h, float* S,
                        float* out) {
  const int64_t dk = s.key_head_dim, dv = s.value_head_dim, nk = s.num_key_heads,
                nv = s.num_value_heads, kh = h / (nv / nk), cd = s.conv_dim();
  static thread_local std::vector<float> m;
  m.resize(static_cast<size_t>(dv));
  for (int64_t i = 0; i < t; ++i) {
    const float* q = qn + (i * nk + kh) * dk;
    const float* k = kn + (i * nk + kh) * dk;
    const float* v = conv_out + i * cd + 2 * s.key_dim() + h * dv;
    const float a = std::exp(g[i * nv + h]), b = beta[i * nv + h];
    std::fill(m.begin(), m.end(), 0.0f);
    for (int64_t r = 0; r < dk; ++r) Axpy(k[r], S + r * dv, m.data(), dv);
    for (int64_t c = 0; c < dv; ++c) m[c] = b * (v[c] - a * m[c]);
    float* o = out + (i * nv + h) * dv;
    std::fill(o, o + dv, 0.0f);
    for (int64_t r = 0; r < dk; ++r) {
      float* row = S + r * dv;
      const float kr = k[r], qr = q[r];
      for (int64_t c = 0; c < dv; ++c) {
        row[c] = a * row[c] + kr * m[c];
        o[c] += qr * row[c];
      }
    }
  }
}

// One value head, chunked UT/WY form (spec §3.3.6) with the chunk's products as small GEMMs.
// Only exp of non-positive numbers is taken.
void ChunkedHead(const float* qn, const float* kn, const float* conv_out, const float* g,
                 const float* beta, int64_t t, const DeltaNetShape& s, int64_t h, float* S,
                 float* out) {
  const int64_t dk = s.key_head_dim, dv = s.value_head_dim, nk = s.num_key_heads,
                nv = s.num_value_heads, kh = h / (nv / nk), cd = s.conv_dim();
  const int64_t qk_stride = nk * dk, out_stride = nv * dv, wide = dv + dk;
  std::vector<float> gam(kChunk), kk(kChunk * kChunk), qk(kChunk * kChunk), X(kChunk * wide),
      kd(kChunk * dk);
  for (int64_t c0 = 0; c0 < t; c0 += kChunk) {
    const int64_t n = std::min(kChunk, t - c0);
    const float* Q = qn + (c0 * nk + kh) * dk;  // row i at Q + i * qk_stride
    const float* K = kn + (c0 * nk + kh) * dk;
    float* O = out + (c0 * nv + h) * dv;  // row i at O + i * out_stride
    float acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      acc += g[(c0 + i) * nv + h];
      gam[i] = acc;
    }
    // K Kᵀ and Q Kᵀ (only the lower triangles are used).
    dnnl_sgemm('N', 'T', n, n, dk, 1.0f, K, qk_stride, K, qk_stride, 0.0f, kk.data(), kChunk);
    dnnl_sgemm('N', 'T', n, n, dk, 1.0f, Q, qk_stride, K, qk_stride, 0.0f, qk.data(), kChunk);
    // X = [β⊙V | β⊙e^γ⊙K], then forward substitution with (I + M), M_ij = β_i e^{γ_i-γ_j} k_i·k_j.
    for (int64_t i = 0; i < n; ++i) {
      const float b = beta[(c0 + i) * nv + h], eb = b * std::exp(gam[i]);
      const float* v = conv_out + (c0 + i) * cd + 2 * s.key_dim() + h * dv;
      const float* k = K + i * qk_stride;
      float* x = &X[i * wide];
      for (int64_t c = 0; c < dv; ++c) x[c] = b * v[c];
      for (int64_t r = 0; r < dk; ++r) x[dv + r] = eb * k[r];
      for (int64_t j = 0; j < i; ++j) {
        Axpy(-b * std::exp(gam[i] - gam[j]) * kk[i * kChunk + j], &X[j * wide], x, wide);
      }
    }
    // U = U0 - W S, in place in X's first dv columns.
    dnnl_sgemm('N', 'N', n, dv, dk, -1.0f, &X[dv], wide, S, dv, 1.0f, X.data(), wide);
    // O = diag(e^γ) Q S + (QKᵀ ⊙ D, lower incl.) U.
    dnnl_sgemm('N', 'N', n, dv, dk, 1.0f, Q, qk_stride, S, dv, 0.0f, O, out_stride);
    for (int64_t i = 0; i < n; ++i) {
      const float egi = std::exp(gam[i]);
      float* o = O + i * out_stride;
      for (int64_t c = 0; c < dv; ++c) o[c] *= egi;
      for (int64_t j = 0; j < kChunk; ++j) {
        qk[i * kChunk + j] = j <= i ? qk[i * kChunk + j] * std::exp(gam[i] - gam[j]) : 0.0f;
      }
    }
    dnnl_sgemm('N', 'N', n, dv, n, 1.0f, qk.data(), kChunk, X.data(), wide, 1.0f, O, out_stride);
    // S = e^{γ_n} S + (K ⊙ e^{γ_n-γ})ᵀ U.
    const float gn = gam[n - 1];
    for (int64_t j = 0; j < n; ++j) {
      const float w = std::exp(gn - gam[j]);
      const float* k = K + j * qk_stride;
      for (int64_t r = 0; r < dk; ++r) kd[j * dk + r] = w * k[r];
    }
    dnnl_sgemm('T', 'N', dk, dv, n, 1.0f, kd.data(), dk, X.data(), wide, std::exp(gn), S, dv);
  }
}

}  // namespace

void DeltaNetSplit(const float* qkvz, const float* ba, int64_t t, const DeltaNetShape& s,
                   float* mixed_qkv, float* z, float* b, float* a) {
  const int64_t dk = s.key_head_dim, dv = s.value_head_dim, nk = s.num_key_heads,
                r = s.num_value_heads / nk, group = 2 * dk + 2 * r * dv, cd = s.conv_dim(),
                qkvz_dim = nk * group, nv = s.num_value_heads;
#pragma omp parallel for schedule(static) if (t > 1 && WorthThreads(t * qkvz_dim))
  for (int64_t i = 0; i < t; ++i) {
    const float* src = qkvz + i * qkvz_dim;
    float* mixed = mixed_qkv + i * cd;
    for (int64_t g = 0; g < nk; ++g) {
      const float* grp = src + g * group;
      std::memcpy(mixed + g * dk, grp, dk * sizeof(float));
      std::memcpy(mixed + s.key_dim() + g * dk, grp + dk, dk * sizeof(float));
      std::memcpy(mixed + 2 * s.key_dim() + g * r * dv, grp + 2 * dk, r * dv * sizeof(float));
      std::memcpy(z + i * s.value_dim() + g * r * dv, grp + 2 * dk + r * dv,
                  r * dv * sizeof(float));
      for (int64_t j = 0; j < r; ++j) {
        b[i * nv + g * r + j] = ba[i * 2 * nv + g * 2 * r + j];
        a[i * nv + g * r + j] = ba[i * 2 * nv + g * 2 * r + r + j];
      }
    }
  }
}

void CausalConvSilu(const float* x, int64_t t, int64_t channels, int64_t kernel, const float* w,
                    float* conv_state, float* y) {
  const int64_t hist = kernel - 1;
  // Input row p of the window: p < hist comes from the state, the rest from x.
  auto in = [&](int64_t p) {
    return p < hist ? conv_state + p * channels : x + (p - hist) * channels;
  };
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < t; ++i) {
    float* out = y + i * channels;
    for (int64_t c = 0; c < channels; ++c) out[c] = 0.0f;
    for (int64_t j = 0; j < kernel; ++j) {
      const float* src = in(i + j);
      for (int64_t c = 0; c < channels; ++c) out[c] += w[c * kernel + j] * src[c];
    }
    for (int64_t c = 0; c < channels; ++c) out[c] = Silu(out[c]);
  }
  // The new window: the last `hist` raw inputs (state rows, then x).
  std::vector<float> next(static_cast<size_t>(hist * channels));
  for (int64_t p = 0; p < hist; ++p) {
    std::memcpy(&next[p * channels], in(t + p), channels * sizeof(float));
  }
  std::memcpy(conv_state, next.data(), next.size() * sizeof(float));
}

void DeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv, const float* a_log,
                   const float* dt_bias, float* beta, float* g) {
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t h = 0; h < nv; ++h) {
      const int64_t e = i * nv + h;
      beta[e] = Sigmoid(b[e]);
      const float x = a[e] + dt_bias[h];
      const float softplus = x > 20.0f ? x : std::log1p(std::exp(x));  // torch's threshold
      g[e] = -std::exp(a_log[h]) * softplus;
    }
  }
}

void DeltaRule(const float* conv_out, const float* g, const float* beta, int64_t t,
               const DeltaNetShape& s, float* state, float* out, bool chunked) {
  std::vector<float> qn, kn;
  NormaliseQK(conv_out, t, s, qn, kn);
  const int64_t head_state = s.key_head_dim * s.value_head_dim;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t h = 0; h < s.num_value_heads; ++h) {
    float* S = state + h * head_state;
    if (chunked) {
      ChunkedHead(qn.data(), kn.data(), conv_out, g, beta, t, s, h, S, out);
    } else {
      RecurrentHead(qn.data(), kn.data(), conv_out, g, beta, t, s, h, S, out);
    }
  }
}

void DeltaRuleReference(const float* conv_out, const float* g, const float* beta, int64_t t,
                        const DeltaNetShape& s, float* state, float* out) {
  DeltaRule(conv_out, g, beta, t, s, state, out, /*chunked=*/false);
}

void CausalConvSilu(const float* x, const StepMeta& step, const DeltaNetShape& s, const float* w,
                    const StateLayer& state, float* y) {
  const int64_t channels = s.conv_dim(), kernel = s.conv_kernel, hist = kernel - 1;
  const int32_t* cu = step.cu_seqlens_q;
  // Taps as [kernel][channels], so that the channel loops below run over contiguous memory.
  static thread_local std::vector<float> taps;
  taps.resize(static_cast<size_t>(kernel * channels));
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t j = 0; j < kernel; ++j) taps[j * channels + c] = w[c * kernel + j];
  }
  const float* tap = taps.data();
#pragma omp parallel for schedule(static) if (step.num_tokens > 1 && \
                                              WorthThreads(step.num_tokens * channels * kernel))
  for (int64_t i = 0; i < step.num_tokens; ++i) {
    const int64_t sq =
        std::upper_bound(cu, cu + step.num_seqs + 1, static_cast<int32_t>(i)) - cu - 1;
    const int64_t first = cu[sq], r = i - first;
    const float* window = state.conv(step.state_slots[sq]);
    float* out = y + i * channels;
    for (int64_t c = 0; c < channels; ++c) out[c] = 0.0f;
    for (int64_t j = 0; j < kernel; ++j) {
      const int64_t p = r + j;  // input row p of this sequence's window
      const float* src = p < hist ? window + p * channels : x + (first + p - hist) * channels;
      const float* wj = tap + j * channels;
      for (int64_t c = 0; c < channels; ++c) out[c] += wj[c] * src[c];
    }
    for (int64_t c = 0; c < channels; ++c) out[c] = Silu(out[c]);
  }
  // Each sequence's new window: its last `hist` raw inputs (old window rows, then x).
#pragma omp parallel if (step.num_seqs > 1 && WorthThreads(step.num_seqs * hist * channels))
  {
    std::vector<float> next(static_cast<size_t>(hist * channels));
#pragma omp for schedule(static)
    for (int64_t sq = 0; sq < step.num_seqs; ++sq) {
      const int64_t first = cu[sq], t = cu[sq + 1] - first;
      float* window = state.conv(step.state_slots[sq]);
      for (int64_t p = 0; p < hist; ++p) {
        const int64_t q = t + p;
        const float* src = q < hist ? window + q * channels : x + (first + q - hist) * channels;
        std::memcpy(&next[p * channels], src, channels * sizeof(float));
      }
      std::memcpy(window, next.data(), next.size() * sizeof(float));
    }
  }
}

void DeltaRule(const float* conv_out, const float* g, const float* beta, const StepMeta& step,
               const DeltaNetShape& s, const StateLayer& state, float* out) {
  static thread_local std::vector<float> qn, kn;
  NormaliseQK(conv_out, step.num_tokens, s, qn, kn);
  const int64_t nv = s.num_value_heads, nk = s.num_key_heads, dk = s.key_head_dim,
                dv = s.value_head_dim, cd = s.conv_dim();
  const int64_t head_state = dk * dv, tasks = int64_t{step.num_seqs} * nv;
  const float* qn_data = qn.data();
  const float* kn_data = kn.data();
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t sq = task / nv, h = task % nv;
    const int64_t row = step.cu_seqlens_q[sq], t = step.cu_seqlens_q[sq + 1] - row;
    float* S = state.recurrent(step.state_slots[sq], s) + h * head_state;
    const float* qs = qn_data + row * nk * dk;
    const float* ks = kn_data + row * nk * dk;
    // Prompts (and prompt chunks) use the chunked form; single decode tokens the recurrence.
    if (t > 1) {
      ChunkedHead(qs, ks, conv_out + row * cd, g + row * nv, beta + row * nv, t, s, h, S,
                  out + row * nv * dv);
    } else {
      FusedRecurrentHead(qs, ks, conv_out + row * cd, g + row * nv, beta + row * nv, t, s, h, S,
                         out + row * nv * dv);
    }
  }
}

}  // namespace nextserve::kernels::cpu
