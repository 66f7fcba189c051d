// The prefix cache: shared full KV blocks (reference counts, chained hashes, LRU eviction) and
// DeltaNet state snapshots. A hit must give the logits of a cold prefill of the same prompt and the
// same greedy tokens, across block and snapshot boundaries, evictions and preemption, and every
// block must be free or cached-unreferenced when everything is done.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/qwen3_next.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"
#include "worker/engine.h"

namespace nextserve::worker {
namespace {

using namespace std::chrono_literals;

constexpr int64_t kVocab = 400;

class PrefixCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(std::filesystem::temp_directory_path() /
                           ("prefix_cache_test_" + std::to_string(getpid())));
    auto c = PresetConfig("micro");
    c->vocab_size = kVocab;
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

  static std::vector<int32_t> Tokens(int64_t n, int seed) {
    std::vector<int32_t> t(n);
    for (int64_t i = 0; i < n; ++i)
      t[i] = static_cast<int32_t>((seed * 37 + i * 11 + i * i) % kVocab);
    return t;
  }
  static std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
  static float MaxDiff(std::span<const float> a, std::span<const float> b) {
    EXPECT_EQ(a.size(), b.size());
    float m = 0;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
      m = std::max(m, std::abs(a[i] - b[i]));
    return m;
  }

  // The model with a prefix-cached pool of `blocks` x 16 tokens.
  std::unique_ptr<Qwen3NextModel> Model(int64_t blocks, int64_t snapshots = 8,
                                        DType kv_dtype = DType::kF32) {
    CacheLimits limits{
        .block_size = 16, .max_blocks = blocks, .max_slots = 4, .kv_dtype = kv_dtype};
    limits.prefix_cache = true;
    limits.max_snapshots = snapshots;
    return std::make_unique<Qwen3NextModel>(*weights_, backend_.get(), limits);
  }
  // Runs tokens[from, to) on `st` with logits for every token.
  static std::vector<float> Run(Qwen3NextModel& m, SequenceState& st, std::span<const int32_t> t,
                                int64_t from, int64_t to) {
    SequenceInput in{&st, t.subspan(from, to - from), /*all_logits=*/true};
    auto out = m.Forward({&in, 1});
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : std::vector<float>{};
  }
  static std::span<const float> Rows(const std::vector<float>& logits, int64_t from, int64_t to) {
    return std::span<const float>(logits).subspan(from * kVocab, (to - from) * kVocab);
  }

  std::unique_ptr<Engine> MakeEngine(bool prefix_cache, int64_t blocks, int64_t slots = 8,
                                     int64_t snapshots = 16, int64_t snapshot_every = 32) {
    EngineOptions options;
    options.cache = {16, blocks, slots};
    options.cache.prefix_cache = prefix_cache;
    options.cache.max_snapshots = snapshots;
    options.scheduler = {64, 16, snapshot_every};
    return std::make_unique<Engine>(*weights_, backend_.get(), options);
  }
  static SubmitSpec Greedy(const std::string& id, std::vector<int32_t> prompt, int64_t max_tokens) {
    SubmitSpec s;
    s.id = id;
    s.prompt = std::move(prompt);
    s.max_tokens = max_tokens;
    s.sampling.temperature = 0.0f;
    return s;
  }
  static std::vector<int32_t> Drain(OutputChannel& ch) {
    std::vector<int32_t> tokens;
    while (true) {
      RankOutput out;
      if (!ch.Pop(&out, 30s)) return {};
      tokens.insert(tokens.end(), out.tokens.begin(), out.tokens.end());
      if (out.finish != Finish::kNone) return tokens;
    }
  }
  static void WaitIdle(Engine& e) {
    for (int i = 0; i < 500 && (e.Load().running > 0 || e.Load().waiting > 0); ++i)
      std::this_thread::sleep_for(5ms);
  }
  // Multi-turn chat: each turn's prompt is the previous prompt + its answer + a new user turn.
  static std::vector<std::vector<int32_t>> Conversation(Engine& e, int seed, int turns,
                                                        const std::vector<int32_t>& system) {
    std::vector<std::vector<int32_t>> answers;
    std::vector<int32_t> prompt = system;
    for (int t = 0; t < turns; ++t) {
      prompt = Concat(prompt, Tokens(7 + 13 * t, seed * 10 + t));
      auto ch = e.Submit(Greedy("c" + std::to_string(seed) + "t" + std::to_string(t), prompt, 6));
      EXPECT_TRUE(ch.ok()) << ch.status();
      if (!ch.ok()) return answers;
      answers.push_back(Drain(**ch));
      prompt = Concat(prompt, answers.back());
    }
    return answers;
  }

  static std::string* dir_;
  static std::shared_ptr<const ModelWeights>* weights_;
  std::unique_ptr<kernels::Backend> backend_ = kernels::MakeCpuBackend();
};
std::string* PrefixCacheTest::dir_ = nullptr;
std::shared_ptr<const ModelWeights>* PrefixCacheTest::weights_ = nullptr;

TEST_F(PrefixCacheTest, ChainedHashDependsOnParentAndTokens) {
  const std::vector<int32_t> a = {1, 2, 3}, b = {1, 2, 4};
  EXPECT_EQ(HashTokens(kRootHash, a), HashTokens(kRootHash, a));
  EXPECT_NE(HashTokens(kRootHash, a), HashTokens(kRootHash, b));
  EXPECT_NE(HashTokens(kRootHash, a), HashTokens(HashTokens(kRootHash, b), a));
}

TEST_F(PrefixCacheTest, BlocksAreSharedCachedAndEvictedLeastRecentlyUsedFirst) {
  auto m = Model(/*blocks=*/4);
  CachePool& pool = m->cache_pool();
  const auto t = Tokens(64, 1);
  {
    SequenceState a(&pool);
    ASSERT_TRUE(a.Reserve(40).ok());  // 3 blocks
    a.Advance(40);
    a.Publish(t);  // two full blocks enter the index
    EXPECT_EQ(pool.stats().cached_blocks, 2);
    EXPECT_EQ(pool.free_blocks(), 1);
  }
  // Released: the two cached blocks are unreferenced but still found, and count as free.
  EXPECT_EQ(pool.free_blocks(), 4);
  const int32_t first =
      pool.FindBlock(HashTokens(kRootHash, std::span(t).first(16)), std::span(t).first(16));
  ASSERT_GE(first, 0);
  // Another block content under the same hash is a miss (tokens are checked).
  EXPECT_EQ(
      pool.FindBlock(HashTokens(kRootHash, std::span(t).first(16)), std::span(t).subspan(16, 16)),
      -1);
  pool.AcquireBlock(first);  // referenced again: not evictable
  EXPECT_EQ(pool.free_blocks(), 3);
  // Three new blocks: two from the free list, then the one unreferenced cached block is evicted.
  std::vector<int32_t> got;
  for (int i = 0; i < 3; ++i) got.push_back(*pool.AllocateBlock());
  EXPECT_EQ(pool.stats().block_evictions, 1);
  EXPECT_EQ(pool.stats().cached_blocks, 1);
  EXPECT_FALSE(pool.AllocateBlock().ok());  // all four referenced
  for (int32_t b : got) pool.FreeBlock(b);
  pool.FreeBlock(first);
  EXPECT_EQ(pool.free_blocks(), 4);
}

// A prompt whose prefix another sequence ran gives the cold prefill's logits: a snapshot inside a
// block (its partial block's rows are copied), one at a block boundary, and the longest one wins.
TEST_F(PrefixCacheTest, HitGivesColdLogitsAcrossBlockAndSnapshotBoundaries) {
  auto m = Model(/*blocks=*/32);
  CachePool& pool = m->cache_pool();
  const auto prompt = Tokens(100, 2);
  std::vector<float> cold;
  {
    SequenceState st(&pool);
    cold = Run(*m, st, prompt, 0, 100);
  }
  {
    SequenceState a(&pool);
    Run(*m, a, prompt, 0, 50);
    a.Snapshot(prompt);  // inside block 3
    Run(*m, a, prompt, 50, 80);
    a.Snapshot(prompt);  // at the end of block 5
  }
  {
    SequenceState b(&pool);
    EXPECT_EQ(b.AttachPrefix(prompt), 80);
    EXPECT_EQ(b.num_tokens(), 80);
    const auto hit = Run(*m, b, prompt, 80, 100);
    EXPECT_LT(MaxDiff(hit, Rows(cold, 80, 100)), 1e-4f);
  }
  // Diverges at 60: only the snapshot at 50 (48 tokens of full blocks + 2 copied rows) is usable.
  auto other = prompt;
  for (size_t i = 60; i < other.size(); ++i) other[i] = (other[i] + 7) % kVocab;
  std::vector<float> other_cold;
  {
    SequenceState st(&pool);
    other_cold = Run(*m, st, other, 0, 100);
  }
  {
    SequenceState c(&pool);
    EXPECT_EQ(c.AttachPrefix(other), 50);
    const auto hit = Run(*m, c, other, 50, 100);
    EXPECT_LT(MaxDiff(hit, Rows(other_cold, 50, 100)), 1e-4f);
    // Logits are not degenerate: a comparison of constants would prove nothing.
    const auto [lo, hi] = std::minmax_element(hit.begin(), hit.end());
    EXPECT_GT(*hi - *lo, 1.0f);
  }
  // A prompt that IS a snapshot's prefix still runs its last token (p < prompt length).
  {
    SequenceState d(&pool);
    EXPECT_EQ(d.AttachPrefix(std::span(prompt).first(80)), 50);
  }
  EXPECT_EQ(pool.free_blocks(), 32);
  EXPECT_EQ(pool.free_slots(), 4);
}

// bf16 KV: the partial block's rows are copied in the arena's dtype (2 bytes a value).
TEST_F(PrefixCacheTest, Bf16KvHitEqualsBf16ColdPrefill) {
  auto m = Model(/*blocks=*/32, 8, DType::kBF16);
  CachePool& pool = m->cache_pool();
  const auto prompt = Tokens(90, 7);
  std::vector<float> cold;
  {
    SequenceState st(&pool);
    cold = Run(*m, st, prompt, 0, 90);
  }
  {
    SequenceState a(&pool);
    Run(*m, a, prompt, 0, 41);
    a.Snapshot(prompt);
    // Past the snapshot, so that no block left in the free list holds rows 32..40 by chance.
    Run(*m, a, prompt, 41, 90);
  }
  SequenceState b(&pool);
  EXPECT_EQ(b.AttachPrefix(prompt), 41);
  EXPECT_LT(MaxDiff(Run(*m, b, prompt, 41, 90), Rows(cold, 41, 90)), 1e-4f);
}

// Snapshots over budget are evicted least recently used first; a hit needs its snapshot.
TEST_F(PrefixCacheTest, SnapshotBudgetEvictsLeastRecentlyUsed) {
  auto m = Model(/*blocks=*/32, /*snapshots=*/2);
  CachePool& pool = m->cache_pool();
  const auto prompt = Tokens(70, 3);
  {
    SequenceState a(&pool);
    for (int64_t end : {20, 40, 60}) {
      Run(*m, a, prompt, a.num_tokens(), end);
      a.Snapshot(prompt);
    }
  }
  EXPECT_EQ(pool.stats().snapshots_used, 2);
  EXPECT_EQ(pool.stats().snapshot_evictions, 1);
  SequenceState b(&pool);
  EXPECT_EQ(b.AttachPrefix(std::span(prompt).first(41)), 40);
  b.Reset();
  EXPECT_EQ(b.AttachPrefix(std::span(prompt).first(39)), 0);  // the one at 20 is gone
}

// Multi-turn chats through the engine: greedy tokens equal those without the cache, later turns
// reuse the earlier turns' tokens, and everything is free or cached-unreferenced at the end.
TEST_F(PrefixCacheTest, MultiTurnChatTokensEqualTheUncachedRun) {
  const auto system = Tokens(45, 9);
  std::vector<std::vector<std::vector<int32_t>>> expected;
  {
    auto engine = MakeEngine(false, 256);
    for (int c = 0; c < 2; ++c) expected.push_back(Conversation(*engine, c, 3, system));
  }
  auto engine = MakeEngine(true, 256);
  for (int c = 0; c < 2; ++c) EXPECT_EQ(Conversation(*engine, c, 3, system), expected[c]) << c;
  WaitIdle(*engine);
  const EngineLoad load = engine->Load();
  EXPECT_EQ(load.free_blocks, load.total_blocks);
  EXPECT_EQ(load.free_slots, load.total_slots);
  EXPECT_EQ(load.prefix_queries, 6);
  EXPECT_EQ(load.prefix_hits, 5);  // all but the very first request
  EXPECT_GT(load.prefix_hit_tokens, load.prefix_query_tokens / 2);
}

// So few blocks that cached blocks are evicted and running requests preempted: same tokens.
TEST_F(PrefixCacheTest, TinyPoolEvictionAndPreemptionKeepTokens) {
  const auto system = Tokens(40, 4);
  std::vector<SubmitSpec> specs;
  for (int i = 0; i < 3; ++i)
    specs.push_back(
        Greedy("p" + std::to_string(i), Concat(system, Tokens(10 + 5 * i, 20 + i)), 30));
  std::vector<std::vector<int32_t>> alone;
  {
    auto engine = MakeEngine(false, 256);
    for (const auto& s : specs) alone.push_back(Drain(**engine->Submit(s)));
  }
  auto engine = MakeEngine(true, /*blocks=*/12, 8, /*snapshots=*/4);  // 192 tokens for 3 x ~85
  for (int round = 0; round < 2; ++round) {
    std::vector<std::shared_ptr<OutputChannel>> channels;
    for (const auto& s : specs) channels.push_back(*engine->Submit(s));
    for (size_t i = 0; i < specs.size(); ++i)
      EXPECT_EQ(Drain(*channels[i]), alone[i]) << specs[i].id << " round " << round;
    WaitIdle(*engine);
  }
  const EngineLoad load = engine->Load();
  EXPECT_GT(load.preemptions, 0);
  EXPECT_GT(load.block_evictions, 0);
  EXPECT_GT(load.prefix_hits, 0);
  EXPECT_EQ(load.free_blocks, 12);
  EXPECT_EQ(load.free_slots, 8);
}

// Long prompts are chunked at the snapshot points; a later prompt sharing 70 of its tokens resumes
// from the snapshot at 64 with the uncached run's tokens.
TEST_F(PrefixCacheTest, SnapshotsInsideLongPromptsAreUsed) {
  const auto first = Tokens(100, 5);
  auto second = std::vector<int32_t>(first.begin(), first.begin() + 70);
  second = Concat(second, Tokens(20, 6));
  std::vector<int32_t> expected;
  {
    auto engine = MakeEngine(false, 256);
    expected = Drain(**engine->Submit(Greedy("b", second, 8)));
  }
  auto engine = MakeEngine(true, 256, 8, 16, /*snapshot_every=*/32);
  Drain(**engine->Submit(Greedy("a", first, 4)));
  EXPECT_EQ(Drain(**engine->Submit(Greedy("b", second, 8))), expected);
  WaitIdle(*engine);
  const EngineLoad load = engine->Load();
  EXPECT_EQ(load.prefix_hit_tokens, 64);
  EXPECT_EQ(load.free_blocks, load.total_blocks);
}

}  // namespace
}  // namespace nextserve::worker
