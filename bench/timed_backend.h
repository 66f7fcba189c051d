// A Backend that forwards every call to another and times it: what the step spends inside the
// backend's ops, per op, against what it spends outside them (host overhead). For benchmarks; the
// CPU backend runs each op at once, so wall time around the call is the op's time.
#pragma once

#include <array>
#include <chrono>
#include <string_view>

#include "kernels/backend.h"

namespace nextserve::bench {

class TimedBackend final : public kernels::Backend {
 public:
  static constexpr int kOps = 28;
  static constexpr std::array<std::string_view, kOps> kOpNames = {"Allocate",
                                                                  "CopyToHost",
                                                                  "CopyFromHost",
                                                                  "Fill",
                                                                  "Synchronize",
                                                                  "Linear",
                                                                  "Embedding",
                                                                  "RmsNorm",
                                                                  "Add",
                                                                  "SiluMul",
                                                                  "ScaleRowsBySigmoid",
                                                                  "GatherRows",
                                                                  "AttentionPrep",
                                                                  "AppendKv",
                                                                  "PagedAttention",
                                                                  "DeltaNetSplit",
                                                                  "CausalConvSilu",
                                                                  "DeltaNetGates",
                                                                  "DeltaRule",
                                                                  "RmsNormGated",
                                                                  "RouterTopK",
                                                                  "MoeDispatch",
                                                                  "MoeGroupByExpert",
                                                                  "GroupedExpertMlp",
                                                                  "MoeWeightedSum",
                                                                  "MoeCombine",
                                                                  "SampleRows",
                                                                  "Copy"};

  explicit TimedBackend(kernels::Backend* inner) : inner_(inner) {}

  struct OpTime {
    double seconds = 0;
    int64_t calls = 0;
  };
  const std::array<OpTime, kOps>& times() const { return times_; }
  double total_seconds() const {
    double s = 0;
    for (const OpTime& t : times_) s += t.seconds;
    return s;
  }
  void Reset() { times_ = {}; }

  std::string_view name() const override { return inner_->name(); }
  kernels::MemorySpace memory_space() const override { return inner_->memory_space(); }
  std::unique_ptr<kernels::Buffer> Allocate(size_t bytes) override {
    Timer timer(this, 0);
    return inner_->Allocate(bytes);
  }
  int64_t allocations() const override { return inner_->allocations(); }
  void CopyToHost(const void* src, void* host_dst, size_t bytes) override {
    Timer timer(this, 1);
    inner_->CopyToHost(src, host_dst, bytes);
  }
  void CopyFromHost(const void* host_src, void* dst, size_t bytes) override {
    Timer timer(this, 2);
    inner_->CopyFromHost(host_src, dst, bytes);
  }
  void Fill(float* dst, float value, int64_t n) override {
    Timer timer(this, 3);
    inner_->Fill(dst, value, n);
  }
  void Copy(const void* src, void* dst, size_t bytes) override {
    Timer timer(this, 27);
    inner_->Copy(src, dst, bytes);
  }
  absl::Status Synchronize() override {
    Timer timer(this, 4);
    return inner_->Synchronize();
  }
  void Linear(const float* x, int64_t m, const kernels::Matrix& w, float* y,
              bool accumulate) override {
    Timer timer(this, 5);
    inner_->Linear(x, m, w, y, accumulate);
  }
  void Embedding(const int32_t* ids, int64_t n, const kernels::Matrix& table, float* out) override {
    Timer timer(this, 6);
    inner_->Embedding(ids, n, table, out);
  }
  void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps, bool one_plus,
               float* y) override {
    Timer timer(this, 7);
    inner_->RmsNorm(x, rows, dim, w, eps, one_plus, y);
  }
  void Add(const float* x, int64_t n, float* y) override {
    Timer timer(this, 8);
    inner_->Add(x, n, y);
  }
  void SiluMul(const float* gate, const float* up, int64_t n, float* y) override {
    Timer timer(this, 9);
    inner_->SiluMul(gate, up, n, y);
  }
  void ScaleRowsBySigmoid(const float* gate, int64_t rows, int64_t dim, float* x) override {
    Timer timer(this, 10);
    inner_->ScaleRowsBySigmoid(gate, rows, dim, x);
  }
  void GatherRows(const float* src, const int32_t* rows, int64_t n, int64_t dim,
                  float* dst) override {
    Timer timer(this, 11);
    inner_->GatherRows(src, rows, n, dim, dst);
  }
  void AttentionPrep(const float* qg, float* k, const kernels::StepMeta& step,
                     const kernels::AttentionShape& s, const float* q_norm, const float* k_norm,
                     float eps, float* q, float* gate) override {
    Timer timer(this, 12);
    inner_->AttentionPrep(qg, k, step, s, q_norm, k_norm, eps, q, gate);
  }
  void AppendKv(const float* k, const float* v, const kernels::StepMeta& step,
                const kernels::KvLayer& cache) override {
    Timer timer(this, 13);
    inner_->AppendKv(k, v, step, cache);
  }
  void PagedAttention(const float* q, const kernels::StepMeta& step, const kernels::KvLayer& cache,
                      const kernels::AttentionShape& s, const float* gate, float* out) override {
    Timer timer(this, 14);
    inner_->PagedAttention(q, step, cache, s, gate, out);
  }
  void DeltaNetSplit(const float* qkvz, const float* ba, int64_t t, const kernels::DeltaNetShape& s,
                     float* mixed_qkv, float* z, float* b, float* a) override {
    Timer timer(this, 15);
    inner_->DeltaNetSplit(qkvz, ba, t, s, mixed_qkv, z, b, a);
  }
  void CausalConvSilu(const float* x, const kernels::StepMeta& step,
                      const kernels::DeltaNetShape& s, const float* w,
                      const kernels::StateLayer& state, float* y) override {
    Timer timer(this, 16);
    inner_->CausalConvSilu(x, step, s, w, state, y);
  }
  void DeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv, const float* a_log,
                     const float* dt_bias, float* beta, float* g) override {
    Timer timer(this, 17);
    inner_->DeltaNetGates(b, a, t, nv, a_log, dt_bias, beta, g);
  }
  void DeltaRule(const float* conv_out, const float* g, const float* beta,
                 const kernels::StepMeta& step, const kernels::DeltaNetShape& s,
                 const kernels::StateLayer& state, float* out) override {
    Timer timer(this, 18);
    inner_->DeltaRule(conv_out, g, beta, step, s, state, out);
  }
  void RmsNormGated(const float* x, const float* z, int64_t rows, int64_t dim, const float* w,
                    float eps, float* y) override {
    Timer timer(this, 19);
    inner_->RmsNormGated(x, z, rows, dim, w, eps, y);
  }
  void RouterTopK(const float* logits, int64_t n, int64_t experts, int64_t top_k, bool renormalise,
                  int32_t* ids, float* weights) override {
    Timer timer(this, 20);
    inner_->RouterTopK(logits, n, experts, top_k, renormalise, ids, weights);
  }
  void MoeDispatch(const float* h, int64_t n, const int32_t* ids, const float* weights,
                   const int32_t* owner, int ranks, const kernels::RecordFormat& f, void* records,
                   int32_t* token_of, kernels::DispatchCounts& counts) override {
    Timer timer(this, 21);
    inner_->MoeDispatch(h, n, ids, weights, owner, ranks, f, records, token_of, counts);
  }
  absl::Status MoeGroupByExpert(const void* records, int64_t count, const kernels::RecordFormat& f,
                                int64_t experts, const bool* held, float* xs, int32_t* pair_of,
                                int64_t* expert_offsets) override {
    Timer timer(this, 22);
    return inner_->MoeGroupByExpert(records, count, f, experts, held, xs, pair_of, expert_offsets);
  }
  void GroupedExpertMlp(const float* xs, const int64_t* expert_offsets, int64_t experts,
                        const kernels::ExpertMatrices* weights, float* scratch,
                        float* ys) override {
    Timer timer(this, 23);
    inner_->GroupedExpertMlp(xs, expert_offsets, experts, weights, scratch, ys);
  }
  void MoeWeightedSum(const float* ys, const void* records, int64_t count,
                      const kernels::RecordFormat& f, const int32_t* pair_of,
                      float* partial) override {
    Timer timer(this, 24);
    inner_->MoeWeightedSum(ys, records, count, f, pair_of, partial);
  }
  void MoeCombine(const float* combined, const int32_t* token_of, int64_t records, int64_t n,
                  int64_t hidden, float* routed) override {
    Timer timer(this, 25);
    inner_->MoeCombine(combined, token_of, records, n, hidden, routed);
  }
  absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                          std::span<const kernels::SamplingRow> settings,
                          int32_t* tokens) override {
    Timer timer(this, 26);
    return inner_->SampleRows(logits, rows, vocab, settings, tokens);
  }

 private:
  using Kernels = kernels::Backend;
  class Timer {
   public:
    Timer(TimedBackend* owner, int op)
        : owner_(owner), op_(op), start_(std::chrono::steady_clock::now()) {}
    ~Timer() {
      owner_->times_[op_].seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      ++owner_->times_[op_].calls;
    }

   private:
    TimedBackend* owner_;
    int op_;
    std::chrono::steady_clock::time_point start_;
  };
  kernels::Backend* inner_;
  std::array<OpTime, kOps> times_{};
};

}  // namespace nextserve::bench
