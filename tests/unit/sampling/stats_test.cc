// Statistical tests: draws from Sampler::Sample against the intended distribution (chi-square
// goodness of fit at alpha = 1e-6, fixed seeds), and tokens outside the kept set never drawn.
#include <cmath>
#include <limits>
#include <random>

#include "gtest/gtest.h"
#include "sampling/reference.h"
#include "sampling/sampler.h"
#include "tests/unit/sampling/chi_square.h"

namespace nextserve::sampling {
namespace {

using testing::ChiSquare;
using testing::ChiSquareCritical1e6;
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<int64_t> Histogram(SamplingParams p, const std::vector<float>& row, int64_t draws) {
  const int64_t n = static_cast<int64_t>(row.size());
  absl::StatusOr<Sampler> s = Sampler::Create(p, n, {});
  EXPECT_TRUE(s.ok()) << s.status();
  std::vector<int64_t> counts(n, 0);
  for (int64_t i = 0; i < draws; ++i) {
    absl::StatusOr<SampleResult> r = s->Sample(row);
    EXPECT_TRUE(r.ok()) << r.status();
    ++counts[r->token];
  }
  return counts;
}

// Chi-square of the counts against `probs`, and no draws where probs is 0.
void ExpectFits(const std::vector<int64_t>& counts, const std::vector<double>& probs, int64_t draws,
                const std::string& what) {
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0) {
      EXPECT_EQ(counts[i], 0) << what << ": drew token " << i << ", outside the kept set";
    }
  }
  int dof = 0;
  const double chi2 = ChiSquare(counts, probs, draws, &dof);
  if (dof == 0) return;  // a single kept token: the zero checks above are the test
  EXPECT_LT(chi2, ChiSquareCritical1e6(dof)) << what << " (dof " << dof << ")";
}

SamplingParams Params(float temperature, int32_t top_k = 0, float top_p = 1.0f,
                      float min_p = 0.0f) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  return p;
}

// Twelve tokens with a spread of logits, ties and a masked one.
const std::vector<float> kRow = {2.0f,  1.5f, 1.5f,  0.3f, -0.7f, 2.4f,
                                 -kInf, 0.9f, -2.0f, 1.1f, 0.0f,  -0.2f};

TEST(StatsTest, HandComputedDistribution) {
  // Weights 1..6, top_k 4, top_p 0.6: {5/11, 6/11} (see sampler_test).
  std::vector<float> row;
  for (int w = 1; w <= 6; ++w) row.push_back(static_cast<float>(std::log(w)));
  SamplingParams p;
  p.top_k = 4;
  p.top_p = 0.6f;
  p.seed = 5;
  constexpr int64_t kDraws = 200000;
  const std::vector<int64_t> counts = Histogram(p, row, kDraws);
  ExpectFits(counts, {0, 0, 0, 0, 5 / 11.0, 6 / 11.0}, kDraws, "top_k 4 top_p 0.6");
}

TEST(StatsTest, EachTransformAgainstReference) {
  struct Case {
    const char* name;
    SamplingParams p;
  };
  SamplingParams bias;
  bias.logit_bias = {{8, 3.0f}, {5, -1.0f}};
  const Case cases[] = {
      {"T=1", Params(1.0f)},
      {"T=0.6", Params(0.6f)},
      {"T=1.7", Params(1.7f)},
      {"top_k=5 (ties)", Params(1.2f, 5)},
      {"top_p=0.7", Params(1.0f, 0, 0.7f)},
      {"min_p=0.2", Params(1.0f, 0, 1.0f, 0.2f)},
      {"T=0.8 top_k=8 top_p=0.9 min_p=0.05", Params(0.8f, 8, 0.9f, 0.05f)},
      {"bias", bias},
  };
  constexpr int64_t kDraws = 200000;
  uint64_t seed = 1;
  for (const Case& c : cases) {
    SamplingParams p = c.p;
    p.seed = seed++;
    const std::vector<double> probs = ReferenceProbabilities(kRow, p, {}, {});
    ExpectFits(Histogram(p, kRow, kDraws), probs, kDraws, c.name);
  }
}

// 3000 tokens: draws cross the 1024-token partial sums of the whole-row path.
TEST(StatsTest, WholeRowAcrossBlocks) {
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.0f, 0.7f);
  std::vector<float> row(3000);
  for (float& x : row) x = normal(rng);
  for (const SamplingParams& base :
       {Params(1.3f), Params(1.0f, 0, 0.6f), Params(0.9f, 0, 1.0f, 0.3f)}) {
    SamplingParams p = base;
    p.seed = 77;
    constexpr int64_t kDraws = 200000;
    const std::vector<double> probs = ReferenceProbabilities(row, p, {}, {});
    ExpectFits(Histogram(p, row, kDraws), probs, kDraws, "3000 tokens");
  }
}

// The full vocabulary, with a realistic peaked row: top_p alone, and top_k + top_p.
TEST(StatsTest, QwenVocabularyTopP) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> row(151936);
  for (float& x : row) x = normal(rng);
  for (int i = 0; i < 40; ++i) row[rng() % row.size()] += 9.0f + 0.2f * i;
  for (const SamplingParams& base : {Params(1.0f, 0, 0.9f), Params(0.8f, 20, 0.8f)}) {
    SamplingParams p = base;
    p.seed = 3;
    constexpr int64_t kDraws = 20000;
    const std::vector<double> probs = ReferenceProbabilities(row, p, {}, {});
    ExpectFits(Histogram(p, row, kDraws), probs, kDraws, "151936 tokens");
  }
}

// Consecutive draws are independent: pairs (t_i, t_i+1) against the product distribution.
TEST(StatsTest, ConsecutiveDrawsAreIndependent) {
  const std::vector<float> row = {0.0f, 0.5f, 1.0f, 1.2f};
  SamplingParams p;
  p.seed = 11;
  absl::StatusOr<Sampler> s = Sampler::Create(p, 4, {});
  ASSERT_TRUE(s.ok());
  const std::vector<double> single = ReferenceProbabilities(row, p, {}, {});
  std::vector<double> pair_probs(16);
  for (int a = 0; a < 4; ++a) {
    for (int b = 0; b < 4; ++b) pair_probs[a * 4 + b] = single[a] * single[b];
  }
  constexpr int64_t kPairs = 100000;
  std::vector<int64_t> counts(16, 0);
  for (int64_t i = 0; i < kPairs; ++i) {
    const int a = s->Sample(row)->token, b = s->Sample(row)->token;
    ++counts[a * 4 + b];
  }
  ExpectFits(counts, pair_probs, kPairs, "pairs");
}

}  // namespace
}  // namespace nextserve::sampling
