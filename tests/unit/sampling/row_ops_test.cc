// The row passes against naive versions, on random rows with ties and adversarial orders.
#include "sampling/row_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "gtest/gtest.h"

namespace nextserve::sampling::internal {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

bool InOrder(const std::vector<float>& x, int32_t a, int32_t b) {
  return x[a] > x[b] || (x[a] == x[b] && a < b);
}

std::vector<int32_t> NaiveOrder(const std::vector<float>& x) {
  std::vector<int32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return InOrder(x, a, b); });
  return order;
}

// Rows of several kinds: continuous, heavily tied (few distinct values), sorted ascending (the
// heap's worst case), with -inf entries.
std::vector<float> MakeRow(int kind, int64_t n, std::mt19937& rng) {
  std::vector<float> x(n);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<int> level(0, 5);
  for (int64_t i = 0; i < n; ++i) {
    switch (kind) {
      case 0:
        x[i] = normal(rng);
        break;
      case 1:
        x[i] = static_cast<float>(level(rng));
        break;
      case 2:
        x[i] = static_cast<float>(i) * 0.01f;
        break;
      default:
        x[i] = (i % 3 == 0) ? -kInf : normal(rng);
        break;
    }
  }
  return x;
}

TEST(RowOpsTest, ExpNonPositiveMatchesStdExp) {
  EXPECT_EQ(ExpNonPositive(0.0f), 1.0f);
  EXPECT_EQ(ExpNonPositive(-kInf), 0.0f);
  EXPECT_EQ(ExpNonPositive(-88.0f), 0.0f);
  double worst = 0;
  for (float x = -87.0f; x <= 0.0f; x += 0.000731f) {
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(ExpNonPositive(x) - want) / want);
  }
  EXPECT_LT(worst, 4e-7);  // a few float ulps
}

TEST(RowOpsTest, MaxAndCheckFindsMaxAndFirstBadValue) {
  std::vector<float> x(1000, -1.0f);
  x[777] = 5.0f;
  RowMax r = MaxAndCheck(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(r.max, 5.0f);
  EXPECT_EQ(r.first_bad, -1);
  x[3] = -kInf;  // allowed
  x[998] = std::numeric_limits<float>::quiet_NaN();
  x[999] = kInf;
  r = MaxAndCheck(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(r.first_bad, 998);  // max is meaningless then
  std::vector<float> masked(13, -kInf);
  EXPECT_EQ(MaxAndCheck(masked.data(), 13).max, -kInf);
}

TEST(RowOpsTest, FirstEqual) {
  std::vector<float> x(300, 0.0f);
  EXPECT_EQ(FirstEqual(x.data(), 300, 1.0f), -1);
  x[299] = 1.0f;
  EXPECT_EQ(FirstEqual(x.data(), 300, 1.0f), 299);
  x[40] = 1.0f;
  x[41] = 1.0f;
  EXPECT_EQ(FirstEqual(x.data(), 300, 1.0f), 40);
}

TEST(RowOpsTest, TopKWithTiesMatchesNaive) {
  std::mt19937 rng(7);
  for (int kind = 0; kind < 4; ++kind) {
    for (int64_t n : {1, 5, 31, 32, 33, 1000, 5003}) {
      const std::vector<float> x = MakeRow(kind, n, rng);
      const std::vector<int32_t> order = NaiveOrder(x);
      for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{20}, n - 1, n, n + 5}) {
        if (k < 1) continue;
        std::vector<int32_t> got;
        TopKWithTies(x.data(), n, k, &got);
        std::sort(got.begin(), got.end());
        // Naive: every finite token >= the k-th largest value (all finite ones if fewer).
        const float kth = k <= n ? x[order[k - 1]] : -kInf;
        std::vector<int32_t> want;
        for (int32_t i = 0; i < n; ++i) {
          if (x[i] > -kInf && x[i] >= kth) want.push_back(i);
        }
        EXPECT_EQ(got, want) << "kind " << kind << " n " << n << " k " << k;
      }
    }
  }
}

TEST(RowOpsTest, PrefixReachingMatchesSortedScan) {
  std::mt19937 rng(11);
  for (int kind = 0; kind < 4; ++kind) {
    for (int64_t n : {1, 7, 64, 65, 500, 20000}) {
      const std::vector<float> x = MakeRow(kind, n, rng);
      std::vector<float> e(n);
      for (int64_t i = 0; i < n; ++i) e[i] = x[i] == -kInf ? 0.0f : std::exp(x[i] / 10.0f);
      const std::vector<int32_t> order = NaiveOrder(x);
      const double total = std::accumulate(e.begin(), e.end(), 0.0);
      for (double frac : {0.0001, 0.3, 0.5, 0.9, 0.999, 1.5}) {
        const double mass = frac * total;
        size_t want = order.size();
        double cum = 0;
        for (size_t j = 0; j < order.size(); ++j) {
          cum += e[order[j]];
          if (cum >= mass) {
            want = j + 1;
            break;
          }
        }
        std::vector<int32_t> c(order.rbegin(), order.rend());  // worst-case input order
        const size_t got = PrefixReaching(x.data(), e.data(), c, mass);
        // Random real weights: no sum lands within rounding of the boundary, so exact.
        ASSERT_EQ(got, want) << "kind " << kind << " n " << n << " frac " << frac;
        std::vector<int32_t> kept(c.begin(), c.begin() + got);
        std::sort(kept.begin(), kept.end(), [&](int32_t a, int32_t b) { return InOrder(x, a, b); });
        EXPECT_TRUE(std::equal(kept.begin(), kept.end(), order.begin()));
        EXPECT_EQ(c[got - 1], order[got - 1]);  // the K-th entry is the last of the prefix
      }
    }
  }
}

TEST(RowOpsTest, MassAtLeastAndCollectBand) {
  std::mt19937 rng(5);
  for (int kind = 0; kind < 4; ++kind) {
    const int64_t n = 4101;
    const std::vector<float> x = MakeRow(kind, n, rng);
    std::vector<float> e(n);
    for (int64_t i = 0; i < n; ++i) e[i] = x[i] == -kInf ? 0.0f : std::exp(x[i] / 20.0f);
    for (float t : {-kInf, -1.0f, 0.0f, 0.5f, 2.0f, 100.0f}) {
      double weight = 0;
      int64_t count = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (x[i] >= t) {
          weight += e[i];
          ++count;
        }
      }
      const Mass m = MassAtLeast(x.data(), e.data(), n, t);
      EXPECT_EQ(m.count, count) << kind << " " << t;
      EXPECT_NEAR(m.weight, weight, 1e-9 * weight) << kind << " " << t;
    }
    for (auto [lo, hi] : {std::pair{-kInf, 0.0f}, {0.0f, 1.0f}, {1.0f, kInf}, {-kInf, kInf}}) {
      std::vector<int32_t> got = {42};  // replaced, not appended to
      CollectBand(x.data(), n, lo, hi, &got);
      std::vector<int32_t> want;
      for (int32_t i = 0; i < n; ++i) {
        if (x[i] > -kInf && x[i] >= lo && x[i] < hi) want.push_back(i);
      }
      EXPECT_EQ(got, want) << kind << " [" << lo << ", " << hi << ")";
    }
  }
}

TEST(RowOpsTest, CutSumsAndPick) {
  std::mt19937 rng(3);
  const int64_t n = 5000;  // five blocks, the last partial
  std::vector<float> x = MakeRow(3, n, rng);
  std::vector<float> e(n);
  std::vector<double> blocks(NumBlocks(n));
  const float m = *std::max_element(x.begin(), x.end());
  const double z = ExpAndBlockSums(x.data(), n, m, 0.5f, e.data(), blocks.data());
  double naive = 0;
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(e[i], x[i] == -kInf ? 0.0 : std::exp((x[i] - m) * 0.5), 1e-6) << i;
    naive += e[i];
  }
  EXPECT_NEAR(z, naive, 1e-9 * naive);

  const std::vector<int32_t> order = NaiveOrder(x);
  const int32_t b = order[700];
  const Cut cut{x[b], b};
  const double kept_total = CutBlockSums(x.data(), e.data(), n, cut, blocks.data());
  double want_total = 0;
  for (int j = 0; j <= 700; ++j) want_total += e[order[j]];
  EXPECT_NEAR(kept_total, want_total, 1e-9 * want_total);
  EXPECT_EQ(CountKeptAtLeast(x.data(), n, cut, x[order[10]]), 11);

  // Inverse CDF in id order: the pick for target t is the first kept id whose running sum
  // exceeds t; never a token outside the cut.
  std::vector<int64_t> kept_ids;
  for (int64_t i = 0; i < n; ++i) {
    if (cut.Keeps(x[i], i)) kept_ids.push_back(i);
  }
  for (double u : {0.0, 1e-9, 0.25, 0.5, 0.75, 0.999999, 1.0}) {
    const double target = u * kept_total;
    const int64_t got = PickInCut(x.data(), e.data(), n, cut, blocks.data(), target);
    ASSERT_TRUE(cut.Keeps(x[got], got));
    double cum = 0;
    int64_t want = kept_ids.back();
    for (int64_t i : kept_ids) {
      cum += e[i];
      if (cum > target) {
        want = i;
        break;
      }
    }
    if (u < 1.0) {
      EXPECT_EQ(got, want) << u;
    }
  }
}

}  // namespace
}  // namespace nextserve::sampling::internal
