// The CPU backend: host memory, OpenMP threads, oneDNN GEMMs. The reference for every other
// backend.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve::kernels {
namespace {

class HostBuffer final : public Buffer {
 public:
  explicit HostBuffer(size_t bytes) : size_(bytes) {
    // 64-byte alignment for vector loads; never zero-sized so data() is valid.
    data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (data_ == nullptr) throw std::bad_alloc();
  }
  ~HostBuffer() override { std::free(data_); }
  void* data() override { return data_; }
  size_t size() const override { return size_; }

 private:
  void* data_;
  size_t size_;
};

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }

  std::unique_ptr<Buffer> Allocate(size_t bytes) override {
    return std::make_unique<HostBuffer>(bytes);
  }
  void CopyToHost(const void* src, void* dst, size_t bytes) override {
    std::memcpy(dst, src, bytes);
  }
  void CopyFromHost(const void* src, void* dst, size_t bytes) override {
    std::memcpy(dst, src, bytes);
  }
  void Fill(float* dst, float value, int64_t n) override { std::fill(dst, dst + n, value); }

  void Linear(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) override {
    cpu::Linear(x, m, w, y, accumulate);
  }

  void Embedding(const int32_t* ids, int64_t n, const Matrix& table, float* out) override {
    const size_t row_bytes = static_cast<size_t>(table.cols) * DTypeSize(table.dtype);
    for (int64_t i = 0; i < n; ++i) {
      ConvertToF32(table.dtype, static_cast<const char*>(table.data) + ids[i] * row_bytes,
                   out + i * table.cols, static_cast<size_t>(table.cols));
    }
  }

  void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps, bool one_plus,
               float* y) override {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      float ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += xr[i] * xr[i];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * (one_plus ? 1.0f + w[i] : w[i]);
    }
  }

  void Add(const float* x, int64_t n, float* y) override {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void SiluMul(const float* gate, const float* up, int64_t n, float* y) override {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = cpu::Silu(gate[i]) * up[i];
  }

  void ScaleRowsBySigmoid(const float* gate, int64_t rows, int64_t dim, float* x) override {
    for (int64_t r = 0; r < rows; ++r) {
      const float s = cpu::Sigmoid(gate[r]);
      for (int64_t i = 0; i < dim; ++i) x[r * dim + i] *= s;
    }
  }

  void AttentionPrep(const float* qg, float* k, int64_t t, int64_t first_pos,
                     const AttentionShape& s, const float* q_norm, const float* k_norm, float eps,
                     float* q, float* gate) override {
    cpu::AttentionPrep(qg, k, t, first_pos, s, q_norm, k_norm, eps, q, gate);
  }
  void Attention(const float* q, const PagedKv& kv, int64_t t, int64_t past,
                 const AttentionShape& s, const float* gate, float* out) override {
    cpu::Attention(q, kv, t, past, s, gate, out);
  }

  void DeltaNetSplit(const float* qkvz, const float* ba, int64_t t, const DeltaNetShape& s,
                     float* mixed_qkv, float* z, float* b, float* a) override {
    cpu::DeltaNetSplit(qkvz, ba, t, s, mixed_qkv, z, b, a);
  }
  void CausalConvSilu(const float* x, int64_t t, int64_t channels, int64_t kernel, const float* w,
                      float* conv_state, float* y) override {
    cpu::CausalConvSilu(x, t, channels, kernel, w, conv_state, y);
  }
  void DeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv, const float* a_log,
                     const float* dt_bias, float* beta, float* g) override {
    cpu::DeltaNetGates(b, a, t, nv, a_log, dt_bias, beta, g);
  }
  void DeltaRule(const float* conv_out, const float* g, const float* beta, int64_t t,
                 const DeltaNetShape& s, float* state, float* out, bool chunked) override {
    cpu::DeltaRule(conv_out, g, beta, t, s, state, out, chunked);
  }
  void RmsNormGated(const float* x, const float* z, int64_t rows, int64_t dim, const float* w,
                    float eps, float* y) override {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;
      const float* zr = z + r * dim;
      float* yr = y + r * dim;
      float ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += xr[i] * xr[i];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
      for (int64_t i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * inv) * cpu::Silu(zr[i]);
    }
  }

  void GatherRows(const float* src, const int32_t* rows, int64_t n, int64_t dim,
                  float* dst) override {
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(dst + i * dim, src + static_cast<int64_t>(rows[i]) * dim, dim * sizeof(float));
    }
  }
  void ScatterAddRows(const float* src, const int32_t* rows, const float* scale, int64_t n,
                      int64_t dim, float* dst) override {
    for (int64_t i = 0; i < n; ++i) {
      float* d = dst + static_cast<int64_t>(rows[i]) * dim;
      const float* s = src + i * dim;
      for (int64_t e = 0; e < dim; ++e) d[e] += scale[i] * s[e];
    }
  }
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace nextserve::kernels
