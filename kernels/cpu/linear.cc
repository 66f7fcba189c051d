// y = x · Wᵀ on the CPU. Few rows (decode): an AVX2 kernel streaming W once in its stored dtype.
// Many rows (prefill, experts): oneDNN sgemm; bf16/fp16 weights are widened tile by tile into a
// per-thread scratch so that the stored dtype stays the only copy in memory. Block-scaled FP8
// (E4M3 + a 128x128 block scale) takes the same two paths: the few-rows kernel sums each
// 128-column block and scales it once, the GEMM path dequantises 128-row tiles (one block row).
// bf16 weights under bf16 compute (SetLinearCompute) take linear_bf16.cc's paths instead.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "dnnl.h"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve::kernels::cpu {
namespace {

constexpr int64_t kFewRowsMax = 8;      // up to here the weight-streaming kernel wins (bench/)
constexpr int64_t kBf16FewRowsMax = 8;  // bf16 compute: the vdpbf16ps kernel below, matmul above
constexpr int64_t kTileRows = 128;      // weight rows widened at a time on the GEMM path
static_assert(kTileRows % kFp8Block == 0, "an FP8 tile must cover whole block rows");

template <DType D>
inline __m256 Load8(const void* base, int64_t i) {
  if constexpr (D == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (D == DType::kBF16) {
    __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_cvtph_ps(h);
  }
}

// E4M3 values as fp32 divided by 2^8: each byte becomes an fp16 bit pattern (sign-extend to 16
// bits, shift left 7: the 4 exponent and 3 mantissa bits land in fp16's, the sign in bit 15; the
// mask clears the sign copy in bit 14) widened by F16C, which handles subnormals without a slow
// path. The missing 2^8 is folded into the block scale.
constexpr short kFp8ToF16Mask = static_cast<short>(0xBF80);
inline __m256 LoadFp8x8Over256(const uint8_t* p) {
  const __m128i b = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(b, 7), _mm_set1_epi16(kFp8ToF16Mask)));
}
inline void LoadFp8x16Over256(const uint8_t* p, __m256* lo, __m256* hi) {
  const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(b, 7), _mm256_set1_epi16(kFp8ToF16Mask));
  *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}
constexpr float kFp8Over256Fix = 256.0f;

template <DType D>
inline float Load1(const void* base, int64_t i) {
  if constexpr (D == DType::kF32) {
    float v;
    std::memcpy(&v, static_cast<const char*>(base) + 4 * i, 4);
    return v;
  } else {
    uint16_t v;
    std::memcpy(&v, static_cast<const char*>(base) + 2 * i, 2);
    return D == DType::kBF16 ? Bf16ToF32(v) : F16ToF32(v);
  }
}

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// R rows of x against every weight row; R <= 4 so the accumulators stay in registers.
template <DType D, int R>
void FewRowsKernel(const float* x, const Matrix& w, float* y, bool accumulate) {
  const int64_t n = w.rows, k = w.cols;
  const size_t esize = DTypeSize(D);
  const int64_t k8 = k & ~int64_t{7};
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    const void* row = static_cast<const char*>(w.data) + static_cast<size_t>(j) * k * esize;
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k8; i += 8) {
      __m256 wv = Load8<D>(row, i);
      for (int r = 0; r < R; ++r)
        acc[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * k + i), acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      float s = HorizontalSum(acc[r]);
      for (int64_t i = k8; i < k; ++i) s += Load1<D>(row, i) * x[r * k + i];
      float& out = y[r * n + j];
      out = accumulate ? out + s : s;
    }
  }
}

// Runs `kernel(std::integral_constant<int, R>, x_rows, y_rows)` over groups of up to 4 rows, R the
// group's size, so that each kernel is compiled for a fixed row count.
template <typename Kernel>
void ForRowGroups(const float* x, int64_t m, const Matrix& w, float* y, Kernel kernel) {
  const int64_t k = w.cols, n = w.rows;
  for (int64_t r0 = 0; r0 < m; r0 += 4) {
    const float* xr = x + r0 * k;
    float* yr = y + r0 * n;
    switch (std::min<int64_t>(4, m - r0)) {
      case 1:
        kernel(std::integral_constant<int, 1>{}, xr, yr);
        break;
      case 2:
        kernel(std::integral_constant<int, 2>{}, xr, yr);
        break;
      case 3:
        kernel(std::integral_constant<int, 3>{}, xr, yr);
        break;
      default:
        kernel(std::integral_constant<int, 4>{}, xr, yr);
        break;
    }
  }
}

template <DType D>
void FewRowsDispatch(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  ForRowGroups(x, m, w, y, [&](auto rows, const float* xr, float* yr) {
    FewRowsKernel<D, decltype(rows)::value>(xr, w, yr, accumulate);
  });
}

// FP8: per weight row, each 128-column block is summed in fp32 and scaled once by its block scale.
template <int R>
void Fp8FewRowsKernel(const float* x, const Matrix& w, float* y, bool accumulate) {
  const int64_t n = w.rows, k = w.cols, scols = w.scale_cols();
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = static_cast<const uint8_t*>(w.data) + static_cast<size_t>(j) * k;
    const float* scale = w.block_scale + (j / kFp8Block) * scols;
    __m256 total[R];
    for (int r = 0; r < R; ++r) total[r] = _mm256_setzero_ps();
    float tail[R] = {};
    for (int64_t c0 = 0, cb = 0; c0 < k; c0 += kFp8Block, ++cb) {
      const int64_t c1 = std::min(k, c0 + kFp8Block);
      __m256 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
      int64_t i = c0;
      for (; i + 16 <= c1; i += 16) {
        __m256 lo, hi;
        LoadFp8x16Over256(row + i, &lo, &hi);
        for (int r = 0; r < R; ++r) {
          acc[r] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + r * k + i), acc[r]);
          acc[r] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + r * k + i + 8), acc[r]);
        }
      }
      for (; i + 8 <= c1; i += 8) {
        const __m256 wv = LoadFp8x8Over256(row + i);
        for (int r = 0; r < R; ++r)
          acc[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * k + i), acc[r]);
      }
      const __m256 s = _mm256_set1_ps(scale[cb] * kFp8Over256Fix);
      for (int r = 0; r < R; ++r) total[r] = _mm256_fmadd_ps(acc[r], s, total[r]);
      for (; i < c1; ++i) {
        const float wi = F8E4M3ToF32(row[i]) * scale[cb];
        for (int r = 0; r < R; ++r) tail[r] += wi * x[r * k + i];
      }
    }
    for (int r = 0; r < R; ++r) {
      const float s = HorizontalSum(total[r]) + tail[r];
      float& out = y[r * n + j];
      out = accumulate ? out + s : s;
    }
  }
}

void Fp8FewRowsDispatch(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  ForRowGroups(x, m, w, y, [&](auto rows, const float* xr, float* yr) {
    Fp8FewRowsKernel<decltype(rows)::value>(xr, w, yr, accumulate);
  });
}

}  // namespace

void LinearFewRows(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  switch (w.dtype) {
    case DType::kF32:
      FewRowsDispatch<DType::kF32>(x, m, w, y, accumulate);
      break;
    case DType::kBF16:
      FewRowsDispatch<DType::kBF16>(x, m, w, y, accumulate);
      break;
    case DType::kF16:
      FewRowsDispatch<DType::kF16>(x, m, w, y, accumulate);
      break;
    case DType::kF8E4M3:
      Fp8FewRowsDispatch(x, m, w, y, accumulate);
      break;
    default:
      LinearReference(x, m, w, y, accumulate);
      break;
  }
}

void DequantizeFp8Rows(const Matrix& w, int64_t row0, int64_t rows, float* out) {
  const int64_t k = w.cols, scols = w.scale_cols();
  const uint8_t* base = static_cast<const uint8_t*>(w.data);
  for (int64_t r = row0; r < row0 + rows; ++r) {
    const uint8_t* row = base + static_cast<size_t>(r) * k;
    const float* scale = w.block_scale + (r / kFp8Block) * scols;
    float* o = out + (r - row0) * k;
    for (int64_t c0 = 0, cb = 0; c0 < k; c0 += kFp8Block, ++cb) {
      const int64_t c1 = std::min(k, c0 + kFp8Block);
      // fp8 (exact in fp32) times the fp32 scale: one rounding, as torch's dequantisation.
      const __m256 s = _mm256_set1_ps(scale[cb] * kFp8Over256Fix);
      int64_t c = c0;
      for (; c + 16 <= c1; c += 16) {
        __m256 lo, hi;
        LoadFp8x16Over256(row + c, &lo, &hi);
        _mm256_storeu_ps(o + c, _mm256_mul_ps(lo, s));
        _mm256_storeu_ps(o + c + 8, _mm256_mul_ps(hi, s));
      }
      for (; c + 8 <= c1; c += 8) {
        _mm256_storeu_ps(o + c, _mm256_mul_ps(LoadFp8x8Over256(row + c), s));
      }
      for (; c < c1; ++c) o[c] = F8E4M3ToF32(row[c]) * scale[cb];
    }
  }
}

void LinearGemm(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t n = w.rows, k = w.cols;
  const float beta = accumulate ? 1.0f : 0.0f;
  if (w.dtype == DType::kF32) {
    dnnl_sgemm('N', 'T', m, n, k, 1.0f, x, k, static_cast<const float*>(w.data), k, beta, y, n);
    return;
  }
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  const size_t esize = DTypeSize(w.dtype);
#pragma omp parallel
  {
    std::vector<float> scratch(static_cast<size_t>(kTileRows * k));
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t j0 = tile * kTileRows, nb = std::min(kTileRows, n - j0);
      if (w.dtype == DType::kF8E4M3) {
        DequantizeFp8Rows(w, j0, nb, scratch.data());
      } else {
        ConvertToF32(w.dtype,
                     static_cast<const char*>(w.data) + static_cast<size_t>(j0) * k * esize,
                     scratch.data(), static_cast<size_t>(nb * k));
      }
      // Inside a parallel region oneDNN runs this call on the calling thread.
      dnnl_sgemm('N', 'T', m, nb, k, 1.0f, x, k, scratch.data(), k, beta, y + j0, n);
    }
  }
}

void Linear(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  if (m <= 0 || w.rows == 0) return;
  if (UsesBf16Compute(w)) {
    if (m <= kBf16FewRowsMax) {
      LinearFewRowsBf16(x, m, w, y, accumulate);
    } else {
      LinearGemmBf16(x, m, w, y, accumulate);
    }
    return;
  }
  if (m <= kFewRowsMax) {
    LinearFewRows(x, m, w, y, accumulate);
  } else {
    LinearGemm(x, m, w, y, accumulate);
  }
}

void LinearReference(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t n = w.rows, k = w.cols;
  std::vector<float> row(static_cast<size_t>(k));
  const size_t esize = DTypeSize(w.dtype);
  for (int64_t j = 0; j < n; ++j) {
    if (w.dtype == DType::kF8E4M3) {
      // The plain formula, independent of the vector dequantisation above.
      for (int64_t i = 0; i < k; ++i) {
        const uint8_t b = static_cast<const uint8_t*>(w.data)[j * k + i];
        row[i] = F8E4M3ToF32(b) * w.block_scale[(j / kFp8Block) * w.scale_cols() + i / kFp8Block];
      }
    } else {
      ConvertToF32(w.dtype, static_cast<const char*>(w.data) + static_cast<size_t>(j) * k * esize,
                   row.data(), static_cast<size_t>(k));
    }
    for (int64_t r = 0; r < m; ++r) {
      double s = 0;
      for (int64_t i = 0; i < k; ++i) s += static_cast<double>(x[r * k + i]) * row[i];
      float& out = y[r * n + j];
      out = accumulate ? out + static_cast<float>(s) : static_cast<float>(s);
    }
  }
}

}  // namespace nextserve::kernels::cpu
