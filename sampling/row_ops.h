// Passes over one logits row, written so that the compiler vectorises them (explicit lanes, no
// early exits in the hot loops). Internal to the sampling library; sampler.cc composes them.
//
// "Order" below is always (logit descending, id ascending): the order top-k, top-p and the top
// logprobs are defined in. A "cut" is a prefix of that order.
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "base/fast_exp.h"

namespace nextserve::sampling::internal {

inline constexpr int64_t kBlock = 1024;  // tokens per partial sum (151,936 → 149 blocks)

inline int64_t NumBlocks(int64_t n) {
  return (n + kBlock - 1) / kBlock;
}

using ::nextserve::ExpNonPositive;  // base/fast_exp.h: exp(x) for x <= 0, vectorisable

struct RowMax {
  float max;          // -inf when every entry is -inf
  int64_t first_bad;  // first index holding NaN or +inf, or -1
};
RowMax MaxAndCheck(const float* x, int64_t n);

// First i with x[i] == v, or -1.
int64_t FirstEqual(const float* x, int64_t n, float v);

// e[i] = ExpNonPositive((x[i] - m) * inv_t); block_sums[b] = sum of e over block b, in a fixed
// order. Returns the sum of the block sums.
double ExpAndBlockSums(const float* x, int64_t n, float m, float inv_t, float* e,
                       double* block_sums);

// A prefix of the order: token i (logit v) is kept iff v > x or (v == x and i <= id). {-inf, -1}
// keeps every token with a finite logit; {x, n - 1} keeps every token with logit >= x.
struct Cut {
  float x;
  int64_t id;
  bool Keeps(float v, int64_t i) const { return v > x || (v == x && i <= id); }
};
inline constexpr Cut kKeepFinite = {-__builtin_inff(), -1};

// Like ExpAndBlockSums' sums, over the kept tokens only.
double CutBlockSums(const float* x, const float* e, int64_t n, Cut cut, double* block_sums);

// Inverse CDF over the kept tokens in id order: the first kept i whose running weight exceeds
// `target` (target in [0, total)). Rounding fallbacks stay on kept tokens of positive weight.
int64_t PickInCut(const float* x, const float* e, int64_t n, Cut cut, const double* block_sums,
                  double target);

// Number of kept tokens whose logit is >= v.
int64_t CountKeptAtLeast(const float* x, int64_t n, Cut cut, float v);

// Working memory of TopKWithTies, kept by callers that must not allocate per row.
struct TopKScratch {
  std::vector<int32_t> seen;
  std::vector<float> heap;
};

// Appends every i with x[i] >= the k-th largest value (ties at the k-th included) and x[i] > -inf,
// in no particular order. k >= 1. One pass with a size-k heap; blocks below the running threshold
// are skipped after a vectorised test.
void TopKWithTies(const float* x, int64_t n, int64_t k, std::vector<int32_t>* out,
                  TopKScratch* scratch);
inline void TopKWithTies(const float* x, int64_t n, int64_t k, std::vector<int32_t>* out) {
  TopKScratch scratch;
  TopKWithTies(x, n, k, out, &scratch);
}

// Total weight e and number of the tokens with x[i] >= threshold (vectorised).
struct Mass {
  double weight;
  int64_t count;
};
Mass MassAtLeast(const float* x, const float* e, int64_t n, float threshold);

// Replaces *out with every i with lo <= x[i] < hi and x[i] > -inf.
void CollectBand(const float* x, int64_t n, float lo, float hi, std::vector<int32_t>* out);

// Sorts ids into the order.
void SortInOrder(const float* x, std::span<int32_t> ids);

// Rearranges c (a prefix of the order) so that its first K entries are the shortest prefix of the
// order whose weight reaches `mass`, the K-th being its last; returns K (c.size() when all of c
// falls short). Weighted quickselect: expected O(|c|), no full sort.
size_t PrefixReaching(const float* x, const float* e, std::span<int32_t> c, double mass);

}  // namespace nextserve::sampling::internal
