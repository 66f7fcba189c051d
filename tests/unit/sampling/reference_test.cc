// The fast sampler against the full-sort reference (sampling/reference.h) on random rows and
// random parameters: same kept set, same probabilities, same logprobs.
#include "sampling/reference.h"

#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "sampling/sampler.h"

namespace nextserve::sampling {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

template <typename T>
T Pick(std::mt19937& rng, std::initializer_list<T> options) {
  std::uniform_int_distribution<size_t> d(0, options.size() - 1);
  return *(options.begin() + d(rng));
}

std::vector<float> RandomRow(std::mt19937& rng, int64_t n) {
  std::vector<float> row(n);
  const int kind = std::uniform_int_distribution<int>(0, 3)(rng);
  std::normal_distribution<float> normal(0.0f, Pick(rng, {0.3f, 1.0f, 3.0f, 8.0f}));
  std::uniform_int_distribution<int> level(-3, 3);
  for (int64_t i = 0; i < n; ++i) {
    switch (kind) {
      case 0:
        row[i] = normal(rng);
        break;
      case 1:
        row[i] = 0.5f * static_cast<float>(level(rng));
        break;  // many exact ties
      case 2:
        row[i] = (i % 5 == 1) ? -kInf : normal(rng);
        break;
      default:
        row[i] = normal(rng) + (i % 97 == 0 ? 12.0f : 0.0f);
        break;  // a few spikes
    }
  }
  if (kind == 2) row[0] = 0;  // at least one finite
  return row;
}

SamplingParams RandomParams(std::mt19937& rng, int64_t n) {
  SamplingParams p;
  p.temperature = Pick(rng, {0.0f, 0.3f, 0.7f, 1.0f, 1.6f});
  p.top_k = Pick<int32_t>(rng, {0, 0, 1, 3, 20, 50, static_cast<int32_t>(n - 1)});
  p.top_p = Pick(rng, {1.0f, 1.0f, 0.95f, 0.8f, 0.5f, 0.1f});
  p.min_p = Pick(rng, {0.0f, 0.0f, 0.01f, 0.1f, 0.5f});
  p.repetition_penalty = Pick(rng, {1.0f, 1.3f, 0.8f});
  p.presence_penalty = Pick(rng, {0.0f, 0.5f, -0.5f});
  p.frequency_penalty = Pick(rng, {0.0f, 0.3f, -1.0f});
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(n - 1));
  if (Pick(rng, {false, true})) {
    for (int i = 0; i < 3; ++i) {
      const int32_t t = token(rng);
      bool dup = false;
      for (const auto& [u, b] : p.logit_bias) dup |= u == t;
      if (!dup) p.logit_bias.push_back({t, Pick(rng, {-100.0f, -2.0f, 1.5f, 30.0f})});
    }
  }
  if (n > 2 && Pick(rng, {false, true})) {
    p.stop_token_ids = {token(rng)};
    p.min_tokens = Pick(rng, {0, 5});
  }
  p.logprobs = Pick(rng, {-1, 0, 5});
  p.seed = rng();
  return p;
}

void CheckCase(std::mt19937& rng, int64_t n, int trial) {
  const SamplingParams p = RandomParams(rng, n);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(n - 1));
  std::vector<int32_t> prompt(std::uniform_int_distribution<int>(0, 20)(rng));
  for (int32_t& t : prompt) t = token(rng);
  const std::vector<int32_t> eos = {static_cast<int32_t>(n - 1)};
  absl::StatusOr<Sampler> made = Sampler::Create(p, n, prompt, eos);
  ASSERT_TRUE(made.ok()) << made.status();
  Sampler& s = *made;
  // A history of forced outputs (rows with one finite logit), avoiding stop ids.
  std::vector<int32_t> output;
  for (int i = 0, steps = std::uniform_int_distribution<int>(0, 6)(rng); i < steps; ++i) {
    const int32_t t = token(rng);
    if (s.IsStop(t)) continue;
    std::vector<float> forced(n, -kInf);
    forced[t] = 1.0f;
    absl::StatusOr<SampleResult> r = s.Sample(forced);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->token, t);
    output.push_back(t);
  }

  const std::vector<float> row = RandomRow(rng, n);
  const std::vector<double> want = ReferenceProbabilities(row, p, prompt, output, eos);
  absl::StatusOr<std::vector<float>> got = s.Probabilities(row);
  if (!got.ok()) {  // only when steps 1-4 masked every token; the reference then has no max
    ASSERT_TRUE(absl::StrContains(got.status().message(), "every token is masked")) << got.status();
    return;
  }
  const std::string where = ::testing::PrintToString(trial) + " n=" + std::to_string(n) +
                            " T=" + std::to_string(p.temperature) +
                            " k=" + std::to_string(p.top_k) + " p=" + std::to_string(p.top_p) +
                            " min_p=" + std::to_string(p.min_p);
  int64_t kept_ref = 0, kept_got = 0;
  for (int64_t i = 0; i < n; ++i) {
    kept_ref += want[i] > 0;
    kept_got += (*got)[i] > 0;
    if (want[i] == 0) {
      ASSERT_EQ((*got)[i], 0.0f) << "token " << i << " outside the kept set, case " << where;
    } else {
      ASSERT_NEAR((*got)[i], want[i], 1e-6 + 1e-4 * want[i]) << "token " << i << ", " << where;
    }
  }
  // Kept tokens whose weight underflows float (< 1e-38 of the max) are the only ones allowed to
  // differ.
  EXPECT_LE(kept_got, kept_ref) << where;

  absl::StatusOr<SampleResult> r = s.Sample(row);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_GT(want[r->token], 0.0) << "sampled a token outside the kept set, " << where;
  if (p.logprobs >= 0) {
    // Processed logprobs: the sampled distribution (temperature 1, untruncated, for greedy).
    std::vector<double> dist = want;
    if (p.greedy()) {
      SamplingParams t1 = p;
      t1.temperature = 1;
      t1.top_k = 0;
      t1.top_p = 1;
      t1.min_p = 0;
      dist = ReferenceProbabilities(row, t1, prompt, output, eos);
    }
    EXPECT_NEAR(r->logprob, std::log(dist[r->token]), 2e-4) << where;
    int32_t rank = 0;
    for (int64_t i = 0; i < n; ++i) rank += dist[i] > 0 && dist[i] >= dist[r->token];
    EXPECT_EQ(r->rank, rank) << where;
    ASSERT_LE(r->top_logprobs.size(), static_cast<size_t>(p.logprobs));
    for (size_t j = 0; j < r->top_logprobs.size(); ++j) {
      const TokenLogprob& tl = r->top_logprobs[j];
      EXPECT_GT(dist[tl.token], 0.0) << where;
      EXPECT_NEAR(tl.logprob, std::log(dist[tl.token]), 2e-4) << where;
      if (j > 0) {
        EXPECT_LE(tl.logprob, r->top_logprobs[j - 1].logprob + 1e-6) << where;
      }
    }
  }
}

TEST(ReferenceTest, SmallAndMediumVocabularies) {
  std::mt19937 rng(2024);
  int trial = 0;
  for (int64_t n : {1, 2, 3, 17, 64, 1000, 4099}) {
    for (int i = 0; i < 150; ++i) {
      CheckCase(rng, n, trial++);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(ReferenceTest, QwenVocabulary) {
  std::mt19937 rng(151936);
  for (int i = 0; i < 40; ++i) {
    CheckCase(rng, 151936, i);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace nextserve::sampling
