#include "sampling/row_ops.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>

namespace nextserve::sampling::internal {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kLanes = 8;  // one AVX2 register of floats
// GCC/Clang vector extensions, where the compiler will not vectorise a loop by itself (it may not
// reorder a float reduction): eight float lanes, and double lanes for sums.
typedef float V8f __attribute__((vector_size(32)));
typedef int32_t V8i __attribute__((vector_size(32)));
typedef double V4d __attribute__((vector_size(32)));
constexpr int64_t kProbe = 32;  // tokens tested together before a scalar look

struct InOrder {
  const float* x;
  bool operator()(int32_t a, int32_t b) const { return x[a] > x[b] || (x[a] == x[b] && a < b); }
};

// Sum of e[lo, hi) in a fixed order: kLanes running sums, then the lanes pairwise, then the tail.
double SumRange(const float* e, int64_t lo, int64_t hi) {
  double acc[kLanes] = {};
  int64_t i = lo;
  for (; i + kLanes <= hi; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += static_cast<double>(e[i + j]);
  }
  double s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < hi; ++i) s += e[i];
  return s;
}

// Whether any of x[lo, lo + kProbe) is >= t (vectorised; no early exit).
bool AnyAtLeast(const float* x, int64_t lo, float t) {
  int any = 0;
  for (int64_t j = 0; j < kProbe; ++j) any |= x[lo + j] >= t;
  return any != 0;
}

}  // namespace

RowMax MaxAndCheck(const float* x, int64_t n) {
  V8f acc = {-kInf, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf};
  const V8f inf = {kInf, kInf, kInf, kInf, kInf, kInf, kInf, kInf};
  V8i good = {-1, -1, -1, -1, -1, -1, -1, -1};  // lanes whose values were all < +inf so far
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    V8f v;
    std::memcpy(&v, x + i, sizeof(v));
    acc = v > acc ? v : acc;
    good &= v < inf;  // false for NaN and +inf
  }
  float m = -kInf;
  bool any_bad = false;
  for (int j = 0; j < kLanes; ++j) {
    m = acc[j] > m ? acc[j] : m;
    any_bad |= good[j] == 0;
  }
  for (; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
    any_bad |= !(x[i] < kInf);
  }
  RowMax r{m, -1};
  if (any_bad) {
    for (int64_t k = 0; k < n; ++k) {
      if (!(x[k] < kInf)) {
        r.first_bad = k;
        break;
      }
    }
  }
  return r;
}

int64_t FirstEqual(const float* x, int64_t n, float v) {
  int64_t i = 0;
  for (; i + kProbe <= n; i += kProbe) {
    int any = 0;
    for (int64_t j = 0; j < kProbe; ++j) any |= x[i + j] == v;
    if (any) break;
  }
  for (; i < n; ++i) {
    if (x[i] == v) return i;
  }
  return -1;
}

double ExpAndBlockSums(const float* x, int64_t n, float m, float inv_t, float* e,
                       double* block_sums) {
  double total = 0;
  for (int64_t b = 0, lo = 0; lo < n; ++b, lo += kBlock) {
    const int64_t hi = std::min(n, lo + kBlock);
    for (int64_t i = lo; i < hi; ++i) e[i] = ExpNonPositive((x[i] - m) * inv_t);
    block_sums[b] = SumRange(e, lo, hi);
    total += block_sums[b];
  }
  return total;
}

double CutBlockSums(const float* x, const float* e, int64_t n, Cut cut, double* block_sums) {
  double total = 0;
  float kept[kBlock];
  for (int64_t b = 0, lo = 0; lo < n; ++b, lo += kBlock) {
    const int64_t hi = std::min(n, lo + kBlock);
    for (int64_t i = lo; i < hi; ++i) kept[i - lo] = cut.Keeps(x[i], i) ? e[i] : 0.0f;
    block_sums[b] = SumRange(kept, 0, hi - lo);
    total += block_sums[b];
  }
  return total;
}

int64_t PickInCut(const float* x, const float* e, int64_t n, Cut cut, const double* block_sums,
                  double target) {
  const int64_t blocks = NumBlocks(n);
  double before = 0;
  int64_t b = 0;
  int64_t last_positive_block = -1;
  for (; b < blocks; ++b) {
    if (block_sums[b] > 0) last_positive_block = b;
    if (before + block_sums[b] > target) break;
    before += block_sums[b];
  }
  if (b == blocks) b = last_positive_block;  // target rounded up to the total
  if (b < 0) return -1;                      // nothing kept has weight (callers prevent this)
  int64_t last = -1;
  double cum = before;
  for (int64_t i = b * kBlock, hi = std::min(n, i + kBlock); i < hi; ++i) {
    if (e[i] > 0 && cut.Keeps(x[i], i)) {
      cum += e[i];
      last = i;
      if (cum > target) return i;
    }
  }
  return last;  // the block's lane-order sum exceeded this sequential one by rounding
}

int64_t CountKeptAtLeast(const float* x, int64_t n, Cut cut, float v) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {  // Keeps() without short-circuits, so it vectorises
    count += (x[i] >= v) & ((x[i] > cut.x) | ((x[i] == cut.x) & (i <= cut.id)));
  }
  return count;
}

void TopKWithTies(const float* x, int64_t n, int64_t k, std::vector<int32_t>* out,
                  TopKScratch* scratch) {
  std::vector<int32_t>& seen = scratch->seen;  // every i that was >= the running threshold
  std::vector<float>& heap = scratch->heap;    // min-heap of the k largest values so far
  seen.clear();
  heap.clear();
  heap.reserve(k);
  float threshold = -kInf;  // k-th largest so far once the heap is full
  auto visit = [&](int64_t i) {
    const float v = x[i];
    if (!(v >= threshold) || v == -kInf) return;
    seen.push_back(static_cast<int32_t>(i));
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push_back(v);
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
      if (static_cast<int64_t>(heap.size()) == k) threshold = heap.front();
    } else if (v > threshold) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>());
      heap.back() = v;
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
      threshold = heap.front();
    }
  };
  int64_t i = 0;
  for (; i + kProbe <= n; i += kProbe) {
    if (!AnyAtLeast(x, i, threshold)) continue;
    for (int64_t j = i; j < i + kProbe; ++j) visit(j);
  }
  for (; i < n; ++i) visit(i);
  // The threshold only rises, so every index >= the final k-th value was seen.
  const float kth = static_cast<int64_t>(heap.size()) == k ? heap.front() : -kInf;
  for (int32_t s : seen) {
    if (x[s] >= kth) out->push_back(s);
  }
}

Mass MassAtLeast(const float* x, const float* e, int64_t n, float threshold) {
  V4d acc_lo = {}, acc_hi = {};  // lane j sums the elements i with i % 8 == j (j < 4 / j >= 4)
  V8i count = {};
  const V8f t = {threshold, threshold, threshold, threshold,
                 threshold, threshold, threshold, threshold};
  const V8f zero = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    V8f xv, ev;
    std::memcpy(&xv, x + i, sizeof(xv));
    std::memcpy(&ev, e + i, sizeof(ev));
    const V8i in = xv >= t;
    const V8f kept = in ? ev : zero;
    acc_lo += __builtin_convertvector(__builtin_shufflevector(kept, kept, 0, 1, 2, 3), V4d);
    acc_hi += __builtin_convertvector(__builtin_shufflevector(kept, kept, 4, 5, 6, 7), V4d);
    count -= in;  // true is -1
  }
  Mass m{((acc_lo[0] + acc_hi[0]) + (acc_lo[1] + acc_hi[1])) +
             ((acc_lo[2] + acc_hi[2]) + (acc_lo[3] + acc_hi[3])),
         0};
  for (int j = 0; j < kLanes; ++j) m.count += count[j];
  for (; i < n; ++i) {
    if (x[i] >= threshold) {
      m.weight += e[i];
      ++m.count;
    }
  }
  return m;
}

void CollectBand(const float* x, int64_t n, float lo, float hi, std::vector<int32_t>* out) {
  out->clear();
  if (lo == -kInf) lo = std::numeric_limits<float>::lowest();
  auto visit = [&](int64_t i) {
    if (x[i] >= lo && x[i] < hi) out->push_back(static_cast<int32_t>(i));
  };
  int64_t i = 0;
  for (; i + kProbe <= n; i += kProbe) {
    int any = 0;
    for (int64_t j = i; j < i + kProbe; ++j) any |= (x[j] >= lo) & (x[j] < hi);
    if (!any) continue;
    for (int64_t j = i; j < i + kProbe; ++j) visit(j);
  }
  for (; i < n; ++i) visit(i);
}

void SortInOrder(const float* x, std::span<int32_t> ids) {
  std::sort(ids.begin(), ids.end(), InOrder{x});
}

size_t PrefixReaching(const float* x, const float* e, std::span<int32_t> c, double mass) {
  const InOrder before{x};
  size_t lo = 0, hi = c.size();
  double acc = 0;  // weight of c[0, lo), all of which precede c[lo, hi) in the order
  // Invariant: the answer's last entry lies in c[lo, hi).
  while (hi - lo > 64) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(c.begin() + lo, c.begin() + mid, c.begin() + hi, before);
    double left = 0;
    for (size_t i = lo; i < mid; ++i) left += e[c[i]];
    if (acc + left >= mass) {
      hi = mid;
    } else {
      acc += left;
      lo = mid;
    }
  }
  std::sort(c.begin() + lo, c.begin() + hi, before);
  for (size_t i = lo; i < hi; ++i) {
    acc += e[c[i]];
    if (acc >= mass) return i + 1;
  }
  return hi;  // all of c falls short, or summation order moved the boundary by rounding
}

}  // namespace nextserve::sampling::internal
