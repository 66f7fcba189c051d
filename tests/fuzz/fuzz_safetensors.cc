// libFuzzer target for the safetensors header parser: any input must give either an error status or
// entries that really lie inside the data section (so SafetensorsFile can never read out of
// bounds).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view image(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::vector<nextserve::TensorHeaderEntry>> entries =
      nextserve::ParseSafetensorsImage(image, "fuzz.safetensors");
  if (!entries.ok()) {
    if (entries.status().message().find("fuzz.safetensors") == std::string_view::npos) std::abort();
    return 0;
  }
  uint64_t header_size;
  std::memcpy(&header_size, data, 8);  // little-endian host
  const uint64_t data_size = size - 8 - header_size;
  std::vector<const nextserve::TensorHeaderEntry*> nonempty;
  for (const nextserve::TensorHeaderEntry& e : *entries) {
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) std::abort();
      numel *= static_cast<uint64_t>(d);  // cannot overflow: the parser checked it
    }
    if (e.begin > e.end || e.end > data_size) std::abort();
    if (e.end - e.begin != numel * nextserve::DTypeSize(e.dtype)) std::abort();
    if (e.end > e.begin) nonempty.push_back(&e);
  }
  for (size_t i = 0; i < nonempty.size(); ++i) {
    for (size_t j = i + 1; j < nonempty.size(); ++j) {
      if (nonempty[i]->begin < nonempty[j]->end && nonempty[j]->begin < nonempty[i]->end) {
        std::abort();
      }
    }
  }
  return 0;
}
