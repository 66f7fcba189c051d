// RowHistory / RowSettings / Sampler::Row: the flat settings of a request's next step, by hand.
#include "sampling/row_settings.h"

#include <vector>

#include "gtest/gtest.h"
#include "sampling/row_step.h"
#include "sampling/sampler.h"
#include "tests/unit/model/status_matchers.h"

namespace nextserve::sampling {
namespace {

using ::nextserve::testing::IsError;
using Ids = std::vector<int32_t>;

Ids Of(std::span<const int32_t> s) {
  return Ids(s.begin(), s.end());
}

TEST(RowSettingsTest, CarriesParamsSeedAndHistory) {
  SamplingParams p;
  p.temperature = 0.5f;
  p.top_k = 7;
  p.top_p = 0.9f;
  p.min_p = 0.1f;
  p.repetition_penalty = 1.2f;
  p.frequency_penalty = 0.3f;
  p.presence_penalty = -0.4f;
  p.logit_bias = {{4, 1.5f}, {2, -2.0f}};
  p.min_tokens = 2;
  // Prompt 5 5 3, then two tokens of output (9, 5) from a resumed request.
  RowHistory h(p, /*stop_ids=*/Ids{8, 1, 8}, Ids{5, 5, 3, 9, 5}, /*already_generated=*/2);
  kernels::SamplingRow row = RowSettings(p, 42, h);
  EXPECT_EQ(row.temperature, 0.5f);
  EXPECT_EQ(row.top_k, 7);
  EXPECT_EQ(row.top_p, 0.9f);
  EXPECT_EQ(row.min_p, 0.1f);
  EXPECT_EQ(row.repetition_penalty, 1.2f);
  EXPECT_EQ(row.frequency_penalty, 0.3f);
  EXPECT_EQ(row.presence_penalty, -0.4f);
  EXPECT_EQ(row.seed, 42u);
  EXPECT_EQ(row.draw, 2u);
  EXPECT_EQ(Of(row.seen), (Ids{5, 3, 9}));  // unique, in order of first appearance
  EXPECT_EQ(Of(row.output_ids), (Ids{9, 5}));
  EXPECT_EQ(Of(row.output_counts), (Ids{1, 1}));
  EXPECT_TRUE(row.banned.empty());  // 2 generated = min_tokens
  EXPECT_EQ(Of(row.bias_ids), (Ids{4, 2}));
  EXPECT_EQ(std::vector<float>(row.bias_values.begin(), row.bias_values.end()),
            (std::vector<float>{1.5f, -2.0f}));
  EXPECT_TRUE(CheckRow(row, 10).ok());

  h.Record(5);
  h.Record(0);
  row = RowSettings(p, 42, h);
  EXPECT_EQ(row.draw, 4u);
  EXPECT_EQ(Of(row.seen), (Ids{5, 3, 9, 0}));
  EXPECT_EQ(Of(row.output_ids), (Ids{9, 5, 0}));
  EXPECT_EQ(Of(row.output_counts), (Ids{1, 2, 1}));
  EXPECT_TRUE(h.IsStop(1) && h.IsStop(8) && !h.IsStop(5));
}

TEST(RowSettingsTest, BansStopIdsUntilMinTokensAndSkipsUnusedLists) {
  SamplingParams p;  // no penalties: no seen ids, no counts
  p.min_tokens = 1;
  RowHistory h(p, Ids{3, 2}, Ids{1, 2, 3}, 0);
  kernels::SamplingRow row = RowSettings(p, 0, h);
  EXPECT_EQ(Of(row.banned), (Ids{2, 3}));
  EXPECT_TRUE(row.seen.empty());
  EXPECT_TRUE(row.output_ids.empty());
  h.Record(1);
  EXPECT_TRUE(RowSettings(p, 0, h).banned.empty());
}

// Row() + Record() in place of Sample(): the same tokens, the same state afterwards.
TEST(RowSettingsTest, SamplerRowAndRecordFollowSample) {
  SamplingParams p;
  p.temperature = 0.9f;
  p.repetition_penalty = 1.5f;
  p.presence_penalty = 1.0f;
  p.seed = 3;
  std::vector<float> logits = {0.1f, 2.0f, 1.9f, -1.0f, 1.8f, 0.0f};
  auto a = Sampler::Create(p, 6, Ids{1}, Ids{5});
  auto b = Sampler::Create(p, 6, Ids{1}, Ids{5});
  ASSERT_TRUE(a.ok() && b.ok());
  for (int step = 0; step < 20; ++step) {
    absl::StatusOr<SampleResult> want = a->Sample(logits);
    absl::StatusOr<int32_t> got = SampleRow(logits, b->Row());
    ASSERT_TRUE(want.ok() && got.ok());
    ASSERT_EQ(*got, want->token) << "step " << step;
    absl::StatusOr<bool> stop = b->Record(*got);
    ASSERT_TRUE(stop.ok());
    EXPECT_EQ(*stop, want->stop);
    EXPECT_EQ(b->num_generated(), a->num_generated());
  }
  EXPECT_TRUE(IsError(b->Record(6), absl::StatusCode::kInvalidArgument, {"token 6", "[0, 6)"}));
  EXPECT_TRUE(IsError(b->Record(-1), absl::StatusCode::kInvalidArgument, {"token -1"}));
}

}  // namespace
}  // namespace nextserve::sampling
