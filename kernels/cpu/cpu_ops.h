// Free functions behind the CPU backend, one file per op family. Host pointers, fp32 activations.
#pragma once

#include <omp.h>

#include <bit>
#include <cstdint>

#include "base/fast_exp.h"
#include "kernels/backend.h"

namespace nextserve::kernels {

// One sequence's keys and values in fixed-size blocks: key j is row j % block_size of
// k_blocks[j / block_size]; rows are [kv_heads * head_dim] fp32. (The per-sequence form behind
// Backend::PagedAttention.)
struct PagedKv {
  const float* const* k_blocks = nullptr;
  const float* const* v_blocks = nullptr;
  int64_t block_size = 0;
};

}  // namespace nextserve::kernels

namespace nextserve::kernels::cpu {

// How Linear multiplies bf16 and FP8 weights. kF32: widened to fp32, fp32 activations (exact;
// what the golden tests use). kBF16: activations rounded to bf16 once per call (each off by at
// most 2^-9 relative), FP8 weights widened to bf16 as round(fp8 * block scale), bf16 products with
// fp32 sums in one fixed order (a row's outputs have the same bits in any batch), used only where
// the CPU has AVX512-BF16 (CpuHasBf16Dot); elsewhere, and for fp32 / fp16 weights, Linear stays
// on the fp32 path. A process-wide setting, kF32 by default (the rank's --compute auto: kBF16).
enum class Compute { kF32, kBF16 };
void SetLinearCompute(Compute compute);
Compute LinearCompute();
// AVX512-BF16 present (as the CPU and oneDNN, honouring DNNL_MAX_CPU_ISA, both report).
bool CpuHasBf16Dot();
// Whether Linear takes a bf16-compute path for w now.
bool UsesBf16Compute(const Matrix& w);

void Linear(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate);
// Matrix-vector path for few rows (decode): reads the weights once in their stored dtype.
void LinearFewRows(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate);
// GEMM path: oneDNN sgemm, converting non-fp32 weights tile by tile.
void LinearGemm(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate);
// bf16 compute, bf16 or FP8 weights, CpuHasBf16Dot() required. Few rows: AVX512-BF16 dot
// products reading the weights once for up to 8 rows; GEMM: 4 x 4 tiles over 64-row weight panels
// (FP8 panels widened to bf16 first). Both give each output the same bits.
void LinearFewRowsBf16(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate);
void LinearGemmBf16(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate);
// FP8 only: rows [row0, row0 + rows) of w, dequantised (fp8 * block scale) into out [rows, cols].
void DequantizeFp8Rows(const Matrix& w, int64_t row0, int64_t rows, float* out);

void AttentionPrep(const float* qg, float* k, int64_t t, int64_t first_pos, const AttentionShape& s,
                   const float* q_norm, const float* k_norm, float eps, float* q, float* gate);
void Attention(const float* q, const PagedKv& kv, int64_t t, int64_t past, const AttentionShape& s,
               const float* gate, float* out);

// ---- the step-wide ops (step_ops.cc), contracts in kernels/backend.h
void AttentionPrep(const float* qg, float* k, const StepMeta& step, const AttentionShape& s,
                   const float* q_norm, const float* k_norm, float eps, float* q, float* gate);
void AppendKv(const float* k, const float* v, const StepMeta& step, const KvLayer& cache);
void PagedAttention(const float* q, const StepMeta& step, const KvLayer& cache,
                    const AttentionShape& s, const float* gate, float* out);
void CausalConvSilu(const float* x, const StepMeta& step, const DeltaNetShape& s, const float* w,
                    const StateLayer& state, float* y);
void DeltaRule(const float* conv_out, const float* g, const float* beta, const StepMeta& step,
               const DeltaNetShape& s, const StateLayer& state, float* out);
void RouterTopK(const float* logits, int64_t n, int64_t experts, int64_t top_k, bool renormalise,
                int32_t* ids, float* weights);
void MoeDispatch(const float* h, int64_t n, const int32_t* ids, const float* weights,
                 const int32_t* owner, int ranks, const RecordFormat& f, void* records,
                 int32_t* token_of, DispatchCounts& counts);
absl::Status MoeGroupByExpert(const void* records, int64_t count, const RecordFormat& f,
                              int64_t experts, const bool* held, float* xs, int32_t* pair_of,
                              int64_t* expert_offsets);
void GroupedExpertMlp(const float* xs, const int64_t* expert_offsets, int64_t experts,
                      const ExpertMatrices* weights, float* scratch, float* ys);
void MoeWeightedSum(const float* ys, const void* records, int64_t count, const RecordFormat& f,
                    const int32_t* pair_of, float* partial);
void MoeCombine(const float* combined, const int32_t* token_of, int64_t records, int64_t n,
                int64_t hidden, float* routed);

// ---- per-sequence building blocks
void DeltaNetSplit(const float* qkvz, const float* ba, int64_t t, const DeltaNetShape& s,
                   float* mixed_qkv, float* z, float* b, float* a);
void CausalConvSilu(const float* x, int64_t t, int64_t channels, int64_t kernel, const float* w,
                    float* conv_state, float* y);
void DeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv, const float* a_log,
                   const float* dt_bias, float* beta, float* g);
void DeltaRule(const float* conv_out, const float* g, const float* beta, int64_t t,
               const DeltaNetShape& s, float* state, float* out, bool chunked);

// Naive reference forms kept for tests (llm.c habit: the obviously-correct version beside the
// fast).
void DeltaRuleReference(const float* conv_out, const float* g, const float* beta, int64_t t,
                        const DeltaNetShape& s, float* state, float* out);
void LinearReference(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate);

// Whether an op touching `elements` values is worth a parallel region. Below this it runs on the
// calling thread: a region costs about a microsecond on idle cores (more when another process
// holds one of them), as much as ~4 Ki values of a row op take alone, and a batch-1 decode step
// would otherwise open ~170 regions. At 16 Ki the serial norms and router rows of batch 8 cost
// more than the forks they save (in-process A/B, bench/README.md). Each element's arithmetic is
// the same either way, so results do not depend on it. Inside a parallel region (the experts'
// loop runs one expert per thread) a nested region gets no threads and still costs ~0.6 us, so the
// answer there is no. `min_elements`: a caller's own threshold for work of another grain.
constexpr int64_t kParallelMinElements = int64_t{1} << 12;
inline bool WorthThreads(int64_t elements, int64_t min_elements = kParallelMinElements) {
  return elements >= min_elements && !omp_in_parallel();
}

// 1 / (1 + e^-x) from e = e^-|x| (base/fast_exp.h), which never overflows: 1 / (1 + e) for x >= 0,
// e / (1 + e) below, chosen arithmetically (pos is 1 or 0) so that the loops stay branch-free.
inline float Sigmoid(float x) {
  const float e = ExpNonPositive(-__builtin_fabsf(x));
  const float pos = static_cast<float>(x >= 0.0f);
  return (pos + (1.0f - pos) * e) / (1.0f + e);
}
inline float Silu(float x) {
  return x * Sigmoid(x);
}

}  // namespace nextserve::kernels::cpu
