#include "sampling/philox.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/sampling/chi_square.h"

namespace nextserve::sampling {
namespace {

// Random123's known-answer vectors (tests/kat_vectors) for Philox4x32-10.
TEST(PhiloxTest, KnownAnswers) {
  EXPECT_EQ(Philox4x32_10({0, 0, 0, 0}, {0, 0}),
            (PhiloxBlock{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(
      Philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
      (PhiloxBlock{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(
      Philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
      (PhiloxBlock{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
  static_assert(Philox4x32_10({0, 0, 0, 0}, {0, 0})[0] == 0x6627e8d5);  // usable at compile time
}

TEST(PhiloxTest, UniformIsTopBitsOfFirstTwoWords) {
  // seed 0, step 0 is counter {0,0,0,0}, key {0,0}: words 0x6627e8d5, 0xe169c58d.
  const uint64_t bits = (uint64_t{0x6627e8d5} << 32) | 0xe169c58d;
  EXPECT_EQ(PhiloxUniform(0, 0), static_cast<double>(bits >> 11) * 0x1.0p-53);
  // The 64-bit seed and step both matter, high halves included.
  EXPECT_NE(PhiloxUniform(1, 0), PhiloxUniform(0, 0));
  EXPECT_NE(PhiloxUniform(uint64_t{1} << 32, 0), PhiloxUniform(0, 0));
  EXPECT_NE(PhiloxUniform(0, uint64_t{1} << 32), PhiloxUniform(0, 0));
}

// 1e6 draws into 1000 equal bins: chi-square against uniform at alpha 1e-6.
TEST(PhiloxTest, UniformsAreUniform) {
  constexpr int kBins = 1000, kDraws = 1000000;
  std::vector<int> counts(kBins, 0);
  double min = 1, max = 0;
  for (int i = 0; i < kDraws; ++i) {
    const double u = PhiloxUniform(12345, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    min = std::min(min, u);
    max = std::max(max, u);
    ++counts[static_cast<int>(u * kBins)];
  }
  const double expected = static_cast<double>(kDraws) / kBins;
  double chi2 = 0;
  for (int c : counts) chi2 += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi2, testing::ChiSquareCritical1e6(kBins - 1));
  EXPECT_LT(min, 1e-4);
  EXPECT_GT(max, 1 - 1e-4);
}

}  // namespace
}  // namespace nextserve::sampling
