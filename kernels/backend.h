// The one kernel interface of nextserve: every op of the Qwen3-Next step, implemented by the CPU
// backend (the reference for all others) and the CUDA backend. Kernels know tensors, shapes and the
// step's metadata (kernels/step.h), never requests. Activations are fp32; weight matrices stay in
// their stored dtype; the KV arena holds fp32 or bf16.
//
// Every op runs over the whole step: sequences of different lengths are described by cu_seqlens
// and addressed in the cache arenas by block tables and state-slot indices, so no host loop over
// sequences or tokens sits between ops. Pointers are in the backend's memory space (host for the
// CPU, device for CUDA); buffers come from Allocate(). Ops are queued on the backend's stream;
// Synchronize() waits for them (the CPU backend runs each op at once). Shapes are row-major.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "base/dtype.h"
#include "kernels/sampling.h"
#include "kernels/shapes.h"
#include "kernels/step.h"

namespace nextserve::kernels {

enum class MemorySpace : uint8_t { kHost, kDevice };

// Owned backend memory; freed through the backend that made it.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual void* data() = 0;
  virtual size_t size() const = 0;
  float* f32() { return static_cast<float*>(data()); }
};

// One attention layer's slice of the KV arena: keys and values [blocks, block_size, width]
// (width = kv_heads * head_dim) in `dtype` (fp32 or bf16). Row slot_mapping value m of a step is
// block m / block_size, offset m % block_size.
struct KvLayer {
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::kF32;
  int64_t block_size = 0;
  int64_t width = 0;
};

// One DeltaNet layer's slice of the state arena: slot i holds the conv window [kernel - 1,
// conv_dim] then the recurrent state [value_heads, key_head_dim, value_head_dim], fp32, at
// base + i * slot_stride.
struct StateLayer {
  float* base = nullptr;
  int64_t slot_stride = 0;  // floats
  float* conv(int32_t slot) const { return base + slot * slot_stride; }
  float* recurrent(int32_t slot, const DeltaNetShape& s) const {
    return base + slot * slot_stride + s.conv_floats();
  }
};

// One routed expert's MLP: down(silu(gate x) * up x).
struct ExpertMatrices {
  Matrix gate, up, down;
};

// The layout of one expert-parallel dispatch record: the token's hidden row in `hidden_dtype`
// (fp32, or bf16 to halve the bytes), then top_k int32 expert ids (-1: empty) and top_k fp32
// weights of the experts the destination rank holds, ascending by id.
struct RecordFormat {
  int64_t hidden = 0;
  int64_t top_k = 0;
  DType hidden_dtype = DType::kF32;
  int64_t hidden_bytes() const { return hidden * static_cast<int64_t>(DTypeSize(hidden_dtype)); }
  int64_t bytes() const { return (hidden_bytes() + 3) / 4 * 4 + 8 * top_k; }
};

// What the dispatch pack leaves for the exchange and the combine (host values).
struct DispatchCounts {
  std::span<int64_t> records_to;  // [ranks]: records sent to each rank, grouped in rank order
  int64_t total = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual MemorySpace memory_space() const = 0;

  // ---- memory and stream
  // Uninitialised (the CPU gives zero pages); large buffers are committed page by page on use.
  virtual std::unique_ptr<Buffer> Allocate(size_t bytes) = 0;
  // Allocate() calls so far (for the test that a warmed-up step allocates nothing).
  virtual int64_t allocations() const = 0;
  virtual void CopyToHost(const void* src, void* host_dst, size_t bytes) = 0;
  virtual void CopyFromHost(const void* host_src, void* dst, size_t bytes) = 0;
  virtual void Fill(float* dst, float value, int64_t n) = 0;
  // dst = src, both in the backend's memory, not overlapping (prefix-cache snapshots, KV rows).
  virtual void Copy(const void* src, void* dst, size_t bytes) = 0;
  // Waits for every op queued so far; returns the first error an op hit.
  virtual absl::Status Synchronize() = 0;

  // ---- dense algebra
  // y[m, n] = x[m, k] · wᵀ  (+= when accumulate). w: [n, k].
  virtual void Linear(const float* x, int64_t m, const Matrix& w, float* y,
                      bool accumulate = false) = 0;
  // out[i] = fp32(table[ids[i]]).
  virtual void Embedding(const int32_t* ids, int64_t n, const Matrix& table, float* out) = 0;
  // y = x * rsqrt(mean(x²) + eps) * (one_plus ? 1 + w : w), per row of `dim`. y may alias x.
  virtual void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps,
                       bool one_plus, float* y) = 0;
  // y += x.
  virtual void Add(const float* x, int64_t n, float* y) = 0;
  // y = silu(gate) * up, element-wise over n values. y may alias gate.
  virtual void SiluMul(const float* gate, const float* up, int64_t n, float* y) = 0;
  // x[r, :] *= sigmoid(gate[r]) for a per-row scalar gate (shared-expert gate).
  virtual void ScaleRowsBySigmoid(const float* gate, int64_t rows, int64_t dim, float* x) = 0;
  // dst[i, :] = src[rows[i], :].
  virtual void GatherRows(const float* src, const int32_t* rows, int64_t n, int64_t dim,
                          float* dst) = 0;

  // ---- gated attention, over the whole step
  // qg: [tokens, heads, 2*head_dim] as q_proj writes it (query | gate per head); k: [tokens,
  // kv_heads, head_dim]. Writes q [tokens, heads, head_dim] and gate [tokens, heads*head_dim];
  // normalises q and k per head with (1 + w) RMSNorm, then applies partial NeoX RoPE at
  // step.positions.
  virtual void AttentionPrep(const float* qg, float* k, const StepMeta& step,
                             const AttentionShape& s, const float* q_norm, const float* k_norm,
                             float eps, float* q, float* gate) = 0;
  // Writes the step's new keys and values [tokens, width] into the arena rows step.slot_mapping
  // names (converted to the arena's dtype).
  virtual void AppendKv(const float* k, const float* v, const StepMeta& step,
                        const KvLayer& cache) = 0;
  // Causal attention of every sequence's new queries against its paged keys (which already hold
  // the new ones): sequence s has query rows cu_seqlens_q[s] .. cu_seqlens_q[s+1] - 1 at the last
  // positions of its context_lens[s] keys, found through block_table row s. Prefill chunks and
  // decode tokens mix in one call. out: [tokens, heads*head_dim], then out *= sigmoid(gate).
  virtual void PagedAttention(const float* q, const StepMeta& step, const KvLayer& cache,
                              const AttentionShape& s, const float* gate, float* out) = 0;

  // ---- Gated DeltaNet, over the whole step
  // Splits in_proj_qkvz [t, ·] and in_proj_ba [t, 2*nv] outputs from their per-key-head grouped
  // layout into mixed_qkv [t, conv_dim] (q | k | v), z [t, value_dim], b [t, nv], a [t, nv].
  virtual void DeltaNetSplit(const float* qkvz, const float* ba, int64_t t, const DeltaNetShape& s,
                             float* mixed_qkv, float* z, float* b, float* a) = 0;
  // Causal depthwise conv + SiLU over each sequence's rows of x [tokens, conv_dim], continuing
  // from and updating the conv window of its slot (step.state_slots). The op reads the slot as it
  // is: a new sequence's slot is zeroed by whoever hands it out (CachePool::AllocateSlot).
  // w: [conv_dim, kernel].
  virtual void CausalConvSilu(const float* x, const StepMeta& step, const DeltaNetShape& s,
                              const float* w, const StateLayer& state, float* y) = 0;
  // beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias). All [t, nv].
  virtual void DeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv,
                             const float* a_log, const float* dt_bias, float* beta, float* g) = 0;
  // The gated delta rule over each sequence's rows, from and into the recurrent state of its slot
  // (zero for a new sequence, as the slot's owner set it).
  // conv_out: [tokens, conv_dim] (q | k | v after conv + SiLU; q and k are l2-normalised here, q
  // scaled by dk^-0.5). out: [tokens, nv, dv]. A sequence with several new tokens uses the
  // chunked form (C = 64), one with a single token the recurrence.
  virtual void DeltaRule(const float* conv_out, const float* g, const float* beta,
                         const StepMeta& step, const DeltaNetShape& s, const StateLayer& state,
                         float* out) = 0;
  // y = w * rmsnorm(x) * silu(z) per row of dim (plain w). y may alias x.
  virtual void RmsNormGated(const float* x, const float* z, int64_t rows, int64_t dim,
                            const float* w, float eps, float* y) = 0;

  // ---- mixture of experts
  // Per row of logits [n, experts]: fp32 softmax, the top_k probabilities (ties to the lower id,
  // as torch.topk), renormalised to sum 1 when `renormalise`. ids [n, top_k] ascending by id (the
  // reference's summation order), weights [n, top_k] beside them.
  virtual void RouterTopK(const float* logits, int64_t n, int64_t experts, int64_t top_k,
                          bool renormalise, int32_t* ids, float* weights) = 0;
  // Packs one record (RecordFormat) per (token, destination rank) that holds any of its experts,
  // grouped by rank, tokens in order within a rank; owner: int32 [experts] -> rank. Empty slots
  // get id -1 and weight 0. records holds at least n * min(ranks, top_k) records, token_of as
  // many int32; token_of gets each record's token row. Writes counts.records_to (host) and
  // counts.total.
  virtual void MoeDispatch(const float* h, int64_t n, const int32_t* ids, const float* weights,
                           const int32_t* owner, int ranks, const RecordFormat& f, void* records,
                           int32_t* token_of, DispatchCounts& counts) = 0;
  // Groups the (record, expert) pairs of received records by expert: xs [pairs, hidden] (fp32)
  // ascending by expert, records in order within an expert; pair_of [records * top_k] maps each
  // record slot to its pair (-1: empty slot). expert_offsets (host, [experts + 1]) bounds each
  // expert's pairs. DataLoss when a record names an expert outside [0, experts) or not in `held`
  // (host bools [experts]).
  virtual absl::Status MoeGroupByExpert(const void* records, int64_t count, const RecordFormat& f,
                                        int64_t experts, const bool* held, float* xs,
                                        int32_t* pair_of, int64_t* expert_offsets) = 0;
  // ys[pairs of e] = expert e's MLP over xs[pairs of e], for every e with pairs; weights[e] is
  // read only for those. expert_offsets ([experts + 1], as MoeGroupByExpert wrote it) and the
  // weights array are host memory (the matrices they point to are the backend's); scratch: at
  // least 2 * pairs * max(inter) floats.
  virtual void GroupedExpertMlp(const float* xs, const int64_t* expert_offsets, int64_t experts,
                                const ExpertMatrices* weights, float* scratch, float* ys) = 0;
  // partial[r] = Σ_j weight[r, j] * ys[pair_of[r * top_k + j]] over record r's slots in order
  // (ascending expert: the reference's order), from 0; fp32 [count, hidden].
  virtual void MoeWeightedSum(const float* ys, const void* records, int64_t count,
                              const RecordFormat& f, const int32_t* pair_of, float* partial) = 0;
  // routed[i] = Σ over the records of token i, in record order (rank order), of combined[record];
  // zero for tokens sent nowhere. combined: [records, hidden]; routed: [n, hidden].
  virtual void MoeCombine(const float* combined, const int32_t* token_of, int64_t records,
                          int64_t n, int64_t hidden, float* routed) = 0;

  // ---- sampling
  // One token per row of logits [rows, vocab] into tokens (host), with each row's settings; the
  // same choices as the host sampling::Sampler for the same settings and draw counter.
  // InvalidArgument when a row has NaN or +inf.
  virtual absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                                  std::span<const SamplingRow> settings, int32_t* tokens) = 0;
};

// The CPU backend (oneDNN GEMMs, OpenMP threads).
std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace nextserve::kernels
