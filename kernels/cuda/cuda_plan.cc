#include "kernels/cuda/cuda_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace nextserve::kernels::cuda {

LinearPath ChooseLinearPath(int64_t m, DType weights) {
  if (m <= kFewRowsMax) return LinearPath::kFewRows;
  switch (weights) {
    case DType::kBF16:
    case DType::kF16:
      return LinearPath::kLtHalfInputs;
    case DType::kF32:
    case DType::kF8E4M3:
      return LinearPath::kLtF32;
  }
  return LinearPath::kLtF32;
}

absl::Status PlanDispatch(std::span<const int32_t> ids, int64_t n, int64_t top_k,
                          std::span<const int32_t> owner, int ranks, DispatchPlan& plan) {
  const int64_t experts = static_cast<int64_t>(owner.size());
  std::vector<uint8_t> goes(static_cast<size_t>(n * ranks), 0);
  for (int64_t i = 0; i < n * top_k; ++i) {
    const int32_t e = ids[i];
    if (e < 0 || e >= experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MoeDispatch: token ", i / top_k, " names expert ", e, ", outside [0, ", experts, ")"));
    }
    const int32_t r = owner[e];
    if (r < 0 || r >= ranks) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MoeDispatch: expert ", e, " is owned by rank ", r, ", outside [0, ", ranks, ")"));
    }
    goes[(i / top_k) * ranks + r] = 1;
  }
  plan.records_to.assign(static_cast<size_t>(ranks), 0);
  plan.token_of.clear();
  plan.rank_of.clear();
  for (int r = 0; r < ranks; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      if (!goes[i * ranks + r]) continue;
      ++plan.records_to[r];
      plan.token_of.push_back(static_cast<int32_t>(i));
      plan.rank_of.push_back(r);
    }
  }
  return absl::OkStatus();
}

absl::Status PlanRecordsByToken(std::span<const int32_t> token_of, int64_t n,
                                std::vector<int32_t>& offsets, std::vector<int32_t>& record_list) {
  offsets.assign(static_cast<size_t>(n + 1), 0);
  for (size_t r = 0; r < token_of.size(); ++r) {
    const int32_t t = token_of[r];
    if (t < 0 || t >= n) {
      return absl::InvalidArgumentError(absl::StrCat("MoeCombine: record ", r, " belongs to token ",
                                                     t, ", outside [0, ", n, ")"));
    }
    ++offsets[t + 1];
  }
  for (int64_t i = 0; i < n; ++i) offsets[i + 1] += offsets[i];
  record_list.resize(token_of.size());
  std::vector<int32_t> cursor(offsets.begin(), offsets.end() - 1);
  for (size_t r = 0; r < token_of.size(); ++r) {
    record_list[cursor[token_of[r]]++] = static_cast<int32_t>(r);
  }
  return absl::OkStatus();
}

}  // namespace nextserve::kernels::cuda
