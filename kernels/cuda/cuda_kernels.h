// Launchers of the CUDA backend's own kernels (cuda_kernels.cu), one per op of kernels/backend.h
// that is not a cuBLASLt GEMM. Same contracts as the Backend methods of the same names; every
// pointer is device memory unless named host. Kept free of absl and std::span (nvcc compiles the
// kernels as C++17). Each launcher queues work on `stream` and returns the launch error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/dtype.h"
#include "kernels/shapes.h"
#include "kernels/step.h"

namespace nextserve::kernels::cuda {

cudaError_t LaunchFill(float* dst, float value, int64_t n, cudaStream_t stream);
// y[m, n] = x · wᵀ (+= when accumulate), one warp per output, weights read in their dtype
// (w.data aligned to its element size; FP8 with its block scale).
cudaError_t LaunchLinearFewRows(const float* x, int64_t m, const Matrix& w, float* y,
                                bool accumulate, cudaStream_t stream);
// out[r, c] = fp32(w[row0 + r, c]) (* block scale for FP8), rows x w.cols.
cudaError_t LaunchDequantizeRows(const Matrix& w, int64_t row0, int64_t rows, float* out,
                                 cudaStream_t stream);
// dst[i] = (dtype) src[i], round to nearest even (bf16 or f16).
cudaError_t LaunchRoundTo(DType dtype, const float* src, int64_t n, void* dst, cudaStream_t stream);
// Embedding: any table alignment (byte loads).
cudaError_t LaunchEmbedding(const int32_t* ids, int64_t n, const Matrix& table, float* out,
                            cudaStream_t stream);
cudaError_t LaunchRmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps,
                          bool one_plus, const float* z, float* y, cudaStream_t stream);
cudaError_t LaunchAdd(const float* x, int64_t n, float* y, cudaStream_t stream);
cudaError_t LaunchSiluMul(const float* gate, const float* up, int64_t n, float* y,
                          cudaStream_t stream);
cudaError_t LaunchScaleRowsBySigmoid(const float* gate, int64_t rows, int64_t dim, float* x,
                                     cudaStream_t stream);
cudaError_t LaunchGatherRows(const float* src, const int32_t* rows, int64_t n, int64_t dim,
                             float* dst, cudaStream_t stream);

cudaError_t LaunchAttentionPrep(const float* qg, float* k, const StepMeta& step,
                                const AttentionShape& s, const float* q_norm, const float* k_norm,
                                float eps, float* q, float* gate, cudaStream_t stream);
// kv_bf16: the arena holds bf16 (else fp32).
cudaError_t LaunchAppendKv(const float* k, const float* v, const StepMeta& step, void* cache_k,
                           void* cache_v, bool kv_bf16, int64_t width, cudaStream_t stream);
cudaError_t LaunchPagedAttention(const float* q, const StepMeta& step, const void* cache_k,
                                 const void* cache_v, bool kv_bf16, int64_t block_size,
                                 int64_t width, const AttentionShape& s, const float* gate,
                                 float* out, cudaStream_t stream);

cudaError_t LaunchDeltaNetSplit(const float* qkvz, const float* ba, int64_t t,
                                const DeltaNetShape& s, float* mixed_qkv, float* z, float* b,
                                float* a, cudaStream_t stream);
// state_base / slot_stride: StateLayer's fields.
cudaError_t LaunchCausalConvSilu(const float* x, const StepMeta& step, const DeltaNetShape& s,
                                 const float* w, float* state_base, int64_t slot_stride, float* y,
                                 cudaStream_t stream);
cudaError_t LaunchDeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv,
                                const float* a_log, const float* dt_bias, float* beta, float* g,
                                cudaStream_t stream);
// The recurrent form over every token of every sequence (one block per sequence and value head).
cudaError_t LaunchDeltaRuleRecurrent(const float* conv_out, const float* g, const float* beta,
                                     const StepMeta& step, const DeltaNetShape& s,
                                     float* state_base, int64_t slot_stride, float* out,
                                     cudaStream_t stream);

cudaError_t LaunchRouterTopK(const float* logits, int64_t n, int64_t experts, int64_t top_k,
                             bool renormalise, int32_t* ids, float* weights, cudaStream_t stream);
// Packs records from the host plan (token_of, rank_of uploaded); record layout as RecordFormat:
// hidden row (fp32 or bf16), padding to 4 bytes, top_k ids, top_k weights.
cudaError_t LaunchPackRecords(const float* h, const int32_t* ids, const float* weights,
                              const int32_t* owner, const int32_t* token_of, const int32_t* rank_of,
                              int64_t records, int64_t hidden, bool hidden_bf16, int64_t top_k,
                              int64_t record_bytes, void* out, cudaStream_t stream);
// slot_ids[r * top_k + j] = the record's id slot j.
cudaError_t LaunchRecordIds(const void* records, int64_t count, int64_t hidden_bytes, int64_t top_k,
                            int64_t record_bytes, int32_t* slot_ids, cudaStream_t stream);
// xs[pair_of[r * top_k + j]] = fp32(record r's hidden row) for every filled slot.
cudaError_t LaunchGatherPairs(const void* records, int64_t count, int64_t hidden, bool hidden_bf16,
                              int64_t top_k, int64_t record_bytes, const int32_t* pair_of,
                              float* xs, cudaStream_t stream);
cudaError_t LaunchMoeWeightedSum(const float* ys, const void* records, int64_t count,
                                 int64_t hidden, int64_t hidden_bytes, int64_t top_k,
                                 int64_t record_bytes, const int32_t* pair_of, float* partial,
                                 cudaStream_t stream);
// routed[i] = Σ combined[record_list[offsets[i] .. offsets[i+1])] in that order.
cudaError_t LaunchMoeCombine(const float* combined, const int32_t* offsets,
                             const int32_t* record_list, int64_t n, int64_t hidden, float* routed,
                             cudaStream_t stream);
// tokens[r] = argmax of row r (lowest id on ties); bad[r] = 1 when the row has NaN or +inf.
cudaError_t LaunchArgmaxRows(const float* logits, int64_t rows, int64_t vocab, int32_t* tokens,
                             int32_t* bad, cudaStream_t stream);

}  // namespace nextserve::kernels::cuda
