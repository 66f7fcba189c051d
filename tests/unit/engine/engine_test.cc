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

// After warm-up a step allocates no backend memory: the workspace, the metadata buffer and the
// cache arenas are reused. 100 steps of a batch that mixes decode tokens and a prompt chunk.
TEST_F(EngineTest, WarmStepsAllocateNoBackendMemory) {
  model_->ReserveWorkspace(64);
  std::vector<std::unique_ptr<SequenceState>> states;
  std::vector<std::vector<int32_t>> feed;
  for (int i = 0; i < 4; ++i) {
    states.push_back(model_->NewSequence());
    feed.push_back(Prompt(5 + i, i));
  }
  auto step = [&](int64_t k) {
    std::vector<SequenceInput> batch;
    for (size_t i = 0; i < states.size(); ++i) batch.push_back({states[i].get(), feed[i], false});
    auto logits = model_->Forward(batch);
    ASSERT_TRUE(logits.ok()) << logits.status();
    for (size_t i = 0; i < states.size(); ++i) {
      // Sequence 3 keeps taking 3-token chunks; the others decode one token a step.
      feed[i] = i == 3 ? Prompt(3, static_cast<int32_t>(k))
                       : std::vector<int32_t>{static_cast<int32_t>((k + i) % 300)};
    }
  };
  for (int64_t k = 0; k < 3; ++k) step(k);
  const int64_t before = backend_->allocations();
  for (int64_t k = 3; k < 103; ++k) step(k);
  EXPECT_EQ(backend_->allocations(), before);
  EXPECT_EQ(states[0]->num_tokens(), 5 + 102);  // the prompt, then one token a step
}

// The runner's metadata for a mixed batch: ids, positions, cu_seqlens, context lengths, the slot
// mapping through each sequence's own blocks, the block table and the logit rows.
TEST_F(EngineTest, RunnerBuildsTheStepMetadata) {
  auto a = model_->NewSequence();
  auto b = model_->NewSequence();
  const auto pa = Prompt(70, 1), pb = Prompt(3, 2);  // a crosses a 64-token block
  SequenceInput first[] = {{a.get(), std::span<const int32_t>(pa).first(66), false, true}};
  ASSERT_TRUE(model_->Forward(first).ok());
  ModelRunner runner(backend_.get(), &model_->cache_pool(), model_->config().vocab_size);
  SequenceInput batch[] = {{a.get(), std::span<const int32_t>(pa).subspan(66), false},
                           {b.get(), pb, true}};
  auto meta = runner.Prepare(batch);
  ASSERT_TRUE(meta.ok()) << meta.status();
  const kernels::StepMeta& m = runner.host_meta();
  ASSERT_EQ(m.num_seqs, 2);
  ASSERT_EQ(m.num_tokens, 7);
  EXPECT_EQ(m.num_logit_rows, 1 + 3);
  EXPECT_EQ(m.max_blocks_per_seq, 2);
  EXPECT_EQ(m.max_query_len, 4);
  EXPECT_EQ(m.max_context_len, 70);
  EXPECT_EQ(std::vector<int32_t>(m.cu_seqlens_q, m.cu_seqlens_q + 3),
            (std::vector<int32_t>{0, 4, 7}));
  EXPECT_EQ(std::vector<int32_t>(m.context_lens, m.context_lens + 2),
            (std::vector<int32_t>{70, 3}));
  EXPECT_EQ(std::vector<int32_t>(m.positions, m.positions + 7),
            (std::vector<int32_t>{66, 67, 68, 69, 0, 1, 2}));
  EXPECT_EQ(std::vector<int32_t>(m.token_ids, m.token_ids + 4),
            std::vector<int32_t>(pa.begin() + 66, pa.end()));
  const int32_t bs = m.block_size;
  ASSERT_EQ(a->blocks().size(), 2u);
  ASSERT_EQ(b->blocks().size(), 1u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(m.slot_mapping[i], a->blocks()[1] * bs + 2 + i);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(m.slot_mapping[4 + i], b->blocks()[0] * bs + i);
  EXPECT_EQ(m.block_table[0], a->blocks()[0]);
  EXPECT_EQ(m.block_table[1], a->blocks()[1]);
  EXPECT_EQ(m.block_table[2], b->blocks()[0]);
  EXPECT_EQ(std::vector<int32_t>(m.state_slots, m.state_slots + 2),
            (std::vector<int32_t>{a->slot(), b->slot()}));
  EXPECT_EQ(std::vector<int32_t>(m.logit_rows, m.logit_rows + 4),
            (std::vector<int32_t>{3, 4, 5, 6}));
  // The backend's copy holds the same values.
  std::vector<int32_t> uploaded(7);
  backend_->CopyToHost(meta->positions, uploaded.data(), 7 * sizeof(int32_t));
  EXPECT_EQ(uploaded, std::vector<int32_t>(m.positions, m.positions + 7));
}

}  // namespace
}  // namespace nextserve
