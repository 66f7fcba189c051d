// CPU kernels against their obviously-correct forms: GEMM paths vs a double-precision reference,
// chunked delta rule vs the recurrence, and every cached op split into pieces vs all at once.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve::kernels {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// Stores fp32 values as `dtype`; returns the bytes and the values as the model will see them.
std::string Encode(DType dtype, const std::vector<float>& v) {
  std::string bytes(v.size() * DTypeSize(dtype), '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&bytes[4 * i], &v[i], 4);
    } else {
      uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v[i]) : F32ToF16(v[i]);
      std::memcpy(&bytes[2 * i], &h, 2);
    }
  }
  return bytes;
}

struct LinearCase {
  DType dtype;
  int64_t m;
};

class LinearTest : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearTest, MatchesReference) {
  const auto [dtype, m] = GetParam();
  const int64_t n = 67, k = 131;  // odd sizes exercise the vector tails
  const auto x = Random(m * k, 1), wv = Random(n * k, 2, 0.1f);
  // An odd byte offset checks that unaligned weights (safetensors offsets) are fine.
  std::string storage = " " + Encode(dtype, wv);
  const Matrix w{dtype, storage.data() + 1, n, k};
  std::vector<float> got(m * n, 0.5f), want(m * n, 0.5f);
  cpu::Linear(x.data(), m, w, got.data(), /*accumulate=*/true);
  cpu::LinearReference(x.data(), m, w, want.data(), /*accumulate=*/true);
  EXPECT_LT(MaxAbsDiff(got, want), 2e-5f);
  // Both paths agree on the same input.
  std::vector<float> few(m * n), gemm(m * n);
  cpu::LinearFewRows(x.data(), m, w, few.data(), false);
  cpu::LinearGemm(x.data(), m, w, gemm.data(), false);
  EXPECT_LT(MaxAbsDiff(few, gemm), 2e-5f);
}

INSTANTIATE_TEST_SUITE_P(DTypesAndRows, LinearTest,
                         ::testing::Values(LinearCase{DType::kF32, 1}, LinearCase{DType::kF32, 4},
                                           LinearCase{DType::kF32, 9}, LinearCase{DType::kF32, 33},
                                           LinearCase{DType::kBF16, 1}, LinearCase{DType::kBF16, 3},
                                           LinearCase{DType::kBF16, 8},
                                           LinearCase{DType::kBF16, 70}, LinearCase{DType::kF16, 2},
                                           LinearCase{DType::kF16, 17}));

// Block-scaled FP8 weights: several 128x128 blocks with partial ones on both edges, scales that
// differ per block by orders of magnitude, and codes that cover subnormals and both signs.
struct Fp8Weights {
  std::string bytes;
  std::vector<float> scale;
  Matrix matrix(int64_t n, int64_t k) const {
    return Matrix{DType::kF8E4M3, bytes.data() + 1, n, k, scale.data()};
  }
};

Fp8Weights MakeFp8(int64_t n, int64_t k, uint32_t seed) {
  Fp8Weights w;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(0, 255);
  w.bytes = " ";  // odd offset: safetensors data need not be aligned
  for (int64_t i = 0; i < n * k; ++i) {
    int c = code(rng);
    if ((c & 0x7f) == 0x7f) c &= 0xfe;  // no NaN codes
    w.bytes.push_back(static_cast<char>(c));
  }
  const int64_t blocks = ((n + 127) / 128) * ((k + 127) / 128);
  for (int64_t b = 0; b < blocks; ++b) w.scale.push_back(std::ldexp(1.37f, -12 + 3 * (b % 5)));
  return w;
}

TEST(Fp8DequantizeTest, EveryCodeTimesItsBlockScale) {
  const int64_t n = 300, k = 200;  // 3 x 2 blocks, both edges partial
  const Fp8Weights f = MakeFp8(n, k, 3);
  const Matrix w = f.matrix(n, k);
  std::vector<float> rows(static_cast<size_t>(130 * k));
  cpu::DequantizeFp8Rows(w, 127, 130, rows.data());  // crosses the first block-row edge
  for (int64_t r = 127; r < 257; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const uint8_t q = static_cast<uint8_t>(f.bytes[1 + r * k + c]);
      const float want = F8E4M3ToF32(q) * f.scale[(r / 128) * 2 + c / 128];
      ASSERT_EQ(rows[(r - 127) * k + c], want) << r << "," << c;
    }
  }
}

class Fp8LinearTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(Fp8LinearTest, MatchesReference) {
  const int64_t m = GetParam();
  const int64_t n = 300, k = 200;
  const Fp8Weights f = MakeFp8(n, k, 4);
  const Matrix w = f.matrix(n, k);
  const auto x = Random(m * k, 5);
  std::vector<float> got(m * n, 0.5f), want(m * n, 0.5f);
  cpu::Linear(x.data(), m, w, got.data(), /*accumulate=*/true);
  cpu::LinearReference(x.data(), m, w, want.data(), /*accumulate=*/true);
  float scale = 0;
  for (float v : want) scale = std::max(scale, std::abs(v));
  ASSERT_GT(scale, 1e-3f);  // the outputs are not trivially zero
  EXPECT_LT(MaxAbsDiff(got, want), 1e-5f * scale);
  std::vector<float> few(m * n), gemm(m * n);
  cpu::LinearFewRows(x.data(), m, w, few.data(), false);
  cpu::LinearGemm(x.data(), m, w, gemm.data(), false);
  EXPECT_LT(MaxAbsDiff(few, gemm), 1e-5f * scale);
}

INSTANTIATE_TEST_SUITE_P(Rows, Fp8LinearTest, ::testing::Values(1, 2, 3, 4, 5, 8, 9, 40));

DeltaNetShape SmallShape() {
  return DeltaNetShape{2, 4, 16, 8, 4};
}  // 2 value heads per key head

struct DeltaInputs {
  std::vector<float> conv_out, g, beta, state;
};

DeltaInputs MakeDeltaInputs(const DeltaNetShape& s, int64_t t, uint32_t seed) {
  DeltaInputs in;
  in.conv_out = Random(t * s.conv_dim(), seed);
  in.g.resize(t * s.num_value_heads);
  in.beta.resize(in.g.size());
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (size_t i = 0; i < in.g.size(); ++i) {
    in.g[i] = -2.0f * u(rng);  // decays from e^-2 to 1
    in.beta[i] = u(rng);
  }
  in.state = Random(s.num_value_heads * s.key_head_dim * s.value_head_dim, seed + 2, 0.1f);
  return in;
}

class DeltaRuleTest : public ::testing::TestWithParam<int64_t> {};

// The chunked UT/WY form equals the recurrence (spec §3.3.6), from a non-zero state, across chunk
// boundaries, for outputs and the final state.
TEST_P(DeltaRuleTest, ChunkedEqualsRecurrence) {
  const int64_t t = GetParam();
  const DeltaNetShape s = SmallShape();
  DeltaInputs in = MakeDeltaInputs(s, t, 7);
  std::vector<float> state_c = in.state, state_r = in.state;
  std::vector<float> out_c(t * s.value_dim()), out_r(out_c.size());
  cpu::DeltaRule(in.conv_out.data(), in.g.data(), in.beta.data(), t, s, state_c.data(),
                 out_c.data(), true);
  cpu::DeltaRuleReference(in.conv_out.data(), in.g.data(), in.beta.data(), t, s, state_r.data(),
                          out_r.data());
  EXPECT_LT(MaxAbsDiff(out_c, out_r), 1e-5f);
  EXPECT_LT(MaxAbsDiff(state_c, state_r), 1e-5f);
  // The state must actually have moved, or the comparison proves nothing.
  EXPECT_GT(MaxAbsDiff(state_r, in.state), 1e-2f);
}

INSTANTIATE_TEST_SUITE_P(Lengths, DeltaRuleTest, ::testing::Values(1, 2, 63, 64, 65, 150));

// Feeding tokens in pieces through the carried state equals one call over all of them.
TEST(DeltaRule, PiecesEqualWhole) {
  const DeltaNetShape s = SmallShape();
  const int64_t t = 100;
  DeltaInputs in = MakeDeltaInputs(s, t, 11);
  std::vector<float> state_whole = in.state, state_parts = in.state;
  std::vector<float> out_whole(t * s.value_dim()), out_parts(out_whole.size());
  cpu::DeltaRule(in.conv_out.data(), in.g.data(), in.beta.data(), t, s, state_whole.data(),
                 out_whole.data(), true);
  int64_t pos = 0;
  for (int64_t piece : {37, 1, 50, 12}) {
    cpu::DeltaRule(in.conv_out.data() + pos * s.conv_dim(), in.g.data() + pos * s.num_value_heads,
                   in.beta.data() + pos * s.num_value_heads, piece, s, state_parts.data(),
                   out_parts.data() + pos * s.value_dim(), piece > 1);
    pos += piece;
  }
  ASSERT_EQ(pos, t);
  EXPECT_LT(MaxAbsDiff(out_whole, out_parts), 1e-5f);
  EXPECT_LT(MaxAbsDiff(state_whole, state_parts), 1e-5f);
}

TEST(CausalConv, MatchesDefinitionAndCarriesWindow) {
  const int64_t t = 9, c = 5, kernel = 4;
  const auto x = Random(t * c, 3), w = Random(c * kernel, 4);
  std::vector<float> state((kernel - 1) * c, 0.0f), y(t * c);
  cpu::CausalConvSilu(x.data(), t, c, kernel, w.data(), state.data(), y.data());
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      double acc = 0;
      for (int64_t j = 0; j < kernel; ++j) {
        const int64_t src = i - (kernel - 1) + j;  // W[c, kernel-1] multiplies the current token
        if (src >= 0) acc += w[ch * kernel + j] * x[src * c + ch];
      }
      const double want = acc / (1.0 + std::exp(-acc));
      EXPECT_NEAR(y[i * c + ch], want, 1e-5) << "token " << i << " channel " << ch;
    }
  }
  // Window = last kernel-1 raw inputs.
  for (int64_t p = 0; p < kernel - 1; ++p) {
    for (int64_t ch = 0; ch < c; ++ch)
      EXPECT_EQ(state[p * c + ch], x[(t - kernel + 1 + p) * c + ch]);
  }
  // Two pieces through the window equal the whole.
  std::vector<float> state2((kernel - 1) * c, 0.0f), y2(t * c);
  cpu::CausalConvSilu(x.data(), 2, c, kernel, w.data(), state2.data(), y2.data());
  cpu::CausalConvSilu(x.data() + 2 * c, t - 2, c, kernel, w.data(), state2.data(),
                      y2.data() + 2 * c);
  EXPECT_LT(MaxAbsDiff(y, y2), 1e-6f);
  EXPECT_EQ(state, state2);
}

// The grouped in_proj_qkvz / in_proj_ba layout (spec §3.3.1 closed forms).
TEST(DeltaNetSplit, FollowsGroupedLayout) {
  const DeltaNetShape s{2, 4, 3, 2, 4};  // nk 2, nv 4, dk 3, dv 2 -> r = 2
  const int64_t r = 2, group = 2 * s.key_head_dim + 2 * r * s.value_head_dim;
  std::vector<float> qkvz(s.num_key_heads * group), ba(2 * s.num_value_heads);
  for (size_t i = 0; i < qkvz.size(); ++i) qkvz[i] = static_cast<float>(i);
  for (size_t i = 0; i < ba.size(); ++i) ba[i] = 100.0f + i;
  std::vector<float> mixed(s.conv_dim()), z(s.value_dim()), b(4), a(4);
  cpu::DeltaNetSplit(qkvz.data(), ba.data(), 1, s, mixed.data(), z.data(), b.data(), a.data());
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t d = 0; d < 3; ++d) {
      EXPECT_EQ(mixed[h * 3 + d], group * h + d);                    // row_q
      EXPECT_EQ(mixed[s.key_dim() + h * 3 + d], group * h + 3 + d);  // row_k
    }
  }
  for (int64_t vh = 0; vh < 4; ++vh) {
    for (int64_t d = 0; d < 2; ++d) {
      EXPECT_EQ(mixed[2 * s.key_dim() + vh * 2 + d],
                group * (vh / 2) + 6 + 2 * (vh % 2) + d);                  // row_v
      EXPECT_EQ(z[vh * 2 + d], group * (vh / 2) + 10 + 2 * (vh % 2) + d);  // row_z
    }
    EXPECT_EQ(b[vh], 100 + 4 * (vh / 2) + vh % 2);      // row_b
    EXPECT_EQ(a[vh], 100 + 4 * (vh / 2) + 2 + vh % 2);  // row_a
  }
}

// Causal GQA attention with a cache vs a double-precision softmax.
TEST(Attention, MatchesNaiveSoftmaxWithPast) {
  const AttentionShape s{4, 2, 8, 4, 10000.0f};
  const int64_t past = 5, t = 3, len = past + t;
  const auto q = Random(t * 4 * 8, 5), k = Random(len * 2 * 8, 6), v = Random(len * 2 * 8, 7),
             gate = Random(t * 4 * 8, 8);
  std::vector<float> out(t * 4 * 8);
  // Blocks of 3 rows, laid out in shuffled order to prove the block table is followed.
  const int64_t bs = 3, nblocks = (len + bs - 1) / bs;
  std::vector<float> kpool(nblocks * bs * 16), vpool(kpool.size());
  std::vector<const float*> kb(nblocks), vb(nblocks);
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t phys = (b * 2 + 1) % nblocks;  // a permutation for nblocks = 3
    kb[b] = kpool.data() + phys * bs * 16;
    vb[b] = vpool.data() + phys * bs * 16;
    for (int64_t r = 0; r < bs && b * bs + r < len; ++r) {
      std::copy_n(k.data() + (b * bs + r) * 16, 16, const_cast<float*>(kb[b]) + r * 16);
      std::copy_n(v.data() + (b * bs + r) * 16, 16, const_cast<float*>(vb[b]) + r * 16);
    }
  }
  cpu::Attention(q.data(), PagedKv{kb.data(), vb.data(), bs}, t, past, s, gate.data(), out.data());
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t h = 0; h < 4; ++h) {
      const int64_t kvh = h / 2, visible = past + i + 1;
      std::vector<double> p(visible);
      double mx = -1e30, sum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < 8; ++e) dot += q[(i * 4 + h) * 8 + e] * k[(j * 2 + kvh) * 8 + e];
        p[j] = dot / std::sqrt(8.0);
        mx = std::max(mx, p[j]);
      }
      for (auto& x : p) sum += x = std::exp(x - mx);
      for (int64_t e = 0; e < 8; ++e) {
        double o = 0;
        for (int64_t j = 0; j < visible; ++j) o += p[j] / sum * v[(j * 2 + kvh) * 8 + e];
        o *= 1.0 / (1.0 + std::exp(-gate[(i * 4 + h) * 8 + e]));
        EXPECT_NEAR(out[(i * 4 + h) * 8 + e], o, 1e-5);
      }
    }
  }
}

// Partial NeoX RoPE: rotary dims rotate by position, the rest pass through; q/k are normalised.
TEST(AttentionPrep, NormThenPartialRope) {
  const AttentionShape s{1, 1, 8, 4, 100.0f};
  std::vector<float> qg = Random(16, 9), k = Random(8, 10), q(8), gate(8);
  const std::vector<float> w(8, 0.0f);
  const auto k_in = k;
  cpu::AttentionPrep(qg.data(), k.data(), 1, /*first_pos=*/3, s, w.data(), w.data(), 1e-6f,
                     q.data(), gate.data());
  for (int e = 0; e < 8; ++e) EXPECT_EQ(gate[e], qg[8 + e]);
  double ss = 0;
  for (int e = 0; e < 8; ++e) ss += k_in[e] * k_in[e];
  const double inv = 1.0 / std::sqrt(ss / 8 + 1e-6);
  for (int e = 4; e < 8; ++e) EXPECT_NEAR(k[e], k_in[e] * inv, 1e-5);  // pass-through dims
  for (int i = 0; i < 2; ++i) {
    const double f = 3.0 / std::pow(100.0, 2.0 * i / 4), x1 = k_in[i] * inv, x2 = k_in[i + 2] * inv;
    EXPECT_NEAR(k[i], x1 * std::cos(f) - x2 * std::sin(f), 1e-5);
    EXPECT_NEAR(k[i + 2], x2 * std::cos(f) + x1 * std::sin(f), 1e-5);
  }
}

// A row's results must not depend on what else is in the step: the small row ops run serially
// below cpu::WorthThreads and over the threads above it, and each row must come out with the same
// bits either way. Every op here runs once over a batch big enough to go parallel (two threads)
// and once per row alone (serial), and the rows are compared bit for bit.
class RowOpsBatchInvariance : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_threads_ = omp_get_max_threads();
    omp_set_num_threads(2);
  }
  void TearDown() override { omp_set_num_threads(saved_threads_); }

  // Runs op(rows_offset, row_count) over all rows, then row by row into `alone`; `out` holds
  // `width` values per row.
  template <typename Op>
  void ExpectSameBits(int64_t rows, int64_t width, std::vector<float>& out, Op op) {
    op(0, rows);
    const std::vector<float> batched(out.begin(), out.begin() + rows * width);
    std::fill(out.begin(), out.end(), -1.0f);
    for (int64_t r = 0; r < rows; ++r) op(r, 1);
    ASSERT_EQ(std::memcmp(batched.data(), out.data(), batched.size() * sizeof(float)), 0)
        << "max |batched - alone| = "
        << MaxAbsDiff(batched, std::vector<float>(out.begin(), out.begin() + rows * width));
  }

  static constexpr int64_t kRows = 40, kDim = 1024;  // 40 x 1024 is above the threshold
  static_assert(kRows * kDim >= cpu::kParallelMinElements && kDim < cpu::kParallelMinElements);
  std::unique_ptr<Backend> backend_ = MakeCpuBackend();
  int saved_threads_ = 1;
};

TEST_F(RowOpsBatchInvariance, NormsAndElementwise) {
  const std::vector<float> x = Random(kRows * kDim, 21), z = Random(kRows * kDim, 22),
                           w = Random(kDim, 23, 0.1f);
  std::vector<float> y(x.size());
  ExpectSameBits(kRows, kDim, y, [&](int64_t r, int64_t n) {
    backend_->RmsNorm(x.data() + r * kDim, n, kDim, w.data(), 1e-6f, true, y.data() + r * kDim);
  });
  ExpectSameBits(kRows, kDim, y, [&](int64_t r, int64_t n) {
    backend_->RmsNormGated(x.data() + r * kDim, z.data() + r * kDim, n, kDim, w.data(), 1e-6f,
                           y.data() + r * kDim);
  });
  ExpectSameBits(kRows, kDim, y, [&](int64_t r, int64_t n) {
    backend_->SiluMul(x.data() + r * kDim, z.data() + r * kDim, n * kDim, y.data() + r * kDim);
  });
  ExpectSameBits(kRows, kDim, y, [&](int64_t r, int64_t n) {
    std::copy(z.begin() + r * kDim, z.begin() + (r + n) * kDim, y.begin() + r * kDim);
    backend_->Add(x.data() + r * kDim, n * kDim, y.data() + r * kDim);
  });
}

TEST_F(RowOpsBatchInvariance, RouterTopK) {
  const int64_t experts = 128, top_k = 8, rows = 64;  // 8 * 64 * 128: above the threshold
  const std::vector<float> logits = Random(rows * experts, 24);
  std::vector<int32_t> ids(rows * top_k), alone_ids(ids.size());
  std::vector<float> weights(rows * top_k), alone(weights.size());
  cpu::RouterTopK(logits.data(), rows, experts, top_k, true, ids.data(), weights.data());
  for (int64_t r = 0; r < rows; ++r) {
    cpu::RouterTopK(logits.data() + r * experts, 1, experts, top_k, true,
                    alone_ids.data() + r * top_k, alone.data() + r * top_k);
  }
  EXPECT_EQ(ids, alone_ids);
  EXPECT_EQ(std::memcmp(weights.data(), alone.data(), weights.size() * sizeof(float)), 0);
}

TEST_F(RowOpsBatchInvariance, DeltaNetSplitAndAttentionPrep) {
  const DeltaNetShape d{8, 16, 128, 128, 4};  // the small preset's DeltaNet
  const int64_t qkvz_dim = 2 * d.key_dim() + 2 * d.value_dim(), nv = d.num_value_heads;
  const std::vector<float> qkvz = Random(kRows * qkvz_dim, 25), ba = Random(kRows * 2 * nv, 26);
  // One output buffer holding mixed_qkv, z, b and a per row, so that one comparison covers all.
  const int64_t width = d.conv_dim() + d.value_dim() + 2 * nv;
  std::vector<float> mixed(kRows * d.conv_dim()), zs(kRows * d.value_dim()), b(kRows * nv),
      a(kRows * nv), packed(kRows * width);
  ExpectSameBits(kRows, width, packed, [&](int64_t r, int64_t n) {
    cpu::DeltaNetSplit(qkvz.data() + r * qkvz_dim, ba.data() + r * 2 * nv, n, d,
                       mixed.data() + r * d.conv_dim(), zs.data() + r * d.value_dim(),
                       b.data() + r * nv, a.data() + r * nv);
    for (int64_t i = r; i < r + n; ++i) {
      float* row = packed.data() + i * width;
      std::copy_n(mixed.data() + i * d.conv_dim(), d.conv_dim(), row);
      std::copy_n(zs.data() + i * d.value_dim(), d.value_dim(), row + d.conv_dim());
      std::copy_n(b.data() + i * nv, nv, row + d.conv_dim() + d.value_dim());
      std::copy_n(a.data() + i * nv, nv, row + d.conv_dim() + d.value_dim() + nv);
    }
  });

  const AttentionShape s{8, 2, 256, 64, 1e7f};  // the small preset's attention
  const int64_t qg_dim = 2 * s.num_heads * s.head_dim, q_dim = s.num_heads * s.head_dim,
                k_dim = s.num_kv_heads * s.head_dim;
  const std::vector<float> qg = Random(kRows * qg_dim, 27), k_in = Random(kRows * k_dim, 28),
                           qn = Random(s.head_dim, 29, 0.1f), kn = Random(s.head_dim, 30, 0.1f);
  std::vector<float> k(k_in.size()), q(kRows * q_dim), gate(kRows * q_dim),
      prepped(kRows * (2 * q_dim + k_dim));
  const int64_t prep_width = 2 * q_dim + k_dim;
  ExpectSameBits(kRows, prep_width, prepped, [&](int64_t r, int64_t n) {
    std::copy(k_in.begin() + r * k_dim, k_in.begin() + (r + n) * k_dim, k.begin() + r * k_dim);
    cpu::AttentionPrep(qg.data() + r * qg_dim, k.data() + r * k_dim, n, /*first_pos=*/5 + r, s,
                       qn.data(), kn.data(), 1e-6f, q.data() + r * q_dim, gate.data() + r * q_dim);
    for (int64_t i = r; i < r + n; ++i) {
      float* row = prepped.data() + i * prep_width;
      std::copy_n(q.data() + i * q_dim, q_dim, row);
      std::copy_n(gate.data() + i * q_dim, q_dim, row + q_dim);
      std::copy_n(k.data() + i * k_dim, k_dim, row + 2 * q_dim);
    }
  });
}

}  // namespace
}  // namespace nextserve::kernels
