// NumPy .npy files (version 1.0, little-endian float32 / int64, C order): what nextserve-run writes
// and what the golden tests read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nextserve {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // float32 arrays only
};

absl::StatusOr<NpyArray> ReadNpyF32(const std::string& path);
absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const float* data);

}  // namespace nextserve
