#include "kernels/moe_plan.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace nextserve::kernels {

absl::Status PlanGroupByExpert(std::span<const int32_t> slot_ids, int64_t records, int64_t top_k,
                               int64_t experts, const bool* held, std::span<int32_t> pair_of,
                               std::span<int64_t> expert_offsets) {
  std::fill(expert_offsets.begin(), expert_offsets.begin() + experts + 1, 0);
  for (int64_t i = 0; i < records * top_k; ++i) {
    const int32_t e = slot_ids[i];
    if (e == -1) continue;  // an empty slot
    if (e < 0 || e >= experts) {
      return absl::DataLossError(
          absl::StrCat("received a token for expert ", e, ", outside [0, ", experts, ")"));
    }
    if (!held[e]) {
      return absl::DataLossError(
          absl::StrCat("received a token for expert ", e, ", which this rank does not hold"));
    }
    ++expert_offsets[e + 1];
  }
  for (int64_t e = 0; e < experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  static thread_local std::vector<int64_t> cursor;  // reused: no allocation per step
  cursor.assign(expert_offsets.begin(), expert_offsets.begin() + experts);
  for (int64_t i = 0; i < records * top_k; ++i) {
    const int32_t e = slot_ids[i];
    pair_of[i] = e == -1 ? -1 : static_cast<int32_t>(cursor[e]++);
  }
  return absl::OkStatus();
}

}  // namespace nextserve::kernels
