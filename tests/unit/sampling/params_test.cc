#include "sampling/params.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "sampling/sampler.h"
#include "tests/unit/model/status_matchers.h"

namespace nextserve::sampling {
namespace {

using ::nextserve::testing::IsError;
constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr int64_t kVocab = 100;
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

TEST(SamplingParamsTest, DefaultsAndBoundsAreValid) {
  EXPECT_TRUE(SamplingParams{}.Validate(kVocab).ok());
  SamplingParams p;
  p.temperature = 0;
  p.top_k = -1;
  p.top_p = 1;
  p.min_p = 1;
  p.repetition_penalty = 1e-3f;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  p.logit_bias = {{0, -100}, {99, 100}};
  p.stop_token_ids = {0, 99};
  p.logprobs = kMaxLogprobs;
  EXPECT_TRUE(p.Validate(kVocab).ok()) << p.Validate(kVocab);
  p.top_k = 1000;  // larger than the vocabulary: disabled, not an error
  p.logprobs = 0;
  EXPECT_TRUE(p.Validate(kVocab).ok());
}

TEST(SamplingParamsTest, GreedyBelowEpsilon) {
  SamplingParams p;
  p.temperature = 0;
  EXPECT_TRUE(p.greedy());
  p.temperature = 0.9e-5f;
  EXPECT_TRUE(p.greedy());
  p.temperature = 1e-4f;
  EXPECT_FALSE(p.greedy());
}

// Each bad value gives InvalidArgument naming its field.
TEST(SamplingParamsTest, ErrorsNameTheField) {
  struct Case {
    void (*set)(SamplingParams&);
    std::initializer_list<std::string> needles;
  };
  const Case cases[] = {
      {[](SamplingParams& p) { p.temperature = -0.5f; }, {"'temperature'", "-0.5"}},
      {[](SamplingParams& p) { p.temperature = kNaN; }, {"'temperature'"}},
      {[](SamplingParams& p) { p.temperature = kInf; }, {"'temperature'"}},
      {[](SamplingParams& p) { p.top_k = -2; }, {"'top_k'", "-2"}},
      {[](SamplingParams& p) { p.top_p = 0; }, {"'top_p'", "(0, 1]"}},
      {[](SamplingParams& p) { p.top_p = 1.5f; }, {"'top_p'", "1.5"}},
      {[](SamplingParams& p) { p.top_p = kNaN; }, {"'top_p'"}},
      {[](SamplingParams& p) { p.min_p = -0.1f; }, {"'min_p'"}},
      {[](SamplingParams& p) { p.min_p = 1.1f; }, {"'min_p'"}},
      {[](SamplingParams& p) { p.repetition_penalty = 0; }, {"'repetition_penalty'", "> 0"}},
      {[](SamplingParams& p) { p.repetition_penalty = -1; }, {"'repetition_penalty'"}},
      {[](SamplingParams& p) { p.presence_penalty = 2.5f; }, {"'presence_penalty'", "[-2, 2]"}},
      {[](SamplingParams& p) { p.frequency_penalty = -3; }, {"'frequency_penalty'", "[-2, 2]"}},
      {[](SamplingParams& p) {
         p.logit_bias = {{5, 1}, {100, 1}};
       },
       {"'logit_bias[1]'", "token 100", "[0, 100)"}},
      {[](SamplingParams& p) {
         p.logit_bias = {{-1, 1}};
       },
       {"'logit_bias[0]'", "token -1"}},
      {[](SamplingParams& p) {
         p.logit_bias = {{7, 101}};
       },
       {"'logit_bias[0]'", "token 7", "[-100, 100]"}},
      {[](SamplingParams& p) {
         p.logit_bias = {{7, kNaN}};
       },
       {"'logit_bias[0]'"}},
      {[](SamplingParams& p) {
         p.logit_bias = {{7, 1}, {7, 2}};
       },
       {"'logit_bias[1]'", "token 7", "twice"}},
      {[](SamplingParams& p) {
         p.stop_token_ids = {3, 100};
       },
       {"'stop_token_ids[1]'", "100"}},
      {[](SamplingParams& p) { p.min_tokens = -1; }, {"'min_tokens'"}},
      {[](SamplingParams& p) { p.logprobs = 21; }, {"'logprobs'", "21", "[0, 20]"}},
      {[](SamplingParams& p) { p.logprobs = -2; }, {"'logprobs'"}},
  };
  for (size_t i = 0; i < std::size(cases); ++i) {
    SamplingParams p;
    cases[i].set(p);
    EXPECT_TRUE(IsError(p.Validate(kVocab), kInvalid, cases[i].needles)) << "case " << i;
  }
}

TEST(SamplingParamsTest, SamplerCreateValidates) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_TRUE(IsError(Sampler::Create(p, kVocab, {}), kInvalid, {"'top_p'"}));
  const std::vector<int32_t> bad_prompt = {1, 2, 100};
  EXPECT_TRUE(
      IsError(Sampler::Create({}, kVocab, bad_prompt), kInvalid, {"prompt_tokens[2]", "100"}));
  const std::vector<int32_t> bad_eos = {-3};
  EXPECT_TRUE(IsError(Sampler::Create({}, kVocab, {}, bad_eos), kInvalid, {"eos_token_ids[0]"}));
  EXPECT_TRUE(IsError(Sampler::Create({}, 0, {}), kInvalid, {"vocab_size"}));
}

}  // namespace
}  // namespace nextserve::sampling
