// A vectorisable exp for non-positive arguments, shared by the sampler's row passes and the CPU
// kernels' sigmoid / SiLU.
#pragma once

#include <bit>
#include <cstdint>

namespace nextserve {

// exp(x) for x <= 0. Cephes expf's range reduction and polynomial with 2^n built from exponent
// bits: ~1 ulp, exactly 1 at 0, and 0 below -87 (where the true value is < 2e-38), -inf included.
// Branch-free, so loops over it vectorise (with -fno-trapping-math: the selects then if-convert;
// libm's expf does not vectorise without -ffast-math).
inline float ExpNonPositive(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to integer
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

}  // namespace nextserve
