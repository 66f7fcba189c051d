// Philox4x32-10 (Salmon et al., SC'11; Random123, also cuRAND's and PyTorch's): a counter-based
// generator. Output = a pure function of (key, counter), so a request's draws depend only on its
// seed and its step number, on every platform and whatever else shares the batch.
#pragma once

#include <array>
#include <cstdint>

namespace nextserve::sampling {

using PhiloxBlock = std::array<uint32_t, 4>;

constexpr PhiloxBlock Philox4x32_10(PhiloxBlock ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53, kM1 = 0xCD9E8D57;  // multipliers
  constexpr uint32_t kW0 = 0x9E3779B9, kW1 = 0xBB67AE85;  // Weyl key increments
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kW0;
      key[1] += kW1;
    }
    const uint64_t p0 = uint64_t{kM0} * ctr[0];
    const uint64_t p1 = uint64_t{kM1} * ctr[2];
    ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<uint32_t>(p1),
           static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<uint32_t>(p0)};
  }
  return ctr;
}

// The uniform double in [0, 1) for draw number `step` of stream `seed`: the top 53 bits of the
// first two output words, times 2^-53 (exact; no library distribution involved).
constexpr double PhiloxUniform(uint64_t seed, uint64_t step) {
  const PhiloxBlock r =
      Philox4x32_10({static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), 0, 0},
                    {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  const uint64_t bits = (uint64_t{r[0]} << 32) | r[1];
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

}  // namespace nextserve::sampling
