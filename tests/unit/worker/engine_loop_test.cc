// The rank's engine loop: continuous batching must not change tokens (including across preemption
// by recompute), and aborted or finished requests give their cache back at once.
#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"
#include "worker/engine.h"

namespace nextserve::worker {
namespace {

using namespace std::chrono_literals;

std::string TestId(int seed, const char* what) {
  return std::string(what) + std::to_string(seed);
}

class EngineLoopTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(std::filesystem::temp_directory_path() /
                           ("engine_loop_test_" + std::to_string(getpid())));
    auto c = PresetConfig("micro");
    c->vocab_size = 400;
    c->max_position_embeddings = 4096;
    c->eos_token_ids = {};
    RandomCheckpointOptions options;
    options.dtype = DType::kF32;
    ASSERT_TRUE(WriteRandomCheckpoint(*c, *dir_, options).ok());
    auto w = ModelWeights::Load(*dir_);
    ASSERT_TRUE(w.ok()) << w.status();
    weights_ = new std::shared_ptr<const ModelWeights>(std::move(*w));
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    delete weights_;
  }
  std::unique_ptr<Engine> MakeEngine(int64_t blocks, int64_t slots, int64_t block_size = 16,
                                     int64_t batch_tokens = 64) {
    EngineOptions options;
    options.cache = {block_size, blocks, slots};
    options.scheduler = {batch_tokens, 16};
    return std::make_unique<Engine>(*weights_, backend_.get(), options);
  }
  static SubmitSpec Spec(const std::string& id, int64_t prompt_len, int64_t max_tokens, int seed) {
    SubmitSpec s;
    s.id = id;
    for (int64_t i = 0; i < prompt_len; ++i)
      s.prompt.push_back(static_cast<int32_t>((seed * 37 + i * 11) % 400));
    s.max_tokens = max_tokens;
    s.sampling.temperature = seed % 2 ? 0.0f : 0.8f;  // greedy and seeded sampling
    s.sampling.top_p = 0.9f;
    s.sampling.seed = seed;
    return s;
  }
  // Collects a request's tokens until it finishes.
  static std::pair<std::vector<int32_t>, Finish> Drain(OutputChannel& ch) {
    std::vector<int32_t> tokens;
    while (true) {
      RankOutput out;
      if (!ch.Pop(&out, 30s)) return {tokens, Finish::kError};
      tokens.insert(tokens.end(), out.tokens.begin(), out.tokens.end());
      if (out.finish != Finish::kNone) return {tokens, out.finish};
    }
  }
  static void WaitIdle(Engine& e) {
    for (int i = 0; i < 500 && (e.Load().running > 0 || e.Load().waiting > 0); ++i)
      std::this_thread::sleep_for(5ms);
  }

  static std::string* dir_;
  static std::shared_ptr<const ModelWeights>* weights_;
  std::unique_ptr<kernels::Backend> backend_ = kernels::MakeCpuBackend();
};
std::string* EngineLoopTest::dir_ = nullptr;
std::shared_ptr<const ModelWeights>* EngineLoopTest::weights_ = nullptr;

TEST_F(EngineLoopTest, ConcurrentRequestsGiveTheirAloneTokens) {
  const std::vector<SubmitSpec> specs = {Spec("a", 5, 20, 1), Spec("b", 90, 12, 2),
                                         Spec("c", 1, 25, 3), Spec("d", 33, 16, 4),
                                         Spec("e", 70, 8, 5)};
  std::vector<std::vector<int32_t>> alone;
  {
    auto engine = MakeEngine(256, 8);
    for (const auto& s : specs) {
      auto ch = engine->Submit(s);
      ASSERT_TRUE(ch.ok()) << ch.status();
      auto [tokens, finish] = Drain(**ch);
      EXPECT_EQ(finish, Finish::kLength);
      EXPECT_EQ(static_cast<int64_t>(tokens.size()), s.max_tokens);
      alone.push_back(tokens);
    }
  }
  auto engine = MakeEngine(256, 8);
  std::vector<std::shared_ptr<OutputChannel>> channels;
  for (const auto& s : specs) channels.push_back(*engine->Submit(s));
  for (size_t i = 0; i < specs.size(); ++i)
    EXPECT_EQ(Drain(*channels[i]).first, alone[i]) << specs[i].id;
  WaitIdle(*engine);
  const EngineLoad load = engine->Load();
  EXPECT_EQ(load.free_blocks, load.total_blocks);
  EXPECT_EQ(load.free_slots, load.total_slots);
}

// A request moved from a lost rank arrives with its output so far at the end of the prompt
// (already_generated): the rest equals the uninterrupted run, greedy and seeded, penalties and
// min_tokens included.
TEST_F(EngineLoopTest, ResumedRequestContinuesTheUninterruptedRun) {
  auto engine = MakeEngine(256, 8);
  for (int seed : {1, 2}) {  // odd: greedy, even: seeded sampling
    SubmitSpec whole = Spec(TestId(seed, "whole"), 9, 24, seed);
    whole.sampling.presence_penalty = 0.6f;
    whole.sampling.frequency_penalty = 0.3f;
    whole.sampling.repetition_penalty = 1.2f;
    whole.sampling.min_tokens = 16;
    whole.sampling.stop_token_ids = {7};
    auto ch = engine->Submit(whole);
    ASSERT_TRUE(ch.ok()) << ch.status();
    const auto [expected, finish] = Drain(**ch);
    ASSERT_TRUE(finish == Finish::kLength || finish == Finish::kStopToken);
    ASSERT_GE(expected.size(), 17u);  // min_tokens holds the stop id back
    const int64_t n = static_cast<int64_t>(expected.size());
    for (int64_t done : {int64_t{1}, int64_t{10}, n - 1}) {
      SubmitSpec resumed = whole;
      resumed.id = TestId(seed, "resumed") + std::to_string(done);
      resumed.prompt.insert(resumed.prompt.end(), expected.begin(), expected.begin() + done);
      resumed.already_generated = done;
      resumed.max_tokens = 24 - done;
      auto rch = engine->Submit(resumed);
      ASSERT_TRUE(rch.ok()) << rch.status();
      const auto [rest, rfinish] = Drain(**rch);
      EXPECT_EQ(rfinish, finish);
      EXPECT_EQ(rest, std::vector<int32_t>(expected.begin() + done, expected.end()))
          << "seed " << seed << ", resumed after " << done;
    }
  }
  SubmitSpec bad = Spec("bad", 3, 5, 1);
  bad.already_generated = 4;
  auto refused = engine->Submit(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("already_generated"), std::string::npos)
      << refused.status();
}

// So few blocks that running requests must be preempted and recomputed: same tokens regardless.
TEST_F(EngineLoopTest, PreemptionByRecomputeKeepsTokens) {
  const std::vector<SubmitSpec> specs = {Spec("p", 40, 30, 7), Spec("q", 40, 30, 8),
                                         Spec("r", 40, 30, 9)};
  std::vector<std::vector<int32_t>> alone;
  {
    auto engine = MakeEngine(256, 8);
    for (const auto& s : specs) alone.push_back(Drain(**engine->Submit(s)).first);
  }
  auto engine = MakeEngine(/*blocks=*/10, 8, /*block_size=*/16);  // 160 tokens for 3 x 70
  std::vector<std::shared_ptr<OutputChannel>> channels;
  for (const auto& s : specs) channels.push_back(*engine->Submit(s));
  for (size_t i = 0; i < specs.size(); ++i)
    EXPECT_EQ(Drain(*channels[i]).first, alone[i]) << specs[i].id;
  WaitIdle(*engine);
  EXPECT_GT(engine->Load().preemptions, 0);
  EXPECT_EQ(engine->Load().free_blocks, 10);
}

TEST_F(EngineLoopTest, AbortFreesTheCacheAtOnce) {
  auto engine = MakeEngine(64, 4);
  auto ch = engine->Submit(Spec("long", 20, 900, 1));
  ASSERT_TRUE(ch.ok());
  RankOutput out;
  do {
    ASSERT_TRUE((*ch)->Pop(&out, 10s));
  } while (out.tokens.empty());
  EXPECT_LT(engine->Load().free_blocks, 64);
  EXPECT_TRUE(engine->Abort("long"));
  EXPECT_EQ(Drain(**ch).second, Finish::kAborted);
  WaitIdle(*engine);
  EXPECT_EQ(engine->Load().free_blocks, 64);
  EXPECT_EQ(engine->Load().free_slots, 4);
  EXPECT_FALSE(engine->Abort("long"));  // finished: unknown now
}

TEST_F(EngineLoopTest, RejectsBadSubmissions) {
  auto engine = MakeEngine(64, 4);
  SubmitSpec bad = Spec("x", 3, 4, 1);
  bad.prompt[1] = 400;
  auto r = engine->Submit(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("prompt_ids[1]"), std::string::npos) << r.status();
  bad = Spec("x", 3, 5000, 1);
  EXPECT_EQ(engine->Submit(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = Spec("x", 0, 4, 1);
  EXPECT_EQ(engine->Submit(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = Spec("x", 3, 4, 1);
  bad.sampling.top_p = 1.5f;
  r = engine->Submit(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("top_p"), std::string::npos) << r.status();
  // Same id twice while running.
  auto first = engine->Submit(Spec("dup", 3, 900, 1));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(engine->Submit(Spec("dup", 3, 4, 1)).status().code(), absl::StatusCode::kAlreadyExists);
  engine->Abort("dup");
  Drain(**first);
}

TEST_F(EngineLoopTest, RequestLargerThanTheCacheIsRefused) {
  auto engine = MakeEngine(/*blocks=*/2, 4, /*block_size=*/16);  // 32 tokens in all
  EXPECT_EQ(engine->max_context(), 32);
  auto ch = engine->Submit(Spec("big", 30, 4, 1));
  ASSERT_FALSE(ch.ok());
  EXPECT_NE(ch.status().message().find("exceeds the context of 32 tokens"), std::string::npos)
      << ch.status();
  // The rank still serves what fits.
  auto ok = engine->Submit(Spec("small", 10, 4, 1));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(Drain(**ok).second, Finish::kLength);
}

}  // namespace
// A step without logprob requests samples every row with the backend's SampleRows; one with a
// logprob request takes the host Sampler for all. Both give the same tokens for the same seeds
// and penalties, alone and batched together.
TEST_F(EngineLoopTest, BackendSamplingEqualsHostSampling) {
  std::vector<SubmitSpec> specs;
  for (int i = 0; i < 4; ++i) {
    SubmitSpec s = Spec("s" + std::to_string(i), 6 + 5 * i, 18, 2 * i);  // even seeds: sampled
    s.sampling.top_k = 40;
    s.sampling.repetition_penalty = 1.3f;
    s.sampling.frequency_penalty = 0.4f;
    s.sampling.min_tokens = 3;
    specs.push_back(s);
  }
  auto run = [&](bool logprobs) {
    auto engine = MakeEngine(256, 8);
    std::vector<std::shared_ptr<OutputChannel>> channels;
    for (SubmitSpec s : specs) {
      s.sampling.logprobs = logprobs ? 0 : -1;
      auto ch = engine->Submit(s);
      EXPECT_TRUE(ch.ok()) << ch.status();
      channels.push_back(*ch);
    }
    std::vector<std::vector<int32_t>> tokens;
    for (auto& ch : channels) tokens.push_back(Drain(*ch).first);
    return tokens;
  };
  const auto on_backend = run(false), on_host = run(true);
  ASSERT_EQ(on_backend.size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(on_backend[i].size(), 18u);
    EXPECT_EQ(on_backend[i], on_host[i]) << specs[i].id;
  }
  EXPECT_NE(on_backend[0], on_backend[1]);  // the seeds matter: the test can tell rows apart
}

}  // namespace nextserve::worker
