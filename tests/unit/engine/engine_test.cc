// The forward pass on random checkpoints: batching and chunking do not change results, decoding
// through the caches equals recomputing, bad input gets a clear error.
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/qwen3_next.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"

namespace nextserve {
namespace {

ModelConfig TestConfig() {
  auto c = PresetConfig("micro");
  EXPECT_TRUE(c.ok());
  c->vocab_size = 300;
  c->eos_token_ids = {1};
  return *c;
}

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(std::filesystem::temp_directory_path() /
                           ("nextserve_engine_test_" + std::to_string(getpid())));
    RandomCheckpointOptions options;
    options.dtype = DType::kF32;
    ASSERT_TRUE(WriteRandomCheckpoint(TestConfig(), *dir_, options).ok());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  void SetUp() override {
    auto weights = ModelWeights::Load(*dir_);
    ASSERT_TRUE(weights.ok()) << weights.status();
    backend_ = kernels::MakeCpuBackend();
    model_ = std::make_unique<Qwen3NextModel>(std::move(*weights), backend_.get());
  }
  std::vector<int32_t> Prompt(int64_t n, int32_t seed) {
    std::vector<int32_t> p(n);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>((seed * 131 + i * 17) % 300);
    return p;
  }
  std::vector<float> Alone(const std::vector<int32_t>& p) {
    auto st = model_->NewSequence();
    SequenceInput in{st.get(), p, true};
    auto out = model_->Forward({&in, 1});
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : std::vector<float>{};
  }
  static float MaxDiff(const float* a, const float* b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
  }

  static std::string* dir_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<Qwen3NextModel> model_;
};
std::string* EngineTest::dir_ = nullptr;

TEST_F(EngineTest, BatchingDoesNotChangeLogits) {
  const std::vector<std::vector<int32_t>> prompts = {Prompt(1, 1), Prompt(70, 2), Prompt(9, 3)};
  std::vector<std::unique_ptr<SequenceState>> states;
  std::vector<SequenceInput> batch;
  for (const auto& p : prompts) {
    states.push_back(model_->NewSequence());
    batch.push_back({states.back().get(), p, true});
  }
  auto together = model_->Forward(batch);
  ASSERT_TRUE(together.ok()) << together.status();
  size_t row = 0;
  for (const auto& p : prompts) {
    const auto alone = Alone(p);
    EXPECT_LT(MaxDiff(alone.data(), together->data() + row * 300, alone.size()), 1e-4f);
    row += p.size();
  }
  EXPECT_EQ(row * 300, together->size());
}

TEST_F(EngineTest, ChunkedPromptAndDecodeEqualWholePrompt) {
  const auto prompt = Prompt(150, 4);
  const auto whole = Alone(prompt);
  auto st = model_->NewSequence();
  std::vector<float> parts;
  size_t pos = 0;
  for (size_t size : {37, 64, 1, 1, 47}) {  // the single tokens take the recurrent path
    SequenceInput in{st.get(), std::span<const int32_t>(prompt).subspan(pos, size), true};
    auto out = model_->Forward({&in, 1});
    ASSERT_TRUE(out.ok()) << out.status();
    parts.insert(parts.end(), out->begin(), out->end());
    pos += size;
  }
  EXPECT_EQ(st->num_tokens(), 150);
  ASSERT_EQ(parts.size(), whole.size());
  EXPECT_LT(MaxDiff(parts.data(), whole.data(), whole.size()), 1e-4f);
  // Logits are not degenerate: a comparison of constants would prove nothing.
  const auto [lo, hi] = std::minmax_element(whole.begin(), whole.end());
  EXPECT_GT(*hi - *lo, 1.0f);
}

TEST_F(EngineTest, ThreadCountDoesNotChangeResults) {
  const auto prompt = Prompt(130, 8);
  omp_set_num_threads(1);
  const auto one = Alone(prompt);
  omp_set_num_threads(2);
  const auto two = Alone(prompt);
  omp_set_num_threads(1);
  EXPECT_LT(MaxDiff(one.data(), two.data(), one.size()), 1e-5f);
}

TEST_F(EngineTest, LastTokenLogitsOnlyWhenAsked) {
  const auto prompt = Prompt(12, 5);
  const auto all = Alone(prompt);
  auto st = model_->NewSequence();
  SequenceInput in{st.get(), prompt, false};
  auto last = model_->Forward({&in, 1});
  ASSERT_TRUE(last.ok());
  ASSERT_EQ(last->size(), 300u);
  EXPECT_LT(MaxDiff(last->data(), all.data() + 11 * 300, 300), 1e-5f);
}

TEST_F(EngineTest, RejectsBadTokensAndEmptyInput) {
  auto st = model_->NewSequence();
  std::vector<int32_t> bad = {1, 300};
  SequenceInput in{st.get(), bad, false};
  auto out = model_->Forward({&in, 1});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("token id 300 at position 1"), std::string::npos)
      << out.status();
  std::vector<int32_t> negative = {-5};
  in.tokens = negative;
  EXPECT_FALSE(model_->Forward({&in, 1}).ok());
  in.tokens = {};
  out = model_->Forward({&in, 1});
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("no tokens"), std::string::npos);
  // A rejected step leaves the sequence untouched.
  EXPECT_EQ(st->num_tokens(), 0);
}

TEST_F(EngineTest, ExpertSliceNeedsACommunicator) {
  LoadOptions options;
  options.experts = std::vector<int64_t>{0, 1, 2, 3};
  auto weights = ModelWeights::Load(*dir_, options);
  ASSERT_TRUE(weights.ok()) << weights.status();
  Qwen3NextModel sliced(std::move(*weights), backend_.get());
  auto st = sliced.NewSequence();
  std::vector<int32_t> p = {1, 2};
  SequenceInput in{st.get(), p, false};
  auto out = sliced.Forward({&in, 1});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
}

// Weights kept in bf16 (widened on the fly) give the logits of the same values stored as fp32.
TEST_F(EngineTest, Bf16WeightsEqualTheirF32Widening) {
  const std::string bf16_dir = *dir_ + "_bf16", f32_dir = *dir_ + "_widened";
  RandomCheckpointOptions options;
  options.dtype = DType::kBF16;
  ASSERT_TRUE(WriteRandomCheckpoint(TestConfig(), bf16_dir, options).ok());
  {  // The fp32 twin: every tensor widened exactly.
    auto ckpt = Checkpoint::Open(bf16_dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    SafetensorsWriter writer;
    for (const std::string& name : (*ckpt)->TensorNames()) {
      const TensorInfo* t = (*ckpt)->Find(name);
      std::vector<float> wide(t->numel());
      ConvertToF32(t->dtype, t->data, wide.data(), wide.size());
      writer.AddFloat(name, DType::kF32, t->shape, wide.data());
    }
    std::filesystem::create_directories(f32_dir);
    ASSERT_TRUE(writer.WriteFile(f32_dir + "/model.safetensors").ok());
    std::filesystem::copy_file(bf16_dir + "/config.json", f32_dir + "/config.json");
  }
  std::vector<std::vector<float>> logits;
  for (const std::string& dir : {bf16_dir, f32_dir}) {
    auto weights = ModelWeights::Load(dir);
    ASSERT_TRUE(weights.ok()) << weights.status();
    Qwen3NextModel model(std::move(*weights), backend_.get());
    const auto prompt = Prompt(20, 6);
    auto st = model.NewSequence();
    SequenceInput in{st.get(), prompt, true};
    auto out = model.Forward({&in, 1});
    ASSERT_TRUE(out.ok()) << out.status();
    logits.push_back(*out);
  }
  EXPECT_LT(MaxDiff(logits[0].data(), logits[1].data(), logits[0].size()), 1e-4f);
  std::filesystem::remove_all(bf16_dir);
  std::filesystem::remove_all(f32_dir);
}

}  // namespace
}  // namespace nextserve
