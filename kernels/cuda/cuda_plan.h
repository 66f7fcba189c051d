// Host-side planning behind the CUDA backend: which GEMM path a Linear takes, and the permutation
// maps of the MoE ops (dispatch records by rank, (record, expert) pairs by expert, records by
// token). Plain host code with no CUDA dependency, so CI checks it on every machine
// (tests/unit/kernels/cuda_plan_test.cc); the backend uploads what these return.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "base/dtype.h"
#include "kernels/moe_plan.h"

namespace nextserve::kernels::cuda {

// Up to this many rows a Linear streams the weights once through its own kernel (decode: memory
// bound, exact fp32 inputs); beyond it a GEMM through cuBLASLt.
inline constexpr int64_t kFewRowsMax = 16;

enum class LinearPath : uint8_t {
  kFewRows,       // own weight-streaming kernel, any dtype, fp32 inputs
  kLtF32,         // cuBLASLt fp32 x fp32 (fp32 weights; FP8 tiles dequantised to fp32)
  kLtHalfInputs,  // cuBLASLt with x rounded to the weights' 16-bit dtype, fp32 accumulate
};
LinearPath ChooseLinearPath(int64_t m, DType weights);

// MoeDispatch: one record per (token, destination rank) holding any of the token's experts,
// grouped by rank, tokens ascending within a rank.
struct DispatchPlan {
  std::vector<int64_t> records_to;  // [ranks]
  std::vector<int32_t> token_of;    // [records]
  std::vector<int32_t> rank_of;     // [records]
};
// ids: [n, top_k] expert ids; owner: [experts] -> rank. InvalidArgument names an id outside
// [0, owner.size()) or an owner outside [0, ranks).
absl::Status PlanDispatch(std::span<const int32_t> ids, int64_t n, int64_t top_k,
                          std::span<const int32_t> owner, int ranks, DispatchPlan& plan);

// MoeGroupByExpert's map: kernels/moe_plan.h (shared with the CPU backend).
using ::nextserve::kernels::PlanGroupByExpert;

// MoeCombine: the records of each token in record order, as CSR: token i's records are
// record_list[offsets[i] .. offsets[i + 1]). InvalidArgument names a token outside [0, n).
absl::Status PlanRecordsByToken(std::span<const int32_t> token_of, int64_t n,
                                std::vector<int32_t>& offsets, std::vector<int32_t>& record_list);

}  // namespace nextserve::kernels::cuda
