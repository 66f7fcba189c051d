// Host-side maps of the MoE ops that every backend computes the same way. Plain host code.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace nextserve::kernels {

// MoeGroupByExpert: pair_of [records * top_k] (-1 for an empty slot) and expert_offsets
// [experts + 1], pairs ascending by expert, records in order within an expert. DataLoss names an
// id outside [0, experts) (other than -1) or one `held` does not hold.
absl::Status PlanGroupByExpert(std::span<const int32_t> slot_ids, int64_t records, int64_t top_k,
                               int64_t experts, const bool* held, std::span<int32_t> pair_of,
                               std::span<int64_t> expert_offsets);

}  // namespace nextserve::kernels
