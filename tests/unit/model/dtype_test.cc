#include "base/dtype.h"

#include <immintrin.h>

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace nextserve {
namespace {

TEST(DTypeTest, NamesAndSizes) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3}) {
    EXPECT_EQ(DTypeFromName(DTypeName(t)), t);
  }
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF8E4M3), 1u);
  EXPECT_EQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
  EXPECT_FALSE(DTypeFromName("I64").has_value());
  EXPECT_FALSE(DTypeFromName("bf16").has_value());  // safetensors names are upper case
}

float Bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// The x86-64-v3 baseline has F16C: compare the software conversions with the hardware ones.
TEST(DTypeTest, F16ToF32MatchesF16CForAllValues) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = _cvtsh_ss(static_cast<unsigned short>(h));
    const float got = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      EXPECT_EQ(std::memcmp(&want, &got, 4), 0) << "half bits " << h;
    }
  }
}

TEST(DTypeTest, F32ToF16MatchesF16CRoundToNearestEven) {
  std::mt19937 rng(7);
  std::vector<float> inputs = {
      0.f,      -0.f,         1.f,       65504.f,       65519.f,        65520.f,       1e9f,
      -1e9f,    INFINITY,     -INFINITY, 0x1p-24f,      0x1p-25f,       0x1.8p-25f,    0x1p-26f,
      0x1p-14f, 0x1.ffcp-15f, 6.1e-5f,   1.0009765625f, 1.00048828125f, 1.00146484375f};
  for (int i = 0; i < 2000000; ++i) inputs.push_back(Bits(rng()));  // every exponent range
  for (float f : inputs) {
    const uint16_t want = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
    const uint16_t got = F32ToF16(f);
    if (std::isnan(f)) {
      EXPECT_EQ(got & 0x7c00, 0x7c00);
      EXPECT_NE(got & 0x3ff, 0);
    } else {
      ASSERT_EQ(got, want) << "float " << f;
    }
  }
}

TEST(DTypeTest, Bf16) {
  EXPECT_EQ(F32ToBf16(1.f), 0x3f80);
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.f);
  EXPECT_EQ(F32ToBf16(Bits(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(F32ToBf16(Bits(0x3f818000u)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(F32ToBf16(Bits(0x3f808001u)), 0x3f81);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(NAN))));
}

TEST(DTypeTest, ConvertToF32AllTypesUnaligned) {
  const float values[] = {1.5f, -2.25f, 0.f, 448.f};
  alignas(8) unsigned char buf[64];
  float out[4];
  // F32 at an odd address.
  std::memcpy(buf + 1, values, sizeof values);
  ConvertToF32(DType::kF32, buf + 1, out, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], values[i]);
  for (DType t : {DType::kF16, DType::kBF16}) {
    for (int i = 0; i < 4; ++i) {
      const uint16_t h = t == DType::kF16 ? F32ToF16(values[i]) : F32ToBf16(values[i]);
      std::memcpy(buf + 3 + 2 * i, &h, 2);
    }
    ConvertToF32(t, buf + 3, out, 4);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], values[i]) << DTypeName(t);
  }
  // float8_e4m3fn: 0x38 = 1.0, 0xc0 = -2.0, 0x7e = 448 (max), 0x01 = 2^-9, 0x7f = NaN.
  const unsigned char f8[] = {0x38, 0xc0, 0x7e, 0x01, 0x7f, 0x00, 0x80};
  float o8[7];
  ConvertToF32(DType::kF8E4M3, f8, o8, 7);
  EXPECT_EQ(o8[0], 1.f);
  EXPECT_EQ(o8[1], -2.f);
  EXPECT_EQ(o8[2], 448.f);
  EXPECT_EQ(o8[3], 0x1p-9f);
  EXPECT_TRUE(std::isnan(o8[4]));
  EXPECT_EQ(o8[5], 0.f);
  EXPECT_TRUE(std::signbit(o8[6]));
}

TEST(DTypeTest, F8E4M3EncodeRoundTripsEveryCodeAndRoundsToNearestEven) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN
    const float f = F8E4M3ToF32(static_cast<uint8_t>(c));
    const uint8_t back = F32ToF8E4M3(f);
    if (c == 0x80) {
      EXPECT_EQ(back, 0x80);  // -0 keeps its sign
    } else {
      EXPECT_EQ(back, c) << "code " << c << " value " << f;
    }
  }
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(1.0625f)), 1.0f);   // tie between 1 and 1.125 -> even
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(1.1875f)), 1.25f);  // tie between 1.125 and 1.25 -> even
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(450.0f)), 448.0f);
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(-464.0f)), -448.0f);  // tie with 480 (NaN code) -> 448
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(F32ToF8E4M3(470.0f))));
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(std::ldexp(1.0f, -10))), 0.0f);  // half of 2^-9: even
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(std::ldexp(3.0f, -11))), std::ldexp(1.0f, -9));
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(std::ldexp(15.5f, -10))), std::ldexp(1.0f, -6));
}

}  // namespace
}  // namespace nextserve
