// y = x · Wᵀ on the CPU. Few rows (decode): an AVX2 kernel streaming W once in its stored dtype.
// Many rows (prefill, experts): oneDNN sgemm; bf16/fp16 weights are widened tile by tile into a
// per-thread scratch so that the stored dtype stays the only copy in memory.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "dnnl.h"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve::kernels::cpu {
namespace {

constexpr int64_t kFewRowsMax = 8;  // up to here the weight-streaming kernel wins (bench/)
constexpr int64_t kTileRows = 128;  // weight rows widened at a time on the GEMM path

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

template <DType D>
void FewRowsDispatch(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t k = w.cols, n = w.rows;
  for (int64_t r0 = 0; r0 < m; r0 += 4) {
    const int64_t rows = std::min<int64_t>(4, m - r0);
    const float* xr = x + r0 * k;
    float* yr = y + r0 * n;
    switch (rows) {
      case 1:
        FewRowsKernel<D, 1>(xr, w, yr, accumulate);
        break;
      case 2:
        FewRowsKernel<D, 2>(xr, w, yr, accumulate);
        break;
      case 3:
        FewRowsKernel<D, 3>(xr, w, yr, accumulate);
        break;
      default:
        FewRowsKernel<D, 4>(xr, w, yr, accumulate);
        break;
    }
  }
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
    default:
      LinearReference(x, m, w, y, accumulate);
      break;
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
      ConvertToF32(w.dtype, static_cast<const char*>(w.data) + static_cast<size_t>(j0) * k * esize,
                   scratch.data(), static_cast<size_t>(nb * k));
      // Inside a parallel region oneDNN runs this call on the calling thread.
      dnnl_sgemm('N', 'T', m, nb, k, 1.0f, x, k, scratch.data(), k, beta, y + j0, n);
    }
  }
}

void Linear(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  if (m <= 0 || w.rows == 0) return;
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
    ConvertToF32(w.dtype, static_cast<const char*>(w.data) + static_cast<size_t>(j) * k * esize,
                 row.data(), static_cast<size_t>(k));
    for (int64_t r = 0; r < m; ++r) {
      double s = 0;
      for (int64_t i = 0; i < k; ++i) s += static_cast<double>(x[r * k + i]) * row[i];
      float& out = y[r * n + j];
      out = accumulate ? out + static_cast<float>(s) : static_cast<float>(s);
    }
  }
}

}  // namespace nextserve::kernels::cpu
