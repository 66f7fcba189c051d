// The CPU backend: host memory, OpenMP threads, oneDNN GEMMs. The reference for every other
// backend.
#include <sys/mman.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/sample_rows.h"

namespace nextserve::kernels {
namespace {

// Large buffers (cache arenas sized for the most blocks and slots the rank may use) are anonymous
// mappings: zero pages, committed only when touched, so an arena costs what is in use.
constexpr size_t kMappedBytes = size_t{1} << 20;

class HostBuffer final : public Buffer {
 public:
  explicit HostBuffer(size_t bytes) : size_(bytes) {
    if (bytes >= kMappedBytes) {
      mapped_ = (bytes + 4095) / 4096 * 4096;
      void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      data_ = p;
      return;
    }
    // 64-byte alignment for vector loads; never zero-sized so data() is valid.
    data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (data_ == nullptr) throw std::bad_alloc();
  }
  ~HostBuffer() override {
    if (mapped_ > 0) {
      munmap(data_, mapped_);
    } else {
      std::free(data_);
    }
  }
  void* data() override { return data_; }
  size_t size() const override { return size_; }

 private:
  void* data_;
  size_t size_;
  size_t mapped_ = 0;
};

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }
  MemorySpace memory_space() const override { return MemorySpace::kHost; }

  std::unique_ptr<Buffer> Allocate(size_t bytes) override {
    allocations_.fetch_add(1, std::memory_order_relaxed);
    return std::make_unique<HostBuffer>(bytes);
  }
  int64_t allocations() const override { return allocations_.load(std::memory_order_relaxed); }
  absl::Status Synchronize() override { return absl::OkStatus(); }  // every op ran at once
  // Zero bytes may come with null pointers (an empty step, an empty host vector): no copy.
  void CopyToHost(const void* src, void* dst, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void CopyFromHost(const void* src, void* dst, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void Fill(float* dst, float value, int64_t n) override { std::fill(dst, dst + n, value); }
  void Copy(const void* src, void* dst, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }

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
#pragma omp parallel for schedule(static) if (cpu::WorthThreads(rows * dim))
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
#pragma omp parallel for schedule(static) if (cpu::WorthThreads(n))
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void SiluMul(const float* gate, const float* up, int64_t n, float* y) override {
#pragma omp parallel for schedule(static) if (cpu::WorthThreads(n))
    for (int64_t i = 0; i < n; ++i) y[i] = cpu::Silu(gate[i]) * up[i];
  }

  void ScaleRowsBySigmoid(const float* gate, int64_t rows, int64_t dim, float* x) override {
    for (int64_t r = 0; r < rows; ++r) {
      const float s = cpu::Sigmoid(gate[r]);
      for (int64_t i = 0; i < dim; ++i) x[r * dim + i] *= s;
    }
  }

  void AttentionPrep(const float* qg, float* k, const StepMeta& step, const AttentionShape& s,
                     const float* q_norm, const float* k_norm, float eps, float* q,
                     float* gate) override {
    cpu::AttentionPrep(qg, k, step, s, q_norm, k_norm, eps, q, gate);
  }
  void AppendKv(const float* k, const float* v, const StepMeta& step,
                const KvLayer& cache) override {
    cpu::AppendKv(k, v, step, cache);
  }
  void PagedAttention(const float* q, const StepMeta& step, const KvLayer& cache,
                      const AttentionShape& s, const float* gate, float* out) override {
    cpu::PagedAttention(q, step, cache, s, gate, out);
  }

  void DeltaNetSplit(const float* qkvz, const float* ba, int64_t t, const DeltaNetShape& s,
                     float* mixed_qkv, float* z, float* b, float* a) override {
    cpu::DeltaNetSplit(qkvz, ba, t, s, mixed_qkv, z, b, a);
  }
  void CausalConvSilu(const float* x, const StepMeta& step, const DeltaNetShape& s, const float* w,
                      const StateLayer& state, float* y) override {
    cpu::CausalConvSilu(x, step, s, w, state, y);
  }
  void DeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv, const float* a_log,
                     const float* dt_bias, float* beta, float* g) override {
    cpu::DeltaNetGates(b, a, t, nv, a_log, dt_bias, beta, g);
  }
  void DeltaRule(const float* conv_out, const float* g, const float* beta, const StepMeta& step,
                 const DeltaNetShape& s, const StateLayer& state, float* out) override {
    cpu::DeltaRule(conv_out, g, beta, step, s, state, out);
  }
  void RmsNormGated(const float* x, const float* z, int64_t rows, int64_t dim, const float* w,
                    float eps, float* y) override {
#pragma omp parallel for schedule(static) if (cpu::WorthThreads(rows * dim))
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

  void RouterTopK(const float* logits, int64_t n, int64_t experts, int64_t top_k, bool renormalise,
                  int32_t* ids, float* weights) override {
    cpu::RouterTopK(logits, n, experts, top_k, renormalise, ids, weights);
  }
  void MoeDispatch(const float* h, int64_t n, const int32_t* ids, const float* weights,
                   const int32_t* owner, int ranks, const RecordFormat& f, void* records,
                   int32_t* token_of, DispatchCounts& counts) override {
    cpu::MoeDispatch(h, n, ids, weights, owner, ranks, f, records, token_of, counts);
  }
  absl::Status MoeGroupByExpert(const void* records, int64_t count, const RecordFormat& f,
                                int64_t experts, const bool* held, float* xs, int32_t* pair_of,
                                int64_t* expert_offsets) override {
    return cpu::MoeGroupByExpert(records, count, f, experts, held, xs, pair_of, expert_offsets);
  }
  void GroupedExpertMlp(const float* xs, const int64_t* expert_offsets, int64_t experts,
                        const ExpertMatrices* weights, float* scratch, float* ys) override {
    cpu::GroupedExpertMlp(xs, expert_offsets, experts, weights, scratch, ys);
  }
  void MoeWeightedSum(const float* ys, const void* records, int64_t count, const RecordFormat& f,
                      const int32_t* pair_of, float* partial) override {
    cpu::MoeWeightedSum(ys, records, count, f, pair_of, partial);
  }
  void MoeCombine(const float* combined, const int32_t* token_of, int64_t records, int64_t n,
                  int64_t hidden, float* routed) override {
    cpu::MoeCombine(combined, token_of, records, n, hidden, routed);
  }

  absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                          std::span<const SamplingRow> settings, int32_t* tokens) override {
    return cpu::SampleRows(logits, rows, vocab, settings, tokens);
  }

 private:
  std::atomic<int64_t> allocations_{0};
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace nextserve::kernels
