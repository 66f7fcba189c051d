// Small helpers the benchmarks share: list flags and the streaming-read kernel their bandwidth
// baselines time.
#ifndef NEXTSERVE_BENCH_BENCH_UTIL_H_
#define NEXTSERVE_BENCH_BENCH_UTIL_H_

#include <immintrin.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace nextserve::bench {

// "1,2,4" -> {1, 2, 4}; pieces that are not positive integers are skipped.
inline std::vector<int64_t> ParsePositiveList(const std::string& list) {
  std::vector<int64_t> out;
  for (absl::string_view piece : absl::StrSplit(list, ',')) {
    int64_t v = 0;
    if (absl::SimpleAtoi(piece, &v) && v > 0) out.push_back(v);
  }
  return out;
}

// Reads `floats` values (a multiple of 64) once over all OpenMP threads, 64 at a time, and returns
// a sum of them (kept so the reads are not optimised away): the body of a streaming-read baseline.
inline float StreamSum(const float* data, int64_t floats) {
  float total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t blk = 0; blk < floats / 64; ++blk) {
    const float* p = data + blk * 64;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < 64; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(p + i));
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (float l : lanes) total += l;
  }
  return total;
}

}  // namespace nextserve::bench

#endif  // NEXTSERVE_BENCH_BENCH_UTIL_H_
