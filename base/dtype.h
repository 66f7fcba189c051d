// Element types a checkpoint may store, with conversions to fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace nextserve {

// F8_E4M3: block-scaled FP8 checkpoints (weight + weight_scale_inv, see weights.h).
enum class DType : uint8_t { kF32, kF16, kBF16, kF8E4M3 };

size_t DTypeSize(DType t);
std::string_view DTypeName(DType t);  // safetensors spelling: "F32", "BF16", ...
std::optional<DType> DTypeFromName(std::string_view safetensors_name);

inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
// Round to nearest even, NaN kept quiet (same as torch's float -> bfloat16).
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
float F16ToF32(uint16_t v);
// float8_e4m3fn (bias 7, no infinities, 0x7f / 0xff are NaN), exact.
float F8E4M3ToF32(uint8_t v);
// Round to nearest even (as torch's float -> float8_e4m3fn); beyond the largest finite value
// (448) or NaN gives NaN (0x7f, sign kept).
uint8_t F32ToF8E4M3(float f);
uint16_t F32ToF16(float f);

// Converts n elements of type `src_type` at `src` (any alignment) to fp32.
void ConvertToF32(DType src_type, const void* src, float* dst, size_t n);

}  // namespace nextserve
