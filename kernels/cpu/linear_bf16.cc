// bf16 compute for bf16 and FP8 weights: the activation rows are rounded to bf16 once, then
// multiplied by AVX512-BF16 dot products (vdpbf16ps) with fp32 accumulation on the stored [n, k]
// weights (FP8 widened to bf16 on the way). Few rows (decode): the weights are streamed once for up
// to 8 rows. Many rows: 64-row weight panels stay in L2 while 4 x 4 tiles pass over them. Every
// path computes each output the same way (see RowsTimesWeightPair), so results do not depend on
// the batch.
// The AVX-512 code is compiled per function (target attributes) and only called after the run-time
// check, so the library still runs on AVX2-only machines, where bf16 compute falls back to fp32.
// GCC 12's _mm512_reduce_add_ps starts from _mm256_undefined_pd, which -Wmaybe-uninitialized
// (and -Wuninitialized) reports at every use (a false positive, fixed in later GCC).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "dnnl.hpp"
#include "kernels/cpu/cpu_ops.h"

#define NEXTSERVE_TARGET_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace nextserve::kernels::cpu {
namespace {

std::atomic<Compute> g_linear_compute{Compute::kF32};

bool DetectBf16Dot() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq")) {
    return false;
  }
  // oneDNN's view as well: it honours DNNL_MAX_CPU_ISA, so `DNNL_MAX_CPU_ISA=AVX2` makes this
  // machine behave as an AVX2-only one for both bf16 paths (how the fallback is tested).
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;
}

// Round to nearest even, as F32ToBf16 (vcvtneps2bf16 also flushes fp32 subnormals to zero).
NEXTSERVE_TARGET_AVX512_BF16 void RoundToBf16(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), reinterpret_cast<const __m256i&>(h));
  }
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
    _mm256_mask_storeu_epi16(out + i, mask, reinterpret_cast<const __m256i&>(h));
  }
}

void RoundRowsToBf16(const float* x, int64_t m, int64_t k, uint16_t* out) {
  if (!WorthThreads(m * k, int64_t{1} << 16)) {  // parallel only when it pays (prefill)
    for (int64_t r = 0; r < m; ++r) RoundToBf16(x + r * k, k, out + r * k);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) RoundToBf16(x + r * k, k, out + r * k);
}

// Per-thread bf16 buffers reused across calls: the current call's rounded activations, and the
// widened FP8 panel of the GEMM task at hand.
enum class Scratch { kActivations, kFp8Panel };
uint16_t* ThreadScratch(Scratch which, size_t n) {
  thread_local std::vector<uint16_t> buffers[2];
  std::vector<uint16_t>& b = buffers[static_cast<int>(which)];
  if (b.size() < n) b.resize(n);
  return b.data();
}

NEXTSERVE_TARGET_AVX512_BF16 inline __m512bh LoadBf16x32(const void* p) {
  const __m512i v = _mm512_loadu_si512(p);
  return reinterpret_cast<const __m512bh&>(v);
}
NEXTSERVE_TARGET_AVX512_BF16 inline __m512bh LoadBf16x32(__mmask32 mask, const void* p) {
  const __m512i v = _mm512_maskz_loadu_epi16(mask, p);
  return reinterpret_cast<const __m512bh&>(v);
}

// 32 FP8 (E4M3) weights times their block scale, rounded to bf16: the fp32 products are
// DequantizeFp8Rows' bit for bit (each byte becomes an fp16 pattern worth 2^-8 of its value:
// sign-extend, shift left 7, clear the sign copy; the 2^8 is folded into the scale), then rounded
// to nearest even as RoundToBf16. Masked-off bytes are zeros.
constexpr short kFp8ToF16Mask = static_cast<short>(0xBF80);
NEXTSERVE_TARGET_AVX512_BF16 inline __m512bh LoadFp8AsBf16x32(const char* p, float scale,
                                                              __mmask32 mask) {
  // Masked loads cost more than plain ones: only the k tail takes one.
  const __m256i bytes = mask == ~__mmask32{0}
                            ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                            : _mm256_maskz_loadu_epi8(mask, p);
  const __m512i h = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(bytes), 7),
                                     _mm512_set1_epi16(kFp8ToF16Mask));
  const __m512 s = _mm512_set1_ps(scale * 256.0f);
  const __m512 lo = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), s);
  const __m512 hi = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), s);
  return _mm512_cvtne2ps_pbh(hi, lo);  // lanes 0-15 from lo
}

// One 32-element chunk of a weight row at element i: bf16 as stored, or FP8 widened as above
// (`scales`: the row's block-scale row, one per 128 columns).
template <bool kFp8>
NEXTSERVE_TARGET_AVX512_BF16 inline __m512bh WeightChunk(const char* row, int64_t i,
                                                         const float* scales, __mmask32 mask) {
  if constexpr (kFp8) {
    return LoadFp8AsBf16x32(row + i, scales[i / kFp8Block], mask);
  } else {
    return mask == ~__mmask32{0} ? LoadBf16x32(row + 2 * i) : LoadBf16x32(mask, row + 2 * i);
  }
}

// The lane sums of 16 accumulators at once: lane i of the result is a[i]'s lanes added in exactly
// the order _mm512_reduce_add_ps adds them (GCC: halves, then quarters, then lanes (0,2) and (1,3),
// then those two), so an output reduced with 15 others has the bits it has reduced alone. The
// levels: 1) for slot pairs, lanes i + i+8 (two slots per vector); 2) + i+4 (four per vector);
// 3) (0,2) and (1,3) within each quarter; 4) the last pair. Level 4 leaves slot 4u+t in lane 4t+u,
// so the slots are fed transposed to come out in order.
NEXTSERVE_TARGET_AVX512_BF16 inline __m512 ReduceAdd16(const __m512* a) {
  __m512 l1[8], l2[4], l3[2];
  // Fully unrolled so that the accumulators stay in registers (no variable index into them).
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p) {
    const int s0 = 2 * p, s1 = 2 * p + 1;  // slot s holds a[4 (s % 4) + s / 4]
    const __m512 lo = a[4 * (s0 % 4) + s0 / 4], hi = a[4 * (s1 % 4) + s1 / 4];
    l1[p] = _mm512_add_ps(_mm512_shuffle_f32x4(lo, hi, 0x44), _mm512_shuffle_f32x4(lo, hi, 0xEE));
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m512 lo = l1[2 * q], hi = l1[2 * q + 1];
    l2[q] = _mm512_add_ps(_mm512_shuffle_f32x4(lo, hi, 0x88), _mm512_shuffle_f32x4(lo, hi, 0xDD));
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    const __m512d lo = _mm512_castps_pd(l2[2 * h]), hi = _mm512_castps_pd(l2[2 * h + 1]);
    l3[h] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi)),
                          _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Every output of bf16 compute is computed the same way, whatever the call's row count, the row's
// place in it, the tiling or the thread count: a 16-lane fp32 accumulator takes vdpbf16ps of the
// row's and the weight row's 32-element chunks in k order (the k tail masked to zeros), its lanes
// are added in _mm512_reduce_add_ps's order, and the sum is stored or added to y once. So a
// request's logits do not depend on what else is in the batch (batch invariance).
//
// R rows of x (row stride k) against weight rows w0 and w1 (w1 only if `two`), into y[r * n] and
// y[r * n + 1]: each x vector loaded feeds two dot products; R <= 8 keeps the 2R accumulators in
// registers, and at R = 8 they are exactly the 16 that ReduceAdd16 takes.
// `prefetch` (or null): the next pair's first row, fetched line by line meanwhile so that a thread
// streaming small matrices (the experts at decode) does not wait on memory at each pair.
// FP8 weights (kFp8) are widened to bf16 chunk by chunk with `scales` (both rows are in one
// 128-row block row, as the pair starts at an even row).
template <int R, bool kFp8>
NEXTSERVE_TARGET_AVX512_BF16 inline void RowsTimesWeightPair(const uint16_t* xb, int64_t k,
                                                             const char* w0, const char* w1,
                                                             const float* scales, bool two,
                                                             float* y, int64_t n, bool accumulate,
                                                             const char* prefetch) {
  const int64_t k32 = k & ~int64_t{31};
  const __mmask32 tail = static_cast<__mmask32>((uint64_t{1} << (k - k32)) - 1);
  __m512 acc[2 * R];
  for (int i = 0; i < 2 * R; ++i) acc[i] = _mm512_setzero_ps();
  constexpr int64_t kElementBytes = kFp8 ? 1 : 2;
  const size_t row_bytes = static_cast<size_t>(k) * kElementBytes;
  constexpr __mmask32 kAll = ~__mmask32{0};
  for (int64_t i = 0; i < k32; i += 32) {
    if (prefetch && (!kFp8 || i % 64 == 0)) {  // a line: 32 bf16 or 64 FP8 elements
      _mm_prefetch(prefetch + kElementBytes * i, _MM_HINT_T0);
      _mm_prefetch(prefetch + row_bytes + kElementBytes * i, _MM_HINT_T0);
    }
    const __m512bh a = WeightChunk<kFp8>(w0, i, scales, kAll),
                   b = WeightChunk<kFp8>(w1, i, scales, kAll);
    for (int r = 0; r < R; ++r) {
      const __m512bh xv = LoadBf16x32(xb + r * k + i);
      acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], xv, a);
      acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], xv, b);
    }
  }
  if (tail) {
    const __m512bh a = WeightChunk<kFp8>(w0, k32, scales, tail),
                   b = WeightChunk<kFp8>(w1, k32, scales, tail);
    for (int r = 0; r < R; ++r) {
      const __m512bh xv = LoadBf16x32(tail, xb + r * k + k32);
      acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], xv, a);
      acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], xv, b);
    }
  }
  float sums[2 * R];
  if constexpr (R == 8) {
    _mm512_storeu_ps(sums, ReduceAdd16(acc));
  } else {
    for (int i = 0; i < 2 * R; ++i) sums[i] = _mm512_reduce_add_ps(acc[i]);
  }
  for (int r = 0; r < R; ++r) {
    float* out = y + r * n;
    out[0] = accumulate ? out[0] + sums[2 * r] : sums[2 * r];
    if (two) out[1] = accumulate ? out[1] + sums[2 * r + 1] : sums[2 * r + 1];
  }
}

// R rows against weight rows [j0, j1), two at a time, into y (row stride ldy; column j at y + j).
template <int R, bool kFp8>
NEXTSERVE_TARGET_AVX512_BF16 void RowsTimesWeightRange(const uint16_t* xb, const Matrix& w,
                                                       int64_t j0, int64_t j1, float* y,
                                                       int64_t ldy, bool accumulate,
                                                       bool prefetch_next) {
  const int64_t n = w.rows, k = w.cols;
  const size_t row_bytes = static_cast<size_t>(k) * (kFp8 ? 1 : 2);
  const char* base = static_cast<const char*>(w.data);
  for (int64_t j = j0; j < j1; j += 2) {
    const bool two = j + 1 < j1;
    const char* wj = base + static_cast<size_t>(j) * row_bytes;
    const float* scales = kFp8 ? w.block_scale + (j / kFp8Block) * w.scale_cols() : nullptr;
    // The pair 4 KiB ahead (at least the next one; at k = 256, 8 rows ahead), when it is a whole
    // pair of this matrix: one pair ahead is too short a distance for the experts' small rows.
    const int64_t ahead = std::max<int64_t>(2, 2 * (4096 / static_cast<int64_t>(2 * row_bytes)));
    const char* next = prefetch_next && j + ahead + 1 < n ? wj + ahead * row_bytes : nullptr;
    RowsTimesWeightPair<R, kFp8>(xb, k, wj, two ? wj + row_bytes : wj, scales, two, y + j, ldy,
                                 accumulate, next);
  }
}

// The same for `rows` <= 8 rows, through the kernel compiled for that row count and weight dtype.
template <bool kFp8>
void RowsTimesWeightRowsOf(const uint16_t* xb, int64_t rows, const Matrix& w, int64_t j0,
                           int64_t j1, float* y, int64_t ldy, bool accumulate, bool prefetch_next) {
  switch (rows) {
    case 1:
      return RowsTimesWeightRange<1, kFp8>(xb, w, j0, j1, y, ldy, accumulate, prefetch_next);
    case 2:
      return RowsTimesWeightRange<2, kFp8>(xb, w, j0, j1, y, ldy, accumulate, prefetch_next);
    case 3:
      return RowsTimesWeightRange<3, kFp8>(xb, w, j0, j1, y, ldy, accumulate, prefetch_next);
    case 4:
      return RowsTimesWeightRange<4, kFp8>(xb, w, j0, j1, y, ldy, accumulate, prefetch_next);
    case 5:
      return RowsTimesWeightRange<5, kFp8>(xb, w, j0, j1, y, ldy, accumulate, prefetch_next);
    case 6:
      return RowsTimesWeightRange<6, kFp8>(xb, w, j0, j1, y, ldy, accumulate, prefetch_next);
    case 7:
      return RowsTimesWeightRange<7, kFp8>(xb, w, j0, j1, y, ldy, accumulate, prefetch_next);
    default:
      return RowsTimesWeightRange<8, kFp8>(xb, w, j0, j1, y, ldy, accumulate, prefetch_next);
  }
}
void RowsTimesWeightRows(const uint16_t* xb, int64_t rows, const Matrix& w, int64_t j0, int64_t j1,
                         float* y, int64_t ldy, bool accumulate, bool prefetch_next) {
  if (w.dtype == DType::kF8E4M3) {
    RowsTimesWeightRowsOf<true>(xb, rows, w, j0, j1, y, ldy, accumulate, prefetch_next);
  } else {
    RowsTimesWeightRowsOf<false>(xb, rows, w, j0, j1, y, ldy, accumulate, prefetch_next);
  }
}

// 4 rows against 4 weight rows (w, row stride row_bytes) into y[r * n + c] for r < rows (rows past
// m are zero padding, computed and dropped): 16 accumulators, 8 loads per 16 dot products, and
// ReduceAdd16 leaves each row's 4 outputs side by side.
NEXTSERVE_TARGET_AVX512_BF16 inline void Tile4x4(const uint16_t* xb, int64_t k, const char* w,
                                                 size_t row_bytes, float* y, int64_t n,
                                                 bool accumulate, int rows) {
  const char* w1 = w + row_bytes;
  const char* w2 = w1 + row_bytes;
  const char* w3 = w2 + row_bytes;
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t k32 = k & ~int64_t{31};
#pragma GCC unroll 2
  for (int64_t i = 0; i < k32; i += 32) {
    const __m512bh a0 = LoadBf16x32(w + 2 * i), a1 = LoadBf16x32(w1 + 2 * i),
                   a2 = LoadBf16x32(w2 + 2 * i), a3 = LoadBf16x32(w3 + 2 * i);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m512bh xv = LoadBf16x32(xb + r * k + i);
      acc[4 * r] = _mm512_dpbf16_ps(acc[4 * r], xv, a0);
      acc[4 * r + 1] = _mm512_dpbf16_ps(acc[4 * r + 1], xv, a1);
      acc[4 * r + 2] = _mm512_dpbf16_ps(acc[4 * r + 2], xv, a2);
      acc[4 * r + 3] = _mm512_dpbf16_ps(acc[4 * r + 3], xv, a3);
    }
  }
  if (k32 < k) {  // the tail: zeros past k
    const __mmask32 tail = static_cast<__mmask32>((uint64_t{1} << (k - k32)) - 1);
    const __m512bh a0 = LoadBf16x32(tail, w + 2 * k32), a1 = LoadBf16x32(tail, w1 + 2 * k32),
                   a2 = LoadBf16x32(tail, w2 + 2 * k32), a3 = LoadBf16x32(tail, w3 + 2 * k32);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m512bh xv = LoadBf16x32(tail, xb + r * k + k32);
      acc[4 * r] = _mm512_dpbf16_ps(acc[4 * r], xv, a0);
      acc[4 * r + 1] = _mm512_dpbf16_ps(acc[4 * r + 1], xv, a1);
      acc[4 * r + 2] = _mm512_dpbf16_ps(acc[4 * r + 2], xv, a2);
      acc[4 * r + 3] = _mm512_dpbf16_ps(acc[4 * r + 3], xv, a3);
    }
  }
  const __m512 sums = ReduceAdd16(acc);
  const __m128 row[4] = {_mm512_castps512_ps128(sums), _mm512_extractf32x4_ps(sums, 1),
                         _mm512_extractf32x4_ps(sums, 2), _mm512_extractf32x4_ps(sums, 3)};
  for (int r = 0; r < rows; ++r) {
    float* out = y + r * n;
    _mm_storeu_ps(out, accumulate ? _mm_add_ps(_mm_loadu_ps(out), row[r]) : row[r]);
  }
}

constexpr int64_t kRowGroup = 8;    // rows per pass of the few-rows kernel (16 accumulators)
constexpr int64_t kPanelRows = 64;  // weight rows kept in L2 while every row group passes
constexpr int64_t kRowBlock = 128;  // rows per GEMM task

// m <= 8: the weights are read once; weight pairs are split over the threads.
void FewRowsOnRounded(const uint16_t* xb, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t pairs = (w.rows + 1) / 2;
  if (!WorthThreads(pairs, 2)) {
    RowsTimesWeightRows(xb, m, w, 0, w.rows, y, w.rows, accumulate, /*prefetch_next=*/true);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < pairs; ++p) {
    RowsTimesWeightRows(xb, m, w, 2 * p, std::min(w.rows, 2 * p + 2), y, w.rows, accumulate,
                        /*prefetch_next=*/true);
  }
}

// Spreads prefetches of [begin, end) into L2 over `steps` calls of Next().
class SpreadPrefetch {
 public:
  SpreadPrefetch(const char* begin, const char* end, int64_t steps)
      : at_(begin), end_(end), per_step_((end - begin + steps - 1) / std::max<int64_t>(1, steps)) {}
  void Next() {
    const char* stop = std::min(end_, at_ + per_step_);
    for (; at_ < stop; at_ += 64) _mm_prefetch(at_, _MM_HINT_T1);
  }

 private:
  const char* at_;
  const char* end_;
  int64_t per_step_;
};

// Rows [0, m) against weight rows [j0, j1) of bf16 weights in 4 x 4 tiles, into y (row stride
// ldy; column j at y + j); xb holds m rounded up to 4 rows (the padding zeros). Weight rows past
// the last multiple of 4 go through the pair kernel. `next` (the weights of this thread's next
// task) is prefetched meanwhile, so that a panel's first pass does not wait on memory.
NEXTSERVE_TARGET_AVX512_BF16 void PanelOnRounded(const uint16_t* xb, int64_t m, const Matrix& w,
                                                 int64_t j0, int64_t j1, float* y, int64_t ldy,
                                                 bool accumulate, SpreadPrefetch next) {
  const int64_t k = w.cols;
  const size_t row_bytes = static_cast<size_t>(k) * 2;
  const char* base = static_cast<const char*>(w.data);
  const int64_t j4 = j0 + (j1 - j0) / 4 * 4;
  for (int64_t r0 = 0; r0 < m; r0 += 4) {
    const uint16_t* xr = xb + r0 * k;
    float* yr = y + r0 * ldy;
    const int rows = static_cast<int>(std::min<int64_t>(4, m - r0));
    for (int64_t j = j0; j < j4; j += 4) {
      Tile4x4(xr, k, base + static_cast<size_t>(j) * row_bytes, row_bytes, yr + j, ldy, accumulate,
              rows);
      next.Next();
    }
    if (j4 < j1) RowsTimesWeightRows(xr, rows, w, j4, j1, yr, ldy, accumulate, false);
  }
}

// FP8 weight rows [row0, row0 + rows) as the bf16 values the few-rows kernel forms on the fly.
NEXTSERVE_TARGET_AVX512_BF16 void DequantizeFp8RowsToBf16(const Matrix& w, int64_t row0,
                                                          int64_t rows, uint16_t* out) {
  const int64_t k = w.cols;
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = static_cast<const char*>(w.data) + static_cast<size_t>(row0 + r) * k;
    const float* scales = w.block_scale + ((row0 + r) / kFp8Block) * w.scale_cols();
    uint16_t* o = out + r * k;
    for (int64_t i = 0; i < k; i += 32) {
      const __mmask32 mask =
          k - i >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint64_t{1} << (k - i)) - 1);
      const __m512bh v = WeightChunk<true>(row, i, scales, mask);
      _mm512_mask_storeu_epi16(o + i, mask, reinterpret_cast<const __m512i&>(v));
    }
  }
}

// m > 8: tasks of (128 rows, 64 weight rows): at k = 1024 the rows' 256 KiB and the panel's 128 KiB
// stay in L2 while every group of 4 rows passes over the panel; the weights come from memory once
// per 128 rows, prefetched during the task before. Tasks go round-robin over the threads (they
// cost the same), so each thread knows its next one. FP8 panels are widened to bf16 first (the
// values the few-rows kernel uses), once per call, 64 rows at a time: there is never a bf16 copy
// of the matrix.
void GemmOnRounded(const uint16_t* xb, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t n = w.rows, k = w.cols;
  const bool fp8 = w.dtype == DType::kF8E4M3;
  // An FP8 task takes every row of its panel, so that each panel is widened once per call.
  const int64_t row_block = fp8 ? m : kRowBlock;
  const int64_t panels = (n + kPanelRows - 1) / kPanelRows;
  const int64_t blocks = (m + row_block - 1) / row_block;
  const int64_t tasks = panels * blocks;
  const char* base = static_cast<const char*>(w.data);
  const size_t row_bytes = static_cast<size_t>(k) * (fp8 ? 1 : 2);
#pragma omp parallel if (WorthThreads(tasks, 2))
  {
    const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
    for (int64_t t = me; t < tasks; t += threads) {
      const int64_t r0 = t / panels * row_block, j0 = t % panels * kPanelRows;
      const int64_t rows = std::min(row_block, m - r0), j1 = std::min(n, j0 + kPanelRows);
      const int64_t next_j0 = (t + threads) % panels * kPanelRows;
      const int64_t next_j1 = t + threads < tasks ? std::min(n, next_j0 + kPanelRows) : next_j0;
      const SpreadPrefetch next(base + next_j0 * row_bytes, base + next_j1 * row_bytes,
                                rows / 4 * ((j1 - j0) / 4));
      if (fp8) {
        uint16_t* panel = ThreadScratch(Scratch::kFp8Panel, static_cast<size_t>(kPanelRows * k));
        DequantizeFp8RowsToBf16(w, j0, j1 - j0, panel);
        const Matrix view{DType::kBF16, panel, j1 - j0, k};
        PanelOnRounded(xb + r0 * k, rows, view, 0, j1 - j0, y + r0 * n + j0, n, accumulate, next);
      } else {
        PanelOnRounded(xb + r0 * k, rows, w, j0, j1, y + r0 * n, n, accumulate, next);
      }
    }
  }
}

}  // namespace

void SetLinearCompute(Compute compute) {
  g_linear_compute.store(compute, std::memory_order_relaxed);
}
Compute LinearCompute() {
  return g_linear_compute.load(std::memory_order_relaxed);
}
bool CpuHasBf16Dot() {
  static const bool has = DetectBf16Dot();
  return has;
}
bool UsesBf16Compute(const Matrix& w) {
  const bool weights = w.dtype == DType::kBF16 || (w.dtype == DType::kF8E4M3 && w.block_scale);
  return weights && LinearCompute() == Compute::kBF16 && CpuHasBf16Dot();
}

void LinearFewRowsBf16(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t k = w.cols;
  uint16_t* xb = ThreadScratch(Scratch::kActivations, static_cast<size_t>(m * k));
  RoundRowsToBf16(x, m, k, xb);
  // Passes of 8 rows (callers send m <= 8; this keeps any m correct).
  for (int64_t r0 = 0; r0 < m; r0 += kRowGroup) {
    FewRowsOnRounded(xb + r0 * k, std::min(kRowGroup, m - r0), w, y + r0 * w.rows, accumulate);
  }
}

void LinearGemmBf16(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t k = w.cols, padded = (m + 3) / 4 * 4;  // the tiles' 4 rows
  uint16_t* xb = ThreadScratch(Scratch::kActivations, static_cast<size_t>(padded * k));
  RoundRowsToBf16(x, m, k, xb);
  std::fill(xb + m * k, xb + padded * k, uint16_t{0});
  GemmOnRounded(xb, m, w, y, accumulate);
}

}  // namespace nextserve::kernels::cpu
