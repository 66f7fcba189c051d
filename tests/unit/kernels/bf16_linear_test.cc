// bf16 compute (cpu::SetLinearCompute(Compute::kBF16)) for bf16 weights against the
// double-precision LinearReference, with bounds derived from the arithmetic, per output element,
// relative to the absolute-value dot product A = sum_i |x_i| |w_i| (+ |y0| when accumulating):
//  - against the reference on the bf16-rounded activations x^: the products x^_i w_i are exact in
//    fp32 (8 x 8 significant bits), so only fp32 accumulation is left: at most k + 8 additions deep
//    (k terms, vdpbf16ps pairs, the horizontal sum, the accumulate), each off by 2^-24 relative:
//    |got - ref(x^)| <= (k + 8) 2^-24 A.
//  - against the reference on the fp32 activations x: rounding to bf16 (8 significant bits, round
//    to nearest even) moves each x_i by at most 2^-9 |x_i| (half of bf16's 2^-8 spacing), so
//    |got - ref(x)| <= (2^-9 + (k + 8) 2^-24) A.
// Also: fp32 mode stays bit-identical to the fp32 paths, other weight dtypes never change, and
// without AVX512-BF16 (DNNL_MAX_CPU_ISA=AVX2, the bf16_linear_avx2_test entry) bf16 mode is fp32.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve::kernels {
namespace {

using cpu::Compute;

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Weights stored as `dtype` one byte past an aligned start (safetensors offsets are arbitrary).
struct Stored {
  std::string bytes;
  Matrix matrix;
};
Stored Store(DType dtype, const std::vector<float>& v, int64_t n, int64_t k) {
  Stored s;
  s.bytes.assign(1 + v.size() * DTypeSize(dtype), '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    char* at = s.bytes.data() + 1 + i * DTypeSize(dtype);
    if (dtype == DType::kF32) {
      std::memcpy(at, &v[i], 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v[i]) : F32ToF16(v[i]);
      std::memcpy(at, &h, 2);
    }
  }
  s.matrix = Matrix{dtype, s.bytes.data() + 1, n, k};
  return s;
}

// Sets the process-wide compute mode for one scope.
class ScopedCompute {
 public:
  explicit ScopedCompute(Compute c) : saved_(cpu::LinearCompute()) { cpu::SetLinearCompute(c); }
  ~ScopedCompute() { cpu::SetLinearCompute(saved_); }

 private:
  Compute saved_;
};

std::vector<float> RunLinear(Compute mode, const std::vector<float>& x, int64_t m, const Matrix& w,
                             float y0) {
  ScopedCompute scope(mode);
  std::vector<float> y(m * w.rows, y0);
  cpu::Linear(x.data(), m, w, y.data(), /*accumulate=*/y0 != 0.0f);
  return y;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Bf16Case {
  int64_t m, n, k;
};

class Bf16LinearTest : public ::testing::TestWithParam<Bf16Case> {
 protected:
  void SetUp() override {
    if (!cpu::CpuHasBf16Dot()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  }
};

// Test names from the shape: m<rows>_n<weight rows>_k<columns>.
std::string ShapeName(const ::testing::TestParamInfo<Bf16Case>& info) {
  // Appended piece by piece: GCC 12 warns (-Wrestrict, a false positive) on "m" + std::string.
  std::string name = "m";
  name += std::to_string(info.param.m);
  name += "_n";
  name += std::to_string(info.param.n);
  name += "_k";
  name += std::to_string(info.param.k);
  return name;
}

TEST_P(Bf16LinearTest, WithinBf16RoundingOfReference) {
  const auto [m, n, k] = GetParam();
  const float y0 = 0.5f;  // accumulate onto a non-zero output
  const auto x = Random(m * k, 11), wv = Random(n * k, 12, 1.0f / std::sqrt(float(k)));
  const Stored w = Store(DType::kBF16, wv, n, k);
  std::vector<float> xr(x.size()), wf(wv.size());
  for (size_t i = 0; i < x.size(); ++i) xr[i] = Bf16ToF32(F32ToBf16(x[i]));
  for (size_t i = 0; i < wv.size(); ++i) wf[i] = Bf16ToF32(F32ToBf16(wv[i]));

  const std::vector<float> got = RunLinear(Compute::kBF16, x, m, w.matrix, y0);
  std::vector<float> exact(m * n, y0), rounded(m * n, y0);
  cpu::LinearReference(x.data(), m, w.matrix, exact.data(), true);
  cpu::LinearReference(xr.data(), m, w.matrix, rounded.data(), true);

  const double u = std::ldexp(1.0, -24), accumulation = (k + 8) * u, rounding = std::ldexp(1.0, -9);
  double worst_rounded = 0, worst_exact = 0, moved = 0;  // errors as multiples of their bounds
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      double a = y0, a_rounded = y0;
      for (int64_t i = 0; i < k; ++i) {
        a += std::abs(double(x[r * k + i]) * wf[j * k + i]);
        a_rounded += std::abs(double(xr[r * k + i]) * wf[j * k + i]);
      }
      const size_t at = r * n + j;
      worst_rounded =
          std::max(worst_rounded, std::abs(got[at] - rounded[at]) / (accumulation * a_rounded));
      worst_exact =
          std::max(worst_exact, std::abs(got[at] - exact[at]) / ((rounding + accumulation) * a));
      moved = std::max(moved, double(std::abs(got[at] - exact[at])));
    }
  }
  EXPECT_LE(worst_rounded, 1.0) << "vs the reference on bf16-rounded activations";
  EXPECT_LE(worst_exact, 1.0) << "vs the reference on fp32 activations";
  // The bf16 path ran: rounding the activations did change the outputs.
  EXPECT_GT(moved, 1e-6);
  ::testing::Test::RecordProperty("error_over_bound_rounded", std::to_string(worst_rounded));
  ::testing::Test::RecordProperty("error_over_bound_exact", std::to_string(worst_exact));
}

// Batch invariance: a row's outputs have the same bits whichever call it comes in: alone, in a few-
// rows call, in a GEMM call of any size, at any place in it (row-group and row-block tails,
// 4 x 4 tiles, pair kernels), accumulating or not.
TEST_P(Bf16LinearTest, ARowHasTheSameBitsInEveryBatch) {
  const auto [m, n, k] = GetParam();
  const auto x = Random(m * k, 21), wv = Random(n * k, 22, 1.0f / std::sqrt(float(k)));
  const Stored w = Store(DType::kBF16, wv, n, k);
  for (const float y0 : {0.0f, 0.25f}) {
    const std::vector<float> whole = RunLinear(Compute::kBF16, x, m, w.matrix, y0);
    // Sub-batches [first, first + rows) at offsets that move rows across tiles and groups.
    for (int64_t rows :
         {int64_t{1}, int64_t{3}, int64_t{5}, int64_t{8}, int64_t{9}, int64_t{13}, int64_t{130}}) {
      for (int64_t first : {int64_t{0}, int64_t{1}, m / 2, m - rows}) {
        if (first < 0 || first + rows > m) continue;
        const std::vector<float> part(x.begin() + first * k, x.begin() + (first + rows) * k);
        const std::vector<float> got = RunLinear(Compute::kBF16, part, rows, w.matrix, y0);
        EXPECT_EQ(std::memcmp(got.data(), whole.data() + first * n, got.size() * sizeof(float)), 0)
            << rows << " rows from row " << first << " of " << m << ", y0 " << y0;
      }
    }
  }
}

// Same results with 1 and 2 threads (the engine's sums must not depend on the thread count).
TEST_P(Bf16LinearTest, SameBitsAtOneAndTwoThreads) {
  const auto [m, n, k] = GetParam();
  const auto x = Random(m * k, 31), wv = Random(n * k, 32, 0.05f);
  const Stored w = Store(DType::kBF16, wv, n, k);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = RunLinear(Compute::kBF16, x, m, w.matrix, 0.0f);
  omp_set_num_threads(2);
  const auto two = RunLinear(Compute::kBF16, x, m, w.matrix, 0.0f);
  omp_set_num_threads(saved);
  EXPECT_TRUE(SameBits(one, two));
}

// As the experts run it: one call per thread inside a parallel region, each its own shape and
// inputs (per-thread scratch), each equal to the same call made alone.
TEST(Bf16Compute, CallsInsideAParallelRegionMatchSerialCalls) {
  if (!cpu::CpuHasBf16Dot()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  const int64_t n = 96, k = 160;
  const Stored w = Store(DType::kBF16, Random(n * k, 72, 0.1f), n, k);
  const int64_t rows[4] = {3, 17, 40, 9};
  std::vector<std::vector<float>> xs, serial, parallel(4);
  for (int i = 0; i < 4; ++i) {
    xs.push_back(Random(rows[i] * k, 80 + i));
    serial.push_back(RunLinear(Compute::kBF16, xs[i], rows[i], w.matrix, 0.0f));
  }
  ScopedCompute scope(Compute::kBF16);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(2);
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < 4; ++i) {
    parallel[i].assign(rows[i] * n, 0.0f);
    cpu::Linear(xs[i].data(), rows[i], w.matrix, parallel[i].data(), false);
  }
  omp_set_num_threads(saved);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(SameBits(parallel[i], serial[i])) << "call " << i;
}

// m: the few-rows kernel's row counts (1, 8), the first GEMM size (9), prefill sizes (tails of the
// 4-row tiles and of the 128-row blocks); n: odd (the pair kernel's single last row) and not a
// multiple of 4 or 64 (tile and panel tails); k: not a multiple of 32 (the masked tail) as well as
// the model's 1024.
INSTANTIATE_TEST_SUITE_P(Shapes, Bf16LinearTest,
                         ::testing::Values(Bf16Case{1, 67, 131}, Bf16Case{2, 64, 1024},
                                           Bf16Case{3, 33, 70}, Bf16Case{5, 67, 131},
                                           Bf16Case{8, 67, 131}, Bf16Case{8, 256, 1024},
                                           Bf16Case{9, 67, 131}, Bf16Case{64, 130, 200},
                                           Bf16Case{300, 96, 131}, Bf16Case{300, 256, 1024},
                                           Bf16Case{137, 70, 256}, Bf16Case{150, 131, 64},
                                           Bf16Case{4, 64, 16}, Bf16Case{40, 64, 16},
                                           Bf16Case{235, 1, 64}, Bf16Case{235, 576, 64}),
                         ShapeName);

// FP8 (E4M3, one fp32 scale per 128 x 128 block) under bf16 compute: each weight is widened to
// bf16 as round(fp8 · scale) (tile by tile, never a whole copy), so against the reference on the
// bf16-rounded activations and those bf16 weights only fp32 accumulation is left, and a row has
// the same bits in every batch, as for bf16 weights.
struct Fp8Stored {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  Matrix matrix;
};
Fp8Stored StoreFp8(const std::vector<float>& v, int64_t n, int64_t k) {
  Fp8Stored s;
  const int64_t rb = (n + 127) / 128, cb = (k + 127) / 128;
  s.scales.assign(rb * cb, 0.0f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < k; ++i) {
      float& scale = s.scales[(j / 128) * cb + i / 128];
      scale = std::max(scale, std::abs(v[j * k + i]) / 448.0f);
    }
  s.bytes.resize(n * k);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < k; ++i)
      s.bytes[j * k + i] = F32ToF8E4M3(v[j * k + i] / s.scales[(j / 128) * cb + i / 128]);
  s.matrix = Matrix{DType::kF8E4M3, s.bytes.data(), n, k, s.scales.data()};
  return s;
}

class Fp8Bf16LinearTest : public Bf16LinearTest {};

TEST_P(Fp8Bf16LinearTest, WithinAccumulationOfTheRoundedReference) {
  const auto [m, n, k] = GetParam();
  const float y0 = 0.5f;
  const auto x = Random(m * k, 91), wv = Random(n * k, 92, 1.0f / std::sqrt(float(k)));
  const Fp8Stored w = StoreFp8(wv, n, k);
  // The bf16 weights the kernels use, and the activations they round.
  std::vector<float> xr(x.size()), wr(wv.size());
  for (size_t i = 0; i < x.size(); ++i) xr[i] = Bf16ToF32(F32ToBf16(x[i]));
  const int64_t cb = (k + 127) / 128;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < k; ++i)
      wr[j * k + i] = Bf16ToF32(
          F32ToBf16(F8E4M3ToF32(w.bytes[j * k + i]) * w.scales[(j / 128) * cb + i / 128]));
  const Matrix wr_matrix{DType::kF32, wr.data(), n, k};
  {
    ScopedCompute scope(Compute::kBF16);
    EXPECT_TRUE(cpu::UsesBf16Compute(w.matrix));
  }
  const std::vector<float> got = RunLinear(Compute::kBF16, x, m, w.matrix, y0);
  std::vector<float> want(m * n, y0);
  cpu::LinearReference(xr.data(), m, wr_matrix, want.data(), true);
  const double accumulation = (k + 8) * std::ldexp(1.0, -24);
  double worst = 0;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      double a = y0;
      for (int64_t i = 0; i < k; ++i) a += std::abs(double(xr[r * k + i]) * wr[j * k + i]);
      worst = std::max(worst, std::abs(got[r * n + j] - want[r * n + j]) / (accumulation * a));
    }
  }
  EXPECT_LE(worst, 1.0);
  // f32 mode keeps FP8 on its exact path: the results differ from bf16 mode's.
  const std::vector<float> exact = RunLinear(Compute::kF32, x, m, w.matrix, y0);
  EXPECT_FALSE(SameBits(exact, got));
}

TEST_P(Fp8Bf16LinearTest, ARowHasTheSameBitsInEveryBatch) {
  const auto [m, n, k] = GetParam();
  const auto x = Random(m * k, 93), wv = Random(n * k, 94, 1.0f / std::sqrt(float(k)));
  const Fp8Stored w = StoreFp8(wv, n, k);
  const std::vector<float> whole = RunLinear(Compute::kBF16, x, m, w.matrix, 0.0f);
  for (int64_t rows : {int64_t{1}, int64_t{4}, int64_t{7}, int64_t{9}, int64_t{21}}) {
    for (int64_t first : {int64_t{0}, m - rows}) {
      if (first < 0 || first + rows > m) continue;
      const std::vector<float> part(x.begin() + first * k, x.begin() + (first + rows) * k);
      const std::vector<float> got = RunLinear(Compute::kBF16, part, rows, w.matrix, 0.0f);
      EXPECT_EQ(std::memcmp(got.data(), whole.data() + first * n, got.size() * sizeof(float)), 0)
          << rows << " rows from row " << first << " of " << m;
    }
  }
}

// Block rows and columns cut by the matrix edge (n, k not multiples of 128), the 32-element tail.
INSTANTIATE_TEST_SUITE_P(Shapes, Fp8Bf16LinearTest,
                         ::testing::Values(Bf16Case{1, 67, 131}, Bf16Case{5, 130, 200},
                                           Bf16Case{9, 67, 131}, Bf16Case{150, 131, 256},
                                           Bf16Case{64, 256, 1024}, Bf16Case{137, 70, 300}),
                         ShapeName);

// fp32 mode (the default) is the fp32 path bit for bit, also after bf16 mode was on.
TEST(Bf16Compute, Fp32ModeIsTheFp32PathBitForBit) {
  EXPECT_EQ(cpu::LinearCompute(), Compute::kF32) << "fp32 is the default";
  const int64_t n = 67, k = 131;
  const Stored w = Store(DType::kBF16, Random(n * k, 42, 0.1f), n, k);
  for (int64_t m : {1, 8, 9, 64}) {
    const auto x = Random(m * k, 43);
    (void)RunLinear(Compute::kBF16, x, m, w.matrix, 0.5f);
    const auto got = RunLinear(Compute::kF32, x, m, w.matrix, 0.5f);
    std::vector<float> want(m * n, 0.5f);
    if (m <= 8) {
      cpu::LinearFewRows(x.data(), m, w.matrix, want.data(), true);
    } else {
      cpu::LinearGemm(x.data(), m, w.matrix, want.data(), true);
    }
    EXPECT_TRUE(SameBits(got, want)) << "m " << m;
  }
}

// bf16 compute applies to bf16 weights only: fp32 and fp16 weights give the fp32 results.
TEST(Bf16Compute, OtherWeightDTypesStayFp32) {
  const int64_t n = 40, k = 96;
  for (DType dtype : {DType::kF32, DType::kF16}) {
    const Stored w = Store(dtype, Random(n * k, 52, 0.1f), n, k);
    EXPECT_FALSE([&] {
      ScopedCompute scope(Compute::kBF16);
      return cpu::UsesBf16Compute(w.matrix);
    }());
    for (int64_t m : {1, 30}) {
      const auto x = Random(m * k, 53);
      EXPECT_TRUE(SameBits(RunLinear(Compute::kBF16, x, m, w.matrix, 0.0f),
                           RunLinear(Compute::kF32, x, m, w.matrix, 0.0f)))
          << DTypeName(dtype) << " m " << m;
    }
  }
}

// Without the instructions bf16 mode is the fp32 path. Run for real by the bf16_linear_avx2_test
// entry (DNNL_MAX_CPU_ISA=AVX2, NEXTSERVE_EXPECT_NO_BF16=1); here it checks whichever case holds.
TEST(Bf16Compute, WithoutAvx512Bf16FallsBackToFp32) {
  const char* expect_none = std::getenv("NEXTSERVE_EXPECT_NO_BF16");
  if (expect_none && std::string(expect_none) == "1") {
    ASSERT_FALSE(cpu::CpuHasBf16Dot()) << "DNNL_MAX_CPU_ISA=AVX2 should hide AVX512-BF16";
  }
  const int64_t n = 67, k = 131;
  const Stored w = Store(DType::kBF16, Random(n * k, 62, 0.1f), n, k);
  for (int64_t m : {1, 8, 9, 64}) {
    const auto x = Random(m * k, 63);
    const bool same = SameBits(RunLinear(Compute::kBF16, x, m, w.matrix, 0.0f),
                               RunLinear(Compute::kF32, x, m, w.matrix, 0.0f));
    EXPECT_EQ(same, !cpu::CpuHasBf16Dot()) << "m " << m;
  }
}

}  // namespace
}  // namespace nextserve::kernels
