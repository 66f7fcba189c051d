// The CUDA backend. Ops queue on one stream; the first error an op hits (a CUDA launch, cuBLASLt,
// a bad MoE plan) is kept and returned by Synchronize(). Host-side planning (which GEMM path,
// MoE permutation maps) is in cuda_plan.h; the kernels in cuda_kernels.cu.
//
// Beside the buffers Allocate() hands out, the backend owns device scratch it grows on demand
// (stream-ordered cudaMallocAsync, not counted by allocations(): it stops growing once the
// largest op has run) for rounded GEMM inputs, copies of unaligned weights, dequantised FP8
// tiles and uploaded MoE maps, plus a fixed cuBLASLt workspace.
#include "kernels/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/sample_rows.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_plan.h"

namespace nextserve::kernels {
namespace {

using cuda::LinearPath;

constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;
constexpr int64_t kFp8TileRows = 8 * kFp8Block;  // FP8 weight rows dequantised per GEMM

size_t AlignUp(size_t v, size_t a) {
  return (v + a - 1) / a * a;
}
size_t PointerAlignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  size_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

class DeviceBuffer final : public Buffer {
 public:
  DeviceBuffer(void* data, size_t size) : data_(data), size_(size) {}
  ~DeviceBuffer() override { cudaFree(data_); }
  void* data() override { return data_; }
  size_t size() const override { return size_; }

 private:
  void* data_;
  size_t size_;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(cudaStream_t stream, cublasLtHandle_t lt, void* lt_workspace)
      : stream_(stream), lt_(lt), lt_workspace_(lt_workspace) {}
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    cudaFree(lt_workspace_);
    cublasLtDestroy(lt_);
    cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "cuda"; }
  MemorySpace memory_space() const override { return MemorySpace::kDevice; }

  std::unique_ptr<Buffer> Allocate(size_t bytes) override {
    allocations_.fetch_add(1, std::memory_order_relaxed);
    void* p = nullptr;
    // Never zero-sized, so data() is a valid address.
    const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    if (err != cudaSuccess) {
      Note(err, absl::StrCat("Allocate(", bytes, ")"));
      return nullptr;
    }
    return std::make_unique<DeviceBuffer>(p, bytes);
  }
  int64_t allocations() const override { return allocations_.load(std::memory_order_relaxed); }
  void CopyToHost(const void* src, void* host_dst, size_t bytes) override {
    if (bytes == 0) return;
    Note(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "CopyToHost");
    Note(cudaStreamSynchronize(stream_), "CopyToHost");
  }
  void CopyFromHost(const void* host_src, void* dst, size_t bytes) override {
    if (bytes == 0) return;
    Note(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "CopyFromHost");
    Note(cudaStreamSynchronize(stream_), "CopyFromHost");  // the caller may free host_src
  }
  void Fill(float* dst, float value, int64_t n) override {
    Note(cuda::LaunchFill(dst, value, n, stream_), "Fill");
  }
  void Copy(const void* src, void* dst, size_t bytes) override {
    if (bytes == 0) return;
    // Queued on the stream: ordered with the ops around it, no host wait.
    Note(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "Copy");
  }
  absl::Status Synchronize() override {
    Note(cudaStreamSynchronize(stream_), "Synchronize");
    absl::Status first = std::move(first_error_);
    first_error_ = absl::OkStatus();
    return first;
  }

  // ---- dense algebra
  void Linear(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) override {
    if (m == 0 || w.rows == 0) return;
    if (w.cols == 0) {
      if (!accumulate) Fill(y, 0.0f, m * w.rows);
      return;
    }
    const absl::Status st = LinearImpl(x, m, w, y, accumulate);
    if (!st.ok() && first_error_.ok()) first_error_ = st;
  }
  void Embedding(const int32_t* ids, int64_t n, const Matrix& table, float* out) override {
    Note(cuda::LaunchEmbedding(ids, n, table, out, stream_), "Embedding");
  }
  void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps, bool one_plus,
               float* y) override {
    Note(cuda::LaunchRmsNorm(x, rows, dim, w, eps, one_plus, nullptr, y, stream_), "RmsNorm");
  }
  void Add(const float* x, int64_t n, float* y) override {
    Note(cuda::LaunchAdd(x, n, y, stream_), "Add");
  }
  void SiluMul(const float* gate, const float* up, int64_t n, float* y) override {
    Note(cuda::LaunchSiluMul(gate, up, n, y, stream_), "SiluMul");
  }
  void ScaleRowsBySigmoid(const float* gate, int64_t rows, int64_t dim, float* x) override {
    Note(cuda::LaunchScaleRowsBySigmoid(gate, rows, dim, x, stream_), "ScaleRowsBySigmoid");
  }
  void GatherRows(const float* src, const int32_t* rows, int64_t n, int64_t dim,
                  float* dst) override {
    Note(cuda::LaunchGatherRows(src, rows, n, dim, dst, stream_), "GatherRows");
  }

  // ---- attention
  void AttentionPrep(const float* qg, float* k, const StepMeta& step, const AttentionShape& s,
                     const float* q_norm, const float* k_norm, float eps, float* q,
                     float* gate) override {
    Note(cuda::LaunchAttentionPrep(qg, k, step, s, q_norm, k_norm, eps, q, gate, stream_),
         "AttentionPrep");
  }
  void AppendKv(const float* k, const float* v, const StepMeta& step,
                const KvLayer& cache) override {
    if (!KvDtypeOk(cache.dtype, "AppendKv")) return;
    Note(cuda::LaunchAppendKv(k, v, step, cache.k, cache.v, cache.dtype == DType::kBF16,
                              cache.width, stream_),
         "AppendKv");
  }
  void PagedAttention(const float* q, const StepMeta& step, const KvLayer& cache,
                      const AttentionShape& s, const float* gate, float* out) override {
    if (!KvDtypeOk(cache.dtype, "PagedAttention")) return;
    if (s.head_dim > 256) {
      Fail(absl::InvalidArgumentError(
          absl::StrCat("PagedAttention: head_dim ", s.head_dim, " > 256 on the CUDA backend")));
      return;
    }
    Note(cuda::LaunchPagedAttention(q, step, cache.k, cache.v, cache.dtype == DType::kBF16,
                                    cache.block_size, cache.width, s, gate, out, stream_),
         "PagedAttention");
  }

  // ---- Gated DeltaNet
  void DeltaNetSplit(const float* qkvz, const float* ba, int64_t t, const DeltaNetShape& s,
                     float* mixed_qkv, float* z, float* b, float* a) override {
    Note(cuda::LaunchDeltaNetSplit(qkvz, ba, t, s, mixed_qkv, z, b, a, stream_), "DeltaNetSplit");
  }
  void CausalConvSilu(const float* x, const StepMeta& step, const DeltaNetShape& s, const float* w,
                      const StateLayer& state, float* y) override {
    Note(cuda::LaunchCausalConvSilu(x, step, s, w, state.base, state.slot_stride, y, stream_),
         "CausalConvSilu");
  }
  void DeltaNetGates(const float* b, const float* a, int64_t t, int64_t nv, const float* a_log,
                     const float* dt_bias, float* beta, float* g) override {
    Note(cuda::LaunchDeltaNetGates(b, a, t, nv, a_log, dt_bias, beta, g, stream_), "DeltaNetGates");
  }
  // The recurrent form for every token (the chunked C = 64 form is still to come): the same
  // arithmetic as the CPU's recurrence, so prefill matches the reference within its tolerance.
  void DeltaRule(const float* conv_out, const float* g, const float* beta, const StepMeta& step,
                 const DeltaNetShape& s, const StateLayer& state, float* out) override {
    Note(cuda::LaunchDeltaRuleRecurrent(conv_out, g, beta, step, s, state.base, state.slot_stride,
                                        out, stream_),
         "DeltaRule");
  }
  void RmsNormGated(const float* x, const float* z, int64_t rows, int64_t dim, const float* w,
                    float eps, float* y) override {
    Note(cuda::LaunchRmsNorm(x, rows, dim, w, eps, false, z, y, stream_), "RmsNormGated");
  }

  // ---- mixture of experts
  void RouterTopK(const float* logits, int64_t n, int64_t experts, int64_t top_k, bool renormalise,
                  int32_t* ids, float* weights) override {
    if (top_k > experts) {
      Fail(absl::InvalidArgumentError(
          absl::StrCat("RouterTopK: top_k ", top_k, " > experts ", experts)));
      return;
    }
    Note(cuda::LaunchRouterTopK(logits, n, experts, top_k, renormalise, ids, weights, stream_),
         "RouterTopK");
  }

  // The permutation is planned on the host (ids and owners copied back, one sync), then the
  // records are packed on the device.
  void MoeDispatch(const float* h, int64_t n, const int32_t* ids, const float* weights,
                   const int32_t* owner, int ranks, const RecordFormat& f, void* records,
                   int32_t* token_of, DispatchCounts& counts) override {
    std::fill(counts.records_to.begin(), counts.records_to.end(), 0);
    counts.total = 0;
    const int64_t k = f.top_k;
    if (n == 0 || k == 0) return;
    host_ids_.resize(static_cast<size_t>(n * k));
    CopyToHost(ids, host_ids_.data(), host_ids_.size() * sizeof(int32_t));
    const int32_t max_id = *std::max_element(host_ids_.begin(), host_ids_.end());
    host_owner_.resize(static_cast<size_t>(std::max(max_id + 1, 0)));
    CopyToHost(owner, host_owner_.data(), host_owner_.size() * sizeof(int32_t));
    absl::Status st = cuda::PlanDispatch(host_ids_, n, k, host_owner_, ranks, dispatch_plan_);
    if (!st.ok()) return Fail(st);
    const int64_t total = static_cast<int64_t>(dispatch_plan_.token_of.size());
    std::copy(dispatch_plan_.records_to.begin(), dispatch_plan_.records_to.end(),
              counts.records_to.begin());
    counts.total = total;
    if (total == 0) return;
    int32_t* rank_of = static_cast<int32_t*>(Scratch(total * sizeof(int32_t)));
    if (rank_of == nullptr) return;
    Upload(dispatch_plan_.token_of.data(), token_of, total * sizeof(int32_t));
    Upload(dispatch_plan_.rank_of.data(), rank_of, total * sizeof(int32_t));
    Note(cuda::LaunchPackRecords(h, ids, weights, owner, token_of, rank_of, total, f.hidden,
                                 f.hidden_dtype == DType::kBF16, k, f.bytes(), records, stream_),
         "MoeDispatch");
  }

  absl::Status MoeGroupByExpert(const void* records, int64_t count, const RecordFormat& f,
                                int64_t experts, const bool* held, float* xs, int32_t* pair_of,
                                int64_t* expert_offsets) override {
    const int64_t k = f.top_k;
    std::fill(expert_offsets, expert_offsets + experts + 1, 0);
    if (count == 0 || k == 0) return absl::OkStatus();
    int32_t* slot_ids = static_cast<int32_t*>(Scratch(count * k * sizeof(int32_t)));
    if (slot_ids == nullptr) return Synchronize();
    Note(cuda::LaunchRecordIds(records, count, f.hidden_bytes(), k, f.bytes(), slot_ids, stream_),
         "MoeGroupByExpert");
    host_ids_.resize(static_cast<size_t>(count * k));
    CopyToHost(slot_ids, host_ids_.data(), host_ids_.size() * sizeof(int32_t));
    host_pairs_.resize(host_ids_.size());
    absl::Status st = cuda::PlanGroupByExpert(
        host_ids_, count, k, experts, held, host_pairs_,
        std::span<int64_t>(expert_offsets, static_cast<size_t>(experts + 1)));
    if (!st.ok()) return st;
    Upload(host_pairs_.data(), pair_of, host_pairs_.size() * sizeof(int32_t));
    Note(cuda::LaunchGatherPairs(records, count, f.hidden, f.hidden_dtype == DType::kBF16, k,
                                 f.bytes(), pair_of, xs, stream_),
         "MoeGroupByExpert");
    return absl::OkStatus();  // launch errors come back from Synchronize()
  }

  // A loop of GEMMs over the experts with pairs (a grouped GEMM is still to come).
  void GroupedExpertMlp(const float* xs, const int64_t* expert_offsets, int64_t experts,
                        const ExpertMatrices* weights, float* scratch, float* ys) override {
    int64_t max_inter = 0;
    for (int64_t e = 0; e < experts; ++e) {
      if (expert_offsets[e + 1] > expert_offsets[e])
        max_inter = std::max(max_inter, weights[e].gate.rows);
    }
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t first = expert_offsets[e], m = expert_offsets[e + 1] - first;
      if (m <= 0) continue;
      const ExpertMatrices& w = weights[e];
      const int64_t inter = w.gate.rows, hidden = w.down.rows;
      float* gate = scratch + 2 * first * max_inter;
      float* up = gate + m * inter;
      Linear(xs + first * w.gate.cols, m, w.gate, gate, false);
      Linear(xs + first * w.up.cols, m, w.up, up, false);
      SiluMul(gate, up, m * inter, gate);
      Linear(gate, m, w.down, ys + first * hidden, false);
    }
  }
  void MoeWeightedSum(const float* ys, const void* records, int64_t count, const RecordFormat& f,
                      const int32_t* pair_of, float* partial) override {
    Note(cuda::LaunchMoeWeightedSum(ys, records, count, f.hidden, f.hidden_bytes(), f.top_k,
                                    f.bytes(), pair_of, partial, stream_),
         "MoeWeightedSum");
  }
  // The records of each token, in record order, planned on the host from token_of.
  void MoeCombine(const float* combined, const int32_t* token_of, int64_t records, int64_t n,
                  int64_t hidden, float* routed) override {
    if (n * hidden == 0) return;
    host_ids_.resize(static_cast<size_t>(records));
    CopyToHost(token_of, host_ids_.data(), host_ids_.size() * sizeof(int32_t));
    absl::Status st = cuda::PlanRecordsByToken(host_ids_, n, host_offsets_, host_pairs_);
    if (!st.ok()) return Fail(st);
    const size_t offsets_bytes = AlignUp(host_offsets_.size() * sizeof(int32_t), 256);
    char* base = static_cast<char*>(
        Scratch(offsets_bytes + std::max<size_t>(host_pairs_.size(), 1) * sizeof(int32_t)));
    if (base == nullptr) return;
    int32_t* offsets = reinterpret_cast<int32_t*>(base);
    int32_t* list = reinterpret_cast<int32_t*>(base + offsets_bytes);
    Upload(host_offsets_.data(), offsets, host_offsets_.size() * sizeof(int32_t));
    Upload(host_pairs_.data(), list, host_pairs_.size() * sizeof(int32_t));
    Note(cuda::LaunchMoeCombine(combined, offsets, list, n, hidden, routed, stream_), "MoeCombine");
  }

  // ---- sampling: plain greedy steps on the device (argmax, one int per row back); any other
  // settings copy the logits rows to the host and run the CPU backend's SampleRows
  // (kernels/cpu/sample_rows.h, the Sampler's own row code), so the choices are the Sampler's.
  absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                          std::span<const SamplingRow> settings, int32_t* tokens) override {
    bool all_greedy = true;
    for (int64_t r = 0; r < rows; ++r) {
      const SamplingRow& s = settings[r];
      const bool plain = s.repetition_penalty == 1.0f && s.frequency_penalty == 0.0f &&
                         s.presence_penalty == 0.0f && s.banned.empty() && s.bias_ids.empty();
      all_greedy = all_greedy && s.temperature < 1e-5f && plain;
    }
    if (!all_greedy) {
      host_logits_.resize(static_cast<size_t>(rows * vocab));
      CopyToHost(logits, host_logits_.data(), host_logits_.size() * sizeof(float));
      if (absl::Status st = Synchronize(); !st.ok()) return st;
      return cpu::SampleRows(host_logits_.data(), rows, vocab, settings, tokens);
    }
    if (rows == 0) return absl::OkStatus();
    int32_t* out = static_cast<int32_t*>(Scratch(2 * rows * sizeof(int32_t)));
    if (out == nullptr) return Synchronize();
    Note(cuda::LaunchArgmaxRows(logits, rows, vocab, out, out + rows, stream_), "SampleRows");
    host_ids_.resize(static_cast<size_t>(2 * rows));
    CopyToHost(out, host_ids_.data(), host_ids_.size() * sizeof(int32_t));
    if (absl::Status st = Synchronize(); !st.ok()) return st;
    for (int64_t r = 0; r < rows; ++r) {
      if (host_ids_[rows + r] != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("SampleRows: row ", r, " of the logits has NaN or +inf"));
      }
      tokens[r] = host_ids_[r];
    }
    return absl::OkStatus();
  }

 private:
  void Note(cudaError_t err, std::string_view op) {
    if (err != cudaSuccess && first_error_.ok()) {
      first_error_ = absl::InternalError(absl::StrCat(
          std::string(op), ": CUDA error ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
    }
  }
  void Fail(absl::Status st) {
    if (first_error_.ok()) first_error_ = std::move(st);
  }
  bool KvDtypeOk(DType dtype, std::string_view op) {
    if (dtype == DType::kF32 || dtype == DType::kBF16) return true;
    Fail(absl::InvalidArgumentError(absl::StrCat(std::string(op),
                                                 ": the KV arena must be F32 or BF16, not ",
                                                 std::string(DTypeName(dtype)))));
    return false;
  }
  void Upload(const void* host, void* dst, size_t bytes) {
    if (bytes == 0) return;
    Note(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream_), "upload");
    // Pageable host memory: the copy has left `host` when cudaMemcpyAsync returns, but the host
    // vectors are reused by the next op, so wait here (these maps are small).
    Note(cudaStreamSynchronize(stream_), "upload");
  }

  // Device scratch of at least `bytes`, valid until the next Scratch() call; stream-ordered.
  void* Scratch(size_t bytes) {
    bytes = std::max<size_t>(bytes, 256);
    if (bytes > scratch_bytes_) {
      const size_t grown = std::max(bytes, scratch_bytes_ * 2);
      if (scratch_ != nullptr) Note(cudaFreeAsync(scratch_, stream_), "scratch");
      scratch_ = nullptr;
      scratch_bytes_ = 0;
      const cudaError_t err = cudaMallocAsync(&scratch_, grown, stream_);
      if (err != cudaSuccess) {
        Note(err, absl::StrCat("scratch of ", grown, " bytes"));
        scratch_ = nullptr;
        return nullptr;
      }
      scratch_bytes_ = grown;
    }
    return scratch_;
  }

  absl::Status LinearImpl(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
    const size_t elem = DTypeSize(w.dtype);
    const size_t weight_bytes = static_cast<size_t>(w.rows * w.cols) * elem;
    const LinearPath path = cuda::ChooseLinearPath(m, w.dtype);
    // Weights below their element alignment (checkpoint offsets need not be aligned) are copied;
    // cuBLASLt is told the alignment it gets. Scratch layout: [weights copied to an aligned
    // address][x rounded to 16 bits][FP8 tile].
    const bool copy_weights = w.dtype != DType::kF8E4M3 && PointerAlignment(w.data) < elem;
    const size_t copy_bytes = copy_weights ? AlignUp(weight_bytes, 256) : 0;
    const size_t x_bytes =
        path == LinearPath::kLtHalfInputs ? AlignUp(static_cast<size_t>(m * w.cols) * 2, 256) : 0;
    const size_t tile_bytes = w.dtype == DType::kF8E4M3 && path == LinearPath::kLtF32
                                  ? static_cast<size_t>(std::min(kFp8TileRows, w.rows) * w.cols) * 4
                                  : 0;
    char* base = nullptr;
    if (copy_bytes + x_bytes + tile_bytes > 0) {
      base = static_cast<char*>(Scratch(copy_bytes + x_bytes + tile_bytes));
      if (base == nullptr) return absl::ResourceExhaustedError("Linear: no device scratch");
    }
    Matrix mat = w;
    if (copy_weights) {
      Note(cudaMemcpyAsync(base, w.data, weight_bytes, cudaMemcpyDeviceToDevice, stream_),
           "Linear: aligning weights");
      mat.data = base;
    }
    if (path == LinearPath::kFewRows) return FewRows(x, m, mat, y, accumulate);
    if (path == LinearPath::kLtHalfInputs) {
      void* xh = base + copy_bytes;
      Note(cuda::LaunchRoundTo(w.dtype, x, m * w.cols, xh, stream_), "Linear: rounding x");
      const cudaDataType t = w.dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
      if (LtMatmul(t, mat.data, xh, y, m, w.rows, w.cols, w.rows, accumulate)) {
        return absl::OkStatus();
      }
      return FewRows(x, m, mat, y, accumulate);  // no cuBLASLt algorithm for this shape
    }
    if (w.dtype == DType::kF32) {
      if (LtMatmul(CUDA_R_32F, mat.data, x, y, m, w.rows, w.cols, w.rows, accumulate)) {
        return absl::OkStatus();
      }
      return FewRows(x, m, mat, y, accumulate);
    }
    // FP8: dequantise a tile of weight rows to fp32, then an fp32 GEMM into y's columns.
    float* tile = reinterpret_cast<float*>(base + copy_bytes + x_bytes);
    for (int64_t r0 = 0; r0 < w.rows; r0 += kFp8TileRows) {
      const int64_t rows = std::min(kFp8TileRows, w.rows - r0);
      Note(cuda::LaunchDequantizeRows(w, r0, rows, tile, stream_), "Linear: FP8 tile");
      if (!LtMatmul(CUDA_R_32F, tile, x, y + r0, m, rows, w.cols, w.rows, accumulate)) {
        Matrix part{DType::kF32, tile, rows, w.cols};
        // y + r0 with row stride w.rows is not what FewRows writes: fall back per row block.
        for (int64_t i = 0; i < m; ++i) {
          absl::Status st = FewRowsStrided(x + i * w.cols, part, y + i * w.rows + r0, accumulate);
          if (!st.ok()) return st;
        }
      }
    }
    return absl::OkStatus();
  }

  // The weight-streaming kernel over m rows in groups of cuda::kFewRowsMax.
  absl::Status FewRows(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
    for (int64_t r0 = 0; r0 < m; r0 += cuda::kFewRowsMax) {
      const int64_t rows = std::min(cuda::kFewRowsMax, m - r0);
      Note(
          cuda::LaunchLinearFewRows(x + r0 * w.cols, rows, w, y + r0 * w.rows, accumulate, stream_),
          "Linear");
    }
    return absl::OkStatus();
  }
  absl::Status FewRowsStrided(const float* x_row, const Matrix& w, float* y_row, bool accumulate) {
    Note(cuda::LaunchLinearFewRows(x_row, 1, w, y_row, accumulate, stream_), "Linear");
    return absl::OkStatus();
  }

  // D (col-major n x m, ld ldc) = op(A)ᵀ · B, i.e. row-major y[m, n] = x[m, k] · w[n, k]ᵀ, fp32
  // accumulate and output. False when cuBLASLt has no algorithm for it (the caller falls back).
  bool LtMatmul(cudaDataType ab, const void* w, const void* x, float* y, int64_t m, int64_t n,
                int64_t k, int64_t ldc, bool accumulate) {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    bool ok =
        cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
    const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
    ok = ok && cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transa,
                                              sizeof transa) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &transb,
                                              sizeof transb) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&a, ab, k, n, k) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&b, ab, k, m, k) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, n, m, ldc) == CUBLAS_STATUS_SUCCESS;
    const size_t align_a = PointerAlignment(w), align_b = PointerAlignment(x),
                 align_c = PointerAlignment(y);
    const AlgoKey key{static_cast<int>(ab),
                      m,
                      n,
                      k,
                      ldc,
                      accumulate,
                      static_cast<int>(std::min<size_t>(align_a, 16)),
                      static_cast<int>(std::min<size_t>(align_b, 16)),
                      static_cast<int>(std::min<size_t>(align_c, 16))};
    auto it = algos_.find(key);
    if (ok && it == algos_.end()) {
      // The heuristics' first choice, cached per shape and alignment.
      cublasLtMatmulPreference_t pref = nullptr;
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      const uint32_t aa = std::get<6>(key), ba = std::get<7>(key), ca = std::get<8>(key);
      if (cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS) {
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &kLtWorkspaceBytes, sizeof kLtWorkspaceBytes);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa,
                                             sizeof aa);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ba,
                                             sizeof ba);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ca,
                                             sizeof ca);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ca,
                                             sizeof ca);
        if (cublasLtMatmulAlgoGetHeuristic(lt_, op, a, b, c, c, pref, 1, &result, &found) !=
            CUBLAS_STATUS_SUCCESS) {
          found = 0;
        }
        cublasLtMatmulPreferenceDestroy(pref);
      }
      std::optional<cublasLtMatmulAlgo_t> algo;
      if (found > 0) algo = result.algo;
      it = algos_.emplace(key, algo).first;
    }
    ok = ok && it != algos_.end() && it->second.has_value();
    if (ok) {
      const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
      const cublasStatus_t st =
          cublasLtMatmul(lt_, op, &alpha, w, a, x, b, &beta, y, c, y, c, &*it->second,
                         lt_workspace_, kLtWorkspaceBytes, stream_);
      if (st != CUBLAS_STATUS_SUCCESS) {
        // Not supported after all (or a launch failure): never again for this key; the caller
        // falls back to the weight-streaming kernel.
        it->second.reset();
        ok = false;
      }
    }
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
    return ok;
  }

  // (A/B type, m, n, k, ldc, accumulate, alignments of A, B, C).
  using AlgoKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, bool, int, int, int>;

  cudaStream_t stream_;
  cublasLtHandle_t lt_;
  void* lt_workspace_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  std::map<AlgoKey, std::optional<cublasLtMatmulAlgo_t>> algos_;
  absl::Status first_error_;
  std::atomic<int64_t> allocations_{0};
  // Host staging reused across ops.
  std::vector<int32_t> host_ids_, host_owner_, host_pairs_, host_offsets_;
  std::vector<float> host_logits_;
  cuda::DispatchPlan dispatch_plan_;
};

}  // namespace

bool CudaBackendAvailable(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why) *why = err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device";
    return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device) {
  std::string why;
  if (!CudaBackendAvailable(&why)) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA backend: ", why));
  }
  auto cuda_error = [](std::string_view what, cudaError_t err) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA backend: ", std::string(what), ": ", cudaGetErrorString(err)));
  };
  if (cudaError_t err = cudaSetDevice(device); err != cudaSuccess) {
    return cuda_error(absl::StrCat("device ", device), err);
  }
  cudaStream_t stream = nullptr;
  if (cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      err != cudaSuccess) {
    return cuda_error("stream", err);
  }
  cublasLtHandle_t lt = nullptr;
  if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
    cudaStreamDestroy(stream);
    return absl::FailedPreconditionError("CUDA backend: cublasLtCreate failed");
  }
  void* workspace = nullptr;
  if (cudaError_t err = cudaMalloc(&workspace, kLtWorkspaceBytes); err != cudaSuccess) {
    cublasLtDestroy(lt);
    cudaStreamDestroy(stream);
    return cuda_error("cuBLASLt workspace", err);
  }
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(stream, lt, workspace));
}

std::unique_ptr<Backend> MakeCudaBackend() {
  auto backend = CreateCudaBackend();
  return backend.ok() ? *std::move(backend) : nullptr;
}

}  // namespace nextserve::kernels
