// CUDA kernels against the CPU backend (the reference), on random shapes. Skips without a GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"

namespace nextserve::kernels {
namespace {

class CudaKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda::DeviceAvailable(&why)) GTEST_SKIP() << "no GPU: " << why;
  }
  float* Upload(const std::vector<float>& v) {
    void* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, v.size() * sizeof(float) + 4), cudaSuccess);
    cudaMemcpy(d, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice);
    owned_.push_back(d);
    return static_cast<float*>(d);
  }
  std::vector<float> Download(const float* d, size_t n) {
    std::vector<float> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
  void TearDown() override {
    for (void* p : owned_) cudaFree(p);
  }
  static std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
  }
  static float MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
    float m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
  }
  std::vector<void*> owned_;
};

TEST_F(CudaKernelsTest, RmsNormMatchesCpu) {
  const int64_t rows = 7, dim = 2048;
  const auto x = Random(rows * dim, 1), w = Random(dim, 2, 0.1f);
  std::vector<float> want(rows * dim);
  auto cpu = MakeCpuBackend();
  cpu->RmsNorm(x.data(), rows, dim, w.data(), 1e-6f, true, want.data());
  float* dy = Upload(want);
  ASSERT_TRUE(cuda::RmsNorm(Upload(x), rows, dim, Upload(w), 1e-6f, true, dy));
  EXPECT_LT(MaxDiff(Download(dy, want.size()), want), 1e-5f);
}

TEST_F(CudaKernelsTest, LinearF32MatchesCpu) {
  const int64_t m = 3, n = 129, k = 517;
  const auto x = Random(m * k, 3), w = Random(n * k, 4, 0.05f);
  std::vector<float> want(m * n);
  const Matrix hw{DType::kF32, w.data(), n, k};
  cpu::LinearReference(x.data(), m, hw, want.data(), false);
  float* dy = Upload(want);
  const Matrix dw{DType::kF32, Upload(w), n, k};
  ASSERT_TRUE(cuda::Linear(Upload(x), m, dw, dy, false));
  EXPECT_LT(MaxDiff(Download(dy, want.size()), want), 1e-4f);
}

TEST_F(CudaKernelsTest, DeltaRuleRecurrentMatchesCpu) {
  const DeltaNetShape s{2, 4, 64, 32, 4};
  const int64_t t = 20;
  auto conv = Random(t * s.conv_dim(), 5);
  std::vector<float> g(t * 4), beta(t * 4);
  for (size_t i = 0; i < g.size(); ++i) g[i] = -0.1f * (i % 7), beta[i] = 0.1f * (i % 9);
  auto state = Random(4 * 64 * 32, 6, 0.1f);
  std::vector<float> want_state = state, want(t * s.value_dim());
  cpu::DeltaRuleReference(conv.data(), g.data(), beta.data(), t, s, want_state.data(), want.data());
  // The CUDA op takes normalised q/k: prepare them the way the CPU op does internally.
  std::vector<float> q(t * 2 * 64), k(t * 2 * 64), v(t * s.value_dim());
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t h = 0; h < 2; ++h) {
      for (int which = 0; which < 2; ++which) {
        const float* src = conv.data() + i * s.conv_dim() + which * s.key_dim() + h * 64;
        float ss = 0;
        for (int e = 0; e < 64; ++e) ss += src[e] * src[e];
        const float inv = (which == 0 ? 1.0f / 8.0f : 1.0f) / std::sqrt(ss + 1e-6f);
        float* dst = (which == 0 ? q.data() : k.data()) + (i * 2 + h) * 64;
        for (int e = 0; e < 64; ++e) dst[e] = src[e] * inv;
      }
    }
    std::copy_n(conv.data() + i * s.conv_dim() + 2 * s.key_dim(), s.value_dim(),
                v.data() + i * s.value_dim());
  }
  float* dstate = Upload(state);
  float* dout = Upload(want);
  ASSERT_TRUE(cuda::DeltaRuleRecurrent(Upload(q), Upload(k), Upload(v), Upload(g), Upload(beta), t,
                                       s, dstate, dout));
  EXPECT_LT(MaxDiff(Download(dout, want.size()), want), 1e-4f);
  EXPECT_LT(MaxDiff(Download(dstate, state.size()), want_state), 1e-4f);
}

}  // namespace
}  // namespace nextserve::kernels
