// Exact cases for each step of sampler.h on small vocabularies, computed by hand.
#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "gtest/gtest.h"
#include "tests/unit/model/status_matchers.h"

namespace nextserve::sampling {
namespace {

using ::nextserve::testing::IsError;
constexpr float kInf = std::numeric_limits<float>::infinity();

// Logits whose softmax is proportional to `weights`.
std::vector<float> LogitsOf(std::initializer_list<double> weights) {
  std::vector<float> out;
  for (double w : weights) out.push_back(w > 0 ? static_cast<float>(std::log(w)) : -kInf);
  return out;
}

Sampler Make(const SamplingParams& p, int64_t vocab, std::vector<int32_t> prompt = {},
             std::vector<int32_t> eos = {}) {
  absl::StatusOr<Sampler> s = Sampler::Create(p, vocab, prompt, eos);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

std::vector<float> Probs(const Sampler& s, const std::vector<float>& logits) {
  absl::StatusOr<std::vector<float>> p = s.Probabilities(logits);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : std::vector<float>();
}

void ExpectProbs(const std::vector<float>& got, std::initializer_list<double> want) {
  ASSERT_EQ(got.size(), want.size());
  size_t i = 0;
  for (double w : want) {
    if (w == 0) {
      EXPECT_EQ(got[i], 0.0f) << "token " << i;  // outside the kept set: exactly zero
    } else {
      EXPECT_NEAR(got[i], w, 1e-6) << "token " << i;
    }
    ++i;
  }
}

int32_t Draw(Sampler& s, const std::vector<float>& logits) {
  absl::StatusOr<SampleResult> r = s.Sample(logits);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->token : -1;
}

// Weights 1:2:3:4 → probabilities 0.1, 0.2, 0.3, 0.4 at temperature 1.
const std::vector<float> k1234 = LogitsOf({1, 2, 3, 4});

TEST(SamplerTest, GreedyIsArgmaxWithTiesToLowestId) {
  SamplingParams p;
  p.temperature = 0;
  p.top_k = 1;  // ignored when greedy
  Sampler s = Make(p, 5);
  EXPECT_EQ(Draw(s, {0.5f, 3.0f, -1.0f, 3.0f, 2.9f}), 1);
  EXPECT_EQ(Draw(s, {-kInf, -2.0f, -2.0f, -kInf, -3.0f}), 1);
  EXPECT_EQ(Draw(s, {7, 7, 7, 7, 7}), 0);
  EXPECT_EQ(Draw(s, {0, 0, 0, 0, 1}), 4);
  ExpectProbs(Probs(s, {0, 5, 5, 1, 1}), {0, 1, 0, 0, 0});
  // Below vLLM's 1e-5 epsilon is greedy too.
  p.temperature = 5e-6f;
  Sampler tiny = Make(p, 5);
  EXPECT_EQ(Draw(tiny, {0.5f, 3.0f, -1.0f, 3.0f, 2.9f}), 1);
}

TEST(SamplerTest, GreedyOnFullVocabularyFindsLastToken) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s = Make(p, 151936);
  std::vector<float> row(151936, -3.0f);
  row[151935] = 1.0f;
  EXPECT_EQ(Draw(s, row), 151935);
  row[70000] = 1.0f;
  EXPECT_EQ(Draw(s, row), 70000);
}

TEST(SamplerTest, Temperature) {
  SamplingParams p;
  p.temperature = 1.0f;
  ExpectProbs(Probs(Make(p, 4), k1234), {0.1, 0.2, 0.3, 0.4});
  p.temperature = 0.5f;  // weights squared: 1, 4, 9, 16 over 30
  ExpectProbs(Probs(Make(p, 4), k1234), {1 / 30.0, 4 / 30.0, 9 / 30.0, 16 / 30.0});
  p.temperature = 2.0f;  // square roots
  const double z = 1 + std::sqrt(2.0) + std::sqrt(3.0) + 2;
  ExpectProbs(Probs(Make(p, 4), k1234), {1 / z, std::sqrt(2.0) / z, std::sqrt(3.0) / z, 2 / z});
}

TEST(SamplerTest, TopKKeepsTiesWithTheKth) {
  SamplingParams p;
  p.top_k = 2;
  ExpectProbs(Probs(Make(p, 4), k1234), {0, 0, 3 / 7.0, 4 / 7.0});
  p.top_k = 1;
  ExpectProbs(Probs(Make(p, 4), k1234), {0, 0, 0, 1});
  p.top_k = 2;  // 2 and 2 tie for second place: both stay (HF and vLLM compare with the k-th)
  ExpectProbs(Probs(Make(p, 4), LogitsOf({1, 2, 2, 4})), {0, 0.25, 0.25, 0.5});
  p.top_k = 4;  // == vocab: disabled
  ExpectProbs(Probs(Make(p, 4), k1234), {0.1, 0.2, 0.3, 0.4});
  p.top_k = -1;
  ExpectProbs(Probs(Make(p, 4), k1234), {0.1, 0.2, 0.3, 0.4});
}

// top_p and min_p run on two code paths: with top_k (a short sorted list) and without (a cut
// over the whole row). An extra -inf token lets top_k = vocab - 1 keep every finite token, so
// both paths must give the same answer.
class TopPMinPTest : public ::testing::TestWithParam<bool> {
 protected:
  std::vector<float> Run(SamplingParams p, std::vector<float> logits) {
    logits.push_back(-kInf);
    const int64_t vocab = static_cast<int64_t>(logits.size());
    if (GetParam()) p.top_k = static_cast<int32_t>(vocab - 1);
    std::vector<float> probs = Probs(Make(p, vocab), logits);
    EXPECT_EQ(probs.back(), 0.0f);
    probs.pop_back();
    return probs;
  }
};

TEST_P(TopPMinPTest, TopP) {
  SamplingParams p;
  p.top_p = 0.5f;  // 0.4 before 0.3 is < 0.5: keep; 0.7 before 0.2: drop
  ExpectProbs(Run(p, k1234), {0, 0, 3 / 7.0, 4 / 7.0});
  p.top_p = 0.75f;
  ExpectProbs(Run(p, k1234), {0, 2 / 9.0, 3 / 9.0, 4 / 9.0});
  p.top_p = 0.01f;  // always at least the most likely
  ExpectProbs(Run(p, k1234), {0, 0, 0, 1});
  p.top_p = 0.95f;
  ExpectProbs(Run(p, k1234), {0.1, 0.2, 0.3, 0.4});
  // Ties in probability are ordered by id: with 1:1:1:1 and top_p 0.3 the two lowest ids stay
  // (0.25 before the second is < 0.3).
  SamplingParams ties;
  ties.top_p = 0.3f;
  ExpectProbs(Run(ties, LogitsOf({1, 1, 1, 1})), {0.5, 0.5, 0, 0});
}

TEST_P(TopPMinPTest, MinP) {
  SamplingParams p;
  p.min_p = 0.6f;  // keep p >= 0.24
  ExpectProbs(Run(p, k1234), {0, 0, 3 / 7.0, 4 / 7.0});
  p.min_p = 0.45f;  // keep p >= 0.18
  ExpectProbs(Run(p, k1234), {0, 2 / 9.0, 3 / 9.0, 4 / 9.0});
  p.min_p = 1.0f;  // only the max (and its ties)
  ExpectProbs(Run(p, LogitsOf({4, 1, 4, 2})), {0.5, 0, 0.5, 0});
  // Relative to the tempered distribution: at T = 0.5, 1:2:3:4 becomes 1:4:9:16 and
  // min_p 0.5 keeps p >= 8/30, i.e. 9 and 16.
  p.min_p = 0.5f;
  p.temperature = 0.5f;
  ExpectProbs(Run(p, k1234), {0, 0, 9 / 25.0, 16 / 25.0});
}

TEST_P(TopPMinPTest, TemperatureThenTopPThenMinP) {
  SamplingParams p;
  p.temperature = 0.5f;  // 1:4:9:16 over 30
  p.top_p = 0.6f;        // 16/30 = 0.533 before 9: keep; 25/30 before 4: drop
  ExpectProbs(Run(p, k1234), {0, 0, 9 / 25.0, 16 / 25.0});
  p.min_p = 0.6f;  // on the renormalised {9, 16}/25: keep p >= 0.6 * 16/25, drops 9/25
  ExpectProbs(Run(p, k1234), {0, 0, 0, 1});
}

INSTANTIATE_TEST_SUITE_P(Paths, TopPMinPTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "TopKList" : "WholeRow"; });

// Weights 1..6: top_k 4 leaves {3,4,5,6}/18; top_p 0.6: 6/18 = 0.33 before 5 (keep), 11/18 = 0.61
// before 4 (drop) → {5, 6}/11; min_p 0.8 keeps 5/11 >= 0.8 * 6/11, min_p 0.9 drops it.
TEST(SamplerTest, TopKThenTopPThenMinP) {
  const std::vector<float> logits = LogitsOf({1, 2, 3, 4, 5, 6});
  SamplingParams p;
  p.top_k = 4;
  ExpectProbs(Probs(Make(p, 6), logits), {0, 0, 3 / 18.0, 4 / 18.0, 5 / 18.0, 6 / 18.0});
  p.top_p = 0.6f;
  ExpectProbs(Probs(Make(p, 6), logits), {0, 0, 0, 0, 5 / 11.0, 6 / 11.0});
  p.min_p = 0.8f;
  ExpectProbs(Probs(Make(p, 6), logits), {0, 0, 0, 0, 5 / 11.0, 6 / 11.0});
  p.min_p = 0.9f;
  ExpectProbs(Probs(Make(p, 6), logits), {0, 0, 0, 0, 0, 1});
}

// Forces the next token by giving every other token -inf (temperature 1: a real draw).
void Force(Sampler& s, int32_t token, int64_t vocab) {
  std::vector<float> row(vocab, -kInf);
  row[token] = 0;
  ASSERT_EQ(Draw(s, row), token);
}

// Processed logit differences, read back from the probabilities at temperature 1:
// log p_i - log p_ref = w_i - w_ref.
double LogitGap(const std::vector<float>& probs, int i, int ref) {
  return std::log(static_cast<double>(probs[i])) - std::log(static_cast<double>(probs[ref]));
}

TEST(SamplerTest, PenaltiesMatchHandComputedValues) {
  SamplingParams p;
  p.repetition_penalty = 1.5f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  Sampler s = Make(p, 4, /*prompt=*/{2});
  Force(s, 0, 4);
  Force(s, 0, 4);
  Force(s, 1, 4);
  // Output counts {0: 2, 1: 1}; prompt {2}; token 3 unseen (the reference, logit 0).
  const std::vector<float> probs = Probs(s, {1.0f, -0.5f, 2.0f, 0.0f});
  // token 0: 1.0 / 1.5 - 0.5 * 2 - 0.25
  EXPECT_NEAR(LogitGap(probs, 0, 3), 1.0 / 1.5 - 1.0 - 0.25, 1e-5);
  // token 1: -0.5 * 1.5 - 0.5 * 1 - 0.25
  EXPECT_NEAR(LogitGap(probs, 1, 3), -0.75 - 0.5 - 0.25, 1e-5);
  // token 2: prompt only: repetition penalty, no presence/frequency
  EXPECT_NEAR(LogitGap(probs, 2, 3), 2.0 / 1.5, 1e-5);
}

TEST(SamplerTest, PresenceAndFrequencyIgnoreThePrompt) {
  SamplingParams p;
  p.frequency_penalty = 1.0f;
  p.presence_penalty = 1.0f;
  Sampler s = Make(p, 3, /*prompt=*/{0, 0, 0, 1});
  const std::vector<float> probs = Probs(s, {0.0f, 0.0f, 0.0f});
  ExpectProbs(probs, {1 / 3.0, 1 / 3.0, 1 / 3.0});
  Force(s, 1, 3);
  EXPECT_NEAR(LogitGap(Probs(s, {0.0f, 0.0f, 0.0f}), 1, 2), -2.0, 1e-5);
}

TEST(SamplerTest, NegativePenaltiesAndRepetitionBelowOne) {
  SamplingParams p;
  p.repetition_penalty = 0.5f;  // < 1 favours seen tokens
  p.frequency_penalty = -1.0f;
  Sampler s = Make(p, 3, /*prompt=*/{0, 1});
  Force(s, 1, 3);
  const std::vector<float> probs = Probs(s, {2.0f, -2.0f, 0.0f});
  EXPECT_NEAR(LogitGap(probs, 0, 2), 4.0, 1e-5);         // 2 / 0.5
  EXPECT_NEAR(LogitGap(probs, 1, 2), -1.0 + 1.0, 1e-5);  // -2 * 0.5, then + 1
}

// Bias comes before the repetition penalty (vLLM V1 and HF order): 1.0 - 2 = -1, then * 2.
TEST(SamplerTest, LogitBiasIsAddedBeforeRepetitionPenalty) {
  SamplingParams p;
  p.logit_bias = {{0, -2.0f}, {2, 3.0f}};
  p.repetition_penalty = 2.0f;
  Sampler s = Make(p, 3, /*prompt=*/{0});
  const std::vector<float> probs = Probs(s, {1.0f, 0.0f, 0.0f});
  EXPECT_NEAR(LogitGap(probs, 0, 1), -2.0, 1e-5);
  EXPECT_NEAR(LogitGap(probs, 2, 1), 3.0, 1e-5);
  // Bias changes greedy choices too.
  p.temperature = 0;
  Sampler g = Make(p, 3, {0});
  EXPECT_EQ(Draw(g, {1.0f, 0.0f, 0.0f}), 2);
}

TEST(SamplerTest, StopIdsAndMinTokens) {
  SamplingParams p;
  p.temperature = 0;
  p.stop_token_ids = {2};
  p.min_tokens = 2;
  Sampler s = Make(p, 4, {}, /*eos=*/{3});
  EXPECT_TRUE(s.IsStop(2));
  EXPECT_TRUE(s.IsStop(3));
  EXPECT_FALSE(s.IsStop(0));
  const std::vector<float> row = {0.0f, 1.0f, 4.0f, 5.0f};  // eos, then the stop id, are best
  absl::StatusOr<SampleResult> r = s.Sample(row);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token, 1);  // both masked during the first min_tokens tokens
  EXPECT_FALSE(r->stop);
  EXPECT_EQ(Draw(s, row), 1);
  r = s.Sample(row);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token, 3);
  EXPECT_TRUE(r->stop);
  EXPECT_EQ(s.num_generated(), 3);
  r = s.Sample(std::vector<float>{0.0f, 1.0f, 4.0f, -1.0f});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token, 2);
  EXPECT_TRUE(r->stop);
}

TEST(SamplerTest, IgnoreEosNeitherStopsNorMasksEos) {
  SamplingParams p;
  p.temperature = 0;
  p.ignore_eos = true;
  p.min_tokens = 5;
  p.stop_token_ids = {1};
  Sampler s = Make(p, 3, {}, /*eos=*/{2});
  EXPECT_FALSE(s.IsStop(2));
  absl::StatusOr<SampleResult> r = s.Sample(std::vector<float>{0.0f, 1.0f, 2.0f});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token, 2);
  EXPECT_FALSE(r->stop);
  EXPECT_EQ(Draw(s, {0.0f, 1.0f, -1.0f}), 0);  // stop id 1 still masked
}

TEST(SamplerTest, BadRowsAreErrors) {
  SamplingParams p;
  p.min_tokens = 1;
  p.stop_token_ids = {1};
  Sampler s = Make(p, 3);
  EXPECT_TRUE(IsError(s.Sample(std::vector<float>{0.0f, 1.0f}), absl::StatusCode::kInvalidArgument,
                      {"2 entries", "vocabulary has 3"}));
  EXPECT_TRUE(IsError(s.Sample(std::vector<float>{0.0f, std::nanf(""), 1.0f}),
                      absl::StatusCode::kInvalidArgument, {"logits[1]", "NaN"}));
  EXPECT_TRUE(IsError(s.Sample(std::vector<float>{0.0f, 1.0f, kInf}),
                      absl::StatusCode::kInvalidArgument, {"logits[2]"}));
  // Also in a token that min_tokens masks (token 1 is the stop id): a model bug is not hidden.
  EXPECT_TRUE(IsError(s.Sample(std::vector<float>{0.0f, kInf, 1.0f}),
                      absl::StatusCode::kInvalidArgument, {"logits[1]", "inf"}));
  EXPECT_TRUE(IsError(s.Sample(std::vector<float>{-kInf, 1.0f, -kInf}),
                      absl::StatusCode::kInvalidArgument, {"every token is masked", "step 0"}));
  EXPECT_EQ(s.num_generated(), 0);  // failed steps record nothing
}

TEST(SamplerTest, LogprobsOfTheSampledDistribution) {
  SamplingParams p;
  p.logprobs = 2;
  p.seed = 1;
  Sampler s = Make(p, 4);
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<SampleResult> r = s.Sample(k1234);
    ASSERT_TRUE(r.ok());
    const int32_t t = r->token;
    EXPECT_NEAR(r->logprob, std::log((t + 1) / 10.0), 1e-6);
    EXPECT_EQ(r->rank, 4 - t);
    ASSERT_EQ(r->top_logprobs.size(), 2u);
    EXPECT_EQ(r->top_logprobs[0].token, 3);
    EXPECT_NEAR(r->top_logprobs[0].logprob, std::log(0.4), 1e-6);
    EXPECT_EQ(r->top_logprobs[1].token, 2);
    EXPECT_NEAR(r->top_logprobs[1].logprob, std::log(0.3), 1e-6);
  }
  // Processed: after top_k 2 the distribution is {3/7, 4/7}; only kept tokens are listed.
  p.top_k = 2;
  p.logprobs = 3;
  Sampler k = Make(p, 4);
  absl::StatusOr<SampleResult> r = k.Sample(k1234);
  ASSERT_TRUE(r.ok());
  EXPECT_NEAR(r->logprob, std::log((r->token + 1) / 7.0), 1e-6);
  ASSERT_EQ(r->top_logprobs.size(), 2u);
  EXPECT_EQ(r->top_logprobs[0].token, 3);
  EXPECT_NEAR(r->top_logprobs[0].logprob, std::log(4 / 7.0), 1e-6);
  EXPECT_NEAR(r->top_logprobs[1].logprob, std::log(3 / 7.0), 1e-6);
  // Same on the whole-row path (top_p).
  p.top_k = 0;
  p.top_p = 0.5f;
  Sampler tp = Make(p, 4);
  r = tp.Sample(k1234);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->top_logprobs.size(), 2u);
  EXPECT_EQ(r->top_logprobs[0].token, 3);
  EXPECT_NEAR(r->top_logprobs[1].logprob, std::log(3 / 7.0), 1e-6);
  EXPECT_EQ(r->rank, r->token == 3 ? 1 : 2);
}

TEST(SamplerTest, GreedyLogprobsAreTemperatureOneAndRankCountsTies) {
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = 1;
  Sampler s = Make(p, 4);
  absl::StatusOr<SampleResult> r = s.Sample(k1234);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token, 3);
  EXPECT_NEAR(r->logprob, std::log(0.4), 1e-6);
  EXPECT_EQ(r->rank, 1);
  ASSERT_EQ(r->top_logprobs.size(), 1u);
  EXPECT_EQ(r->top_logprobs[0].token, 3);
  // Tie: lowest id chosen, rank counts every token with logprob >= its own (vLLM).
  r = s.Sample(LogitsOf({2, 2, 1, 1}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token, 0);
  EXPECT_EQ(r->rank, 2);
  EXPECT_NEAR(r->logprob, std::log(1 / 3.0), 1e-6);
  // logprobs = 0: the sampled token only.
  p.logprobs = 0;
  Sampler z = Make(p, 4);
  r = z.Sample(k1234);
  ASSERT_TRUE(r.ok());
  EXPECT_NEAR(r->logprob, std::log(0.4), 1e-6);
  EXPECT_TRUE(r->top_logprobs.empty());
}

// Random rows, one per step, the same for every sampler that reads them.
std::vector<std::vector<float>> RandomSteps(int steps, int64_t vocab) {
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<std::vector<float>> rows(steps, std::vector<float>(vocab));
  for (auto& row : rows) {
    for (float& x : row) x = normal(rng);
  }
  return rows;
}

std::vector<int32_t> DrawAll(Sampler& s, const std::vector<std::vector<float>>& rows) {
  std::vector<int32_t> out;
  for (const auto& row : rows) out.push_back(Draw(s, row));
  return out;
}

TEST(SamplerTest, SameSeedSameTokensWhateverIsInterleaved) {
  constexpr int64_t kVocab = 3000;
  const auto rows = RandomSteps(64, kVocab);
  SamplingParams top_k_top_p, top_p_presence;
  top_k_top_p.temperature = 0.8f;
  top_k_top_p.top_k = 20;
  top_k_top_p.top_p = 0.8f;
  top_p_presence.top_p = 0.9f;
  top_p_presence.presence_penalty = 0.5f;
  for (const SamplingParams& base : {SamplingParams{}, top_k_top_p, top_p_presence}) {
    SamplingParams a = base, b = base;
    a.seed = 1234;
    b.seed = 98765;
    Sampler alone_a = Make(a, kVocab), alone_b = Make(b, kVocab);
    const std::vector<int32_t> seq_a = DrawAll(alone_a, rows), seq_b = DrawAll(alone_b, rows);
    EXPECT_NE(seq_a, seq_b);
    Sampler again = Make(a, kVocab);
    EXPECT_EQ(DrawAll(again, rows), seq_a);
    // Interleaved, with an extra sampler stepping in between and a Probabilities call (which
    // must not consume a draw).
    Sampler ia = Make(a, kVocab), ib = Make(b, kVocab), other = Make(SamplingParams{}, kVocab);
    std::vector<int32_t> got_a, got_b;
    for (size_t t = 0; t < rows.size(); ++t) {
      if (t % 3 == 0) Draw(other, rows[(t * 7) % rows.size()]);
      ASSERT_TRUE(ib.Probabilities(rows[t]).ok());
      got_b.push_back(Draw(ib, rows[t]));
      got_a.push_back(Draw(ia, rows[t]));
    }
    EXPECT_EQ(got_a, seq_a);
    EXPECT_EQ(got_b, seq_b);
  }
}

// A request moved to another rank resumes with its output so far at the end of the prompt: the
// rest of its tokens must equal the uninterrupted run (RNG position, penalties, min_tokens).
TEST(SamplerTest, ResumedSamplerContinuesLikeTheOriginal) {
  constexpr int64_t kVocab = 3000;
  constexpr int kSplit = 20;
  const auto rows = RandomSteps(64, kVocab);
  const std::vector<int32_t> prompt = {5, 17, 2999, 42};
  SamplingParams p;
  p.seed = 777;
  p.temperature = 0.9f;
  p.top_k = 50;
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.7f;
  p.frequency_penalty = 0.4f;
  p.min_tokens = kSplit + 10;  // the mask must still hold after the move
  p.stop_token_ids = {7, 8};
  p.logit_bias = {{7, 6.0f}, {8, 6.0f}};  // without the mask a stop id would win most steps
  Sampler whole = Make(p, kVocab, prompt);
  const std::vector<int32_t> expected = DrawAll(whole, rows);

  Sampler first = Make(p, kVocab, prompt);
  std::vector<int32_t> resumed_prompt = prompt;
  for (int t = 0; t < kSplit; ++t) resumed_prompt.push_back(Draw(first, rows[t]));
  absl::StatusOr<Sampler> resumed = Sampler::Create(p, kVocab, resumed_prompt, {}, kSplit);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->num_generated(), kSplit);
  std::vector<int32_t> got(resumed_prompt.begin() + prompt.size(), resumed_prompt.end());
  for (size_t t = kSplit; t < rows.size(); ++t) got.push_back(Draw(*resumed, rows[t]));
  EXPECT_EQ(got, expected);
  for (int t = 0; t < kSplit + 10; ++t) EXPECT_NE(expected[t], 7) << "step " << t;
  EXPECT_TRUE(std::count(expected.begin() + kSplit + 10, expected.end(), 7) +
                  std::count(expected.begin() + kSplit + 10, expected.end(), 8) >
              0);

  // Treating the moved tokens as prompt instead (the mistake this guards against) differs.
  Sampler naive = Make(p, kVocab, resumed_prompt);
  std::vector<int32_t> naive_got(resumed_prompt.begin() + prompt.size(), resumed_prompt.end());
  for (size_t t = kSplit; t < rows.size(); ++t) naive_got.push_back(Draw(naive, rows[t]));
  EXPECT_NE(naive_got, expected);

  EXPECT_TRUE(IsError(Sampler::Create(p, kVocab, prompt, {}, 5), absl::StatusCode::kInvalidArgument,
                      {"already_generated = 5", "[0, 4]"}));
  EXPECT_TRUE(IsError(Sampler::Create(p, kVocab, prompt, {}, -1),
                      absl::StatusCode::kInvalidArgument, {"already_generated"}));
}

TEST(SamplerTest, UnseededSamplersGetDifferentSeeds) {
  Sampler a = Make(SamplingParams{}, 10), b = Make(SamplingParams{}, 10);
  EXPECT_NE(a.seed(), b.seed());
  SamplingParams p;
  p.seed = 42;
  EXPECT_EQ(Make(p, 10).seed(), 42u);
}

}  // namespace
}  // namespace nextserve::sampling
