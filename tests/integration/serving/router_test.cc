// The router against scripted ranks (nextserve-fake-rank: each request echoes its prompt, one
// token per step), so that text, stop strings, usage, queueing, cancellation and rank loss can be
// checked exactly and fast, independent of the model.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

std::unique_ptr<Cluster> StartFake(ClusterOptions options) {
  absl::StatusOr<std::string> dir = TestModelDir();
  EXPECT_TRUE(dir.ok()) << dir.status();
  if (!dir.ok()) return nullptr;
  options.fake_ranks = true;
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::Start(*dir, options);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? *std::move(cluster) : nullptr;
}

class RouterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_ = StartFake({.ranks = 2}).release(); }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    client_ = sdk::Client::Create(cluster_->router_address());
  }
  std::vector<int32_t> Tokens(const std::string& text) {
    absl::StatusOr<std::vector<int32_t>> ids = client_->Tokenize(text);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }
  Collected Run(const v1::GenerateRequest& req, sdk::CallOptions options = {}) {
    auto stream = client_->StartGenerate(req, options);
    return Collect(*stream);
  }

  static Cluster* cluster_;
  std::unique_ptr<sdk::Client> client_;
};
Cluster* RouterTest::cluster_ = nullptr;

TEST_F(RouterTest, StreamsTextTokensAndUsage) {
  const std::string prompt = "hello world";
  const std::vector<int32_t> ids = Tokens(prompt);
  ASSERT_FALSE(ids.empty());
  v1::GenerateRequest req;
  req.set_text(prompt);
  req.set_max_tokens(static_cast<int>(ids.size()) * 2);
  req.set_request_id("my-id");
  Collected c = Run(req);
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.text(), prompt + prompt);
  std::vector<int32_t> twice = ids;
  twice.insert(twice.end(), ids.begin(), ids.end());
  EXPECT_EQ(c.tokens(), twice);
  ASSERT_TRUE(c.final.has_value());
  EXPECT_EQ(c.final->finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(c.final->usage().prompt_tokens(), static_cast<int>(ids.size()));
  EXPECT_EQ(c.final->usage().completion_tokens(), static_cast<int>(twice.size()));
  EXPECT_GT(c.final->usage().time_to_first_token_s(), 0.0);
  EXPECT_GE(c.final->usage().time_to_first_token_s(), c.final->usage().queue_time_s());
  EXPECT_GE(c.final->usage().queue_time_s(), 0.0);
  // Request ids are echoed; Detokenize agrees with the streamed text.
  auto text = client_->Detokenize(twice);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, c.text());
}

TEST_F(RouterTest, StopStringEndsTheTextBeforeIt) {
  // Echo: "abc def abc def ..." ; the stop string spans tokens and is found in the second pass.
  const std::string prompt = "abc def ";
  v1::GenerateRequest req;
  req.set_text(prompt);
  req.set_max_tokens(40);
  req.add_stop("def abc");
  req.add_stop("zzz");
  Collected c = Run(req);
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.text(), "abc ");
  ASSERT_TRUE(c.final.has_value());
  EXPECT_EQ(c.final->finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(c.final->stop_reason(), "def abc");
  // Usage counts the tokens up to the one that completed the stop string, no more.
  const size_t n = Tokens(prompt).size();
  EXPECT_GT(c.final->usage().completion_tokens(), static_cast<int>(n));
  EXPECT_LT(c.final->usage().completion_tokens(), static_cast<int>(2 * n));
  EXPECT_EQ(c.tokens().size(), static_cast<size_t>(c.final->usage().completion_tokens()));
  // The rank's request was cancelled: both ranks are idle again.
  for (int r = 0; r < cluster_->num_ranks(); ++r)
    EXPECT_TRUE(cluster_->WaitRankIdle(r, absl::Seconds(2)).ok());
}

TEST_F(RouterTest, PartialStopMatchIsHeldBackThenReleased) {
  // "ab" may start "abc": held back while pending, released when the next text does not match,
  // and released at the end of the stream.
  v1::GenerateRequest req;
  req.set_text("x ab");
  req.set_max_tokens(static_cast<int>(Tokens("x ab").size()) * 3);
  req.add_stop("abc");
  Collected c = Run(req);
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.text(), "x abx abx ab");
  EXPECT_EQ(c.final->finish_reason(), v1::FINISH_REASON_LENGTH);
  bool held = false;  // some delta carried the "ab" token without its text
  for (const auto& d : c.deltas) held |= d.token_ids_size() > 0 && d.text().empty();
  EXPECT_TRUE(held);
}

TEST_F(RouterTest, StopTokenEndsWithoutItsText) {
  const std::vector<int32_t> ids = Tokens("hello world");
  ASSERT_GE(ids.size(), 3u);
  v1::GenerateRequest req = IdsRequest(ids, 50);
  req.add_stop_token_ids(ids.back());
  Collected c = Run(req);
  ASSERT_TRUE(c.status.ok()) << c.status;
  ASSERT_TRUE(c.final.has_value());
  EXPECT_EQ(c.final->finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(c.final->stop_reason(), std::to_string(ids.back()));
  EXPECT_EQ(c.tokens(), ids);
  auto all_but_last = client_->Detokenize(std::vector<int32_t>(ids.begin(), ids.end() - 1));
  EXPECT_EQ(c.text(), *all_but_last);
}

TEST_F(RouterTest, MinTokensDelaysStopStrings) {
  v1::GenerateRequest req;
  req.set_text("ab ");
  const int n = static_cast<int>(Tokens("ab ").size());
  req.set_max_tokens(4 * n);
  req.set_min_tokens(2 * n);
  req.add_stop("ab");
  Collected c = Run(req);
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.text(), "ab ab ");
  EXPECT_EQ(c.final->stop_reason(), "ab");
}

TEST_F(RouterTest, LogprobsPassThrough) {
  const std::vector<int32_t> ids = Tokens("hello");
  v1::GenerateRequest req = IdsRequest(ids, 3);
  req.set_logprobs(2);
  auto result = client_->Generate(req);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->logprobs.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(result->logprobs[i].token_id(), result->token_ids[i]);
    EXPECT_EQ(result->logprobs[i].top_size(), 2);
  }
}

TEST_F(RouterTest, ModelInfoTokenizeHealth) {
  auto info = client_->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->vocab_size(), kTestVocab);
  EXPECT_EQ(info->max_context(), kTestContext);
  EXPECT_EQ(info->ranks(), 2);
  ASSERT_EQ(info->eos_token_ids_size(), 1);
  EXPECT_EQ(info->eos_token_ids(0), kTestEos);
  // No generation_config.json: the Qwen3-Next Instruct defaults.
  EXPECT_FLOAT_EQ(info->default_sampling().temperature(), 0.7f);
  EXPECT_FLOAT_EQ(info->default_sampling().top_p(), 0.8f);
  EXPECT_EQ(info->default_sampling().top_k(), 20);
  auto serving = client_->IsServing();
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_TRUE(*serving);
  v1::Chat chat;
  auto* m = chat.add_messages();
  m->set_role("user");
  m->set_content("hi");
  auto ids = client_->TokenizeChat(chat);
  ASSERT_TRUE(ids.ok()) << ids.status();
  auto text = client_->Detokenize(*ids);
  EXPECT_EQ(*text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(ids->front(), kTestEos - 1);  // <|im_start|> is one token
}

TEST_F(RouterTest, ConcurrentRequestsAllComplete) {
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest req = IdsRequest({100 + i, 200 + i}, 20);
      auto result = client_->Generate(req);
      if (result.ok() && result->token_ids.size() == 20 && result->token_ids[1] == 200 + i) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 16);
}

TEST_F(RouterTest, CancelAbortsOnTheRank) {
  v1::GenerateRequest req = IdsRequest({1, 2, 3}, 1500);
  auto stream = client_->StartGenerate(req);
  v1::GenerateResponse r;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Next(&r));
  const absl::Time cancelled = absl::Now();
  stream->Cancel();
  absl::Status s = stream->Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  for (int rank = 0; rank < cluster_->num_ranks(); ++rank) {
    EXPECT_TRUE(cluster_->WaitRankIdle(rank, absl::Seconds(1)).ok());
  }
  EXPECT_LT(absl::Now() - cancelled, absl::Seconds(1));
}

TEST_F(RouterTest, DeadlineEndsTheRequestAndFreesTheRank) {
  v1::GenerateRequest req = IdsRequest({1, 2, 3}, 1500);
  Collected c = Run(req, {.timeout = absl::Milliseconds(200)});
  EXPECT_EQ(c.status.code(), absl::StatusCode::kDeadlineExceeded) << c.status;
  EXPECT_FALSE(c.deltas.empty());
  for (int rank = 0; rank < cluster_->num_ranks(); ++rank) {
    EXPECT_TRUE(cluster_->WaitRankIdle(rank, absl::Seconds(1)).ok());
  }
}

// One rank with one slot and no rank-side queue: the router queue takes 2, the next is refused.
TEST(RouterQueue, FullQueueIsResourceExhaustedAndDeadlinesApplyWhileQueued) {
  auto cluster = StartFake({.ranks = 1,
                            .rank_args = {"--state-slots", "1", "--step-ms", "5"},
                            .router_args = {"--max-queue", "2", "--rank-queue-depth", "0"}});
  ASSERT_NE(cluster, nullptr);
  auto client = sdk::Client::Create(cluster->router_address());
  std::vector<std::unique_ptr<sdk::GenerateStream>> streams;
  v1::GenerateResponse r;
  streams.push_back(client->StartGenerate(IdsRequest({5, 6}, 1000)));
  ASSERT_TRUE(streams[0]->Next(&r));  // running
  for (int i = 0; i < 2; ++i) streams.push_back(client->StartGenerate(IdsRequest({5, 6}, 10)));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // both queued in the router
  Collected refused = [&] {
    auto s = client->StartGenerate(IdsRequest({5, 6}, 10));
    return Collect(*s);
  }();
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kResourceExhausted) << refused.status;
  EXPECT_TRUE(absl::StrContains(refused.status.message(), "queue")) << refused.status;

  // A queued request whose deadline passes.
  streams[2]->Cancel();
  EXPECT_EQ(streams[2]->Finish().code(), absl::StatusCode::kCancelled);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the router sees the cancel
  auto late = client->StartGenerate(IdsRequest({5, 6}, 10), {.timeout = absl::Milliseconds(100)});
  Collected expired = Collect(*late);
  EXPECT_EQ(expired.status.code(), absl::StatusCode::kDeadlineExceeded) << expired.status;

  // Freeing the running one lets the queued one through.
  streams[0]->Cancel();
  EXPECT_EQ(streams[0]->Finish().code(), absl::StatusCode::kCancelled);
  Collected queued = Collect(*streams[1]);
  EXPECT_TRUE(queued.status.ok()) << queued.status;
  EXPECT_EQ(queued.tokens().size(), 10u);
  EXPECT_TRUE(cluster->WaitRankIdle(0, absl::Seconds(1)).ok());
}

// Long streams over two ranks; rank 0 is lost (killed, or stopped so that it no longer answers).
// A killed rank is down at once (its connection breaks); a stopped one after the stated silence.
void CheckRankLoss(bool kill) {
  constexpr absl::Duration kSilence = absl::Seconds(1);
  // The silence runs from the rank's last answer, which came up to one poll before it was lost.
  constexpr absl::Duration kPoll = absl::Milliseconds(150);
  // Without moves, so that the lost rank's streams end (migration is tested below).
  auto cluster = StartFake({.ranks = 2,
                            .rank_args = {"--step-ms", "5"},
                            .router_args = {"--poll-ms", "150", "--probe-timeout-ms", "300",
                                            "--fail-after-ms", "1000", "--max-moves", "0"}});
  ASSERT_NE(cluster, nullptr);
  auto client = sdk::Client::Create(cluster->router_address());
  constexpr int kStreams = 6;
  std::vector<std::unique_ptr<sdk::GenerateStream>> streams;
  v1::GenerateResponse r;
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(client->StartGenerate(IdsRequest({7, 8, 9}, 400)));
    ASSERT_TRUE(streams.back()->Next(&r));
  }
  const absl::Time lost = absl::Now();
  if (kill) {
    cluster->KillRank(0);
  } else {
    cluster->SignalRank(0, SIGSTOP);
  }
  std::vector<Collected> results(kStreams);
  std::vector<std::thread> readers;
  for (int i = 0; i < kStreams; ++i)
    readers.emplace_back([&, i] { results[i] = Collect(*streams[i]); });
  for (auto& t : readers) t.join();
  int unavailable = 0, finished = 0;
  for (const Collected& c : results) {
    if (c.status.code() == absl::StatusCode::kUnavailable) {
      ++unavailable;
      EXPECT_LT(c.end - lost, kill ? absl::Seconds(2) : kSilence + absl::Seconds(2)) << c.status;
      if (!kill) {
        EXPECT_GE(c.end - lost, kSilence - kPoll) << c.status;
      }
      EXPECT_TRUE(absl::StrContains(c.status.message(), cluster->rank_address(0))) << c.status;
    } else {
      EXPECT_TRUE(c.status.ok()) << c.status;
      EXPECT_EQ(c.tokens().size(), 399u);  // after the first token read above
      ++finished;
    }
  }
  EXPECT_EQ(unavailable, kStreams / 2);
  EXPECT_EQ(finished, kStreams / 2);
  // New work goes to the remaining rank only.
  auto info = client->GetModelInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->ranks(), 1);
  for (int i = 0; i < 8; ++i) {
    auto result = client->Generate(IdsRequest({1, 2}, 4), nullptr, {.timeout = absl::Seconds(5)});
    EXPECT_TRUE(result.ok()) << result.status();
  }
  if (!kill) {
    // A stopped rank that resumes is probed healthy again and gets work.
    cluster->SignalRank(0, SIGCONT);
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (absl::Now() < deadline && client->GetModelInfo()->ranks() != 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_EQ(client->GetModelInfo()->ranks(), 2);
    EXPECT_TRUE(cluster->WaitRankIdle(0, absl::Seconds(2)).ok());
  }
}

TEST(RouterRankLoss, KilledRankStreamsEndUnavailableOthersContinue) {
  CheckRankLoss(/*kill=*/true);
}
TEST(RouterRankLoss, StoppedRankStreamsEndUnavailableThenItRejoins) {
  CheckRankLoss(/*kill=*/false);
}

// What a fake rank streams for `prompt`: the prompt again and again.
std::vector<int32_t> Cycle(const std::vector<int32_t>& prompt, int n) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(prompt[i % prompt.size()]);
  return out;
}

// Reads deltas into `c` until it holds at least `n` tokens; false if the stream ended first.
bool ReadUntil(sdk::GenerateStream& stream, Collected& c, size_t n) {
  v1::GenerateResponse r;
  while (c.tokens().size() < n) {
    if (!stream.Next(&r)) return false;
    if (r.has_delta()) {
      c.deltas.push_back(r.delta());
      c.delta_times.push_back(absl::Now());
    }
    if (r.has_final()) c.final = r.final();
  }
  return true;
}

// The rest of the stream appended to `c`.
void ReadRest(sdk::GenerateStream& stream, Collected& c) {
  Collected rest = Collect(stream);
  c.deltas.insert(c.deltas.end(), rest.deltas.begin(), rest.deltas.end());
  c.delta_times.insert(c.delta_times.end(), rest.delta_times.begin(), rest.delta_times.end());
  c.final = rest.final;
  c.status = rest.status;
  c.end = rest.end;
}

// The rank running something (one request in flight in these tests), or -1.
int BusyRank(Cluster& cluster, const std::vector<int>& candidates) {
  for (int i : candidates) {
    absl::StatusOr<internal::v1::LoadReport> load = cluster.RankLoad(i);
    if (load.ok() && load->running() > 0) return i;
  }
  return -1;
}

TEST(RouterMigration, KilledRankStreamMovesWithoutGapOrDuplicate) {
  auto cluster = StartFake({.ranks = 2, .rank_args = {"--step-ms", "5"}});
  ASSERT_NE(cluster, nullptr);
  auto client = sdk::Client::Create(cluster->router_address());
  const std::string prompt = "the quick brown fox ";
  absl::StatusOr<std::vector<int32_t>> ids = client->Tokenize(prompt);
  ASSERT_TRUE(ids.ok()) << ids.status();
  constexpr int kTokens = 200;
  v1::GenerateRequest req;
  req.set_text(prompt);
  req.set_max_tokens(kTokens);
  req.set_min_tokens(kTokens);  // the fake rank counts min_tokens across the move too
  auto stream = client->StartGenerate(req);
  Collected c;
  ASSERT_TRUE(ReadUntil(*stream, c, 30));
  const int busy = BusyRank(*cluster, {0, 1});
  ASSERT_GE(busy, 0);
  cluster->KillRank(busy);
  ReadRest(*stream, c);
  ASSERT_TRUE(c.status.ok()) << c.status << cluster->Logs();
  EXPECT_EQ(c.tokens(), Cycle(*ids, kTokens));
  std::string text;
  for (int i = 0; i < kTokens / static_cast<int>(ids->size()); ++i) text += prompt;
  auto tail =
      client->Detokenize(std::vector<int32_t>(ids->begin(), ids->begin() + kTokens % ids->size()));
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(c.text(), text + *tail);
  ASSERT_TRUE(c.final.has_value());
  EXPECT_EQ(c.final->finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(c.final->usage().completion_tokens(), kTokens);
  EXPECT_EQ(c.final->usage().prompt_tokens(), static_cast<int>(ids->size()));
  EXPECT_TRUE(cluster->WaitRankIdle(1 - busy, absl::Seconds(2)).ok());
  // A figure for the record, not a check: the longest wait between two deltas (the move's stall).
  absl::Duration stall;
  for (size_t i = 1; i < c.delta_times.size(); ++i)
    stall = std::max(stall, c.delta_times[i] - c.delta_times[i - 1]);
  std::printf("longest gap between deltas across the move: %s\n",
              absl::FormatDuration(stall).c_str());
}

// A rank whose group broke answers UNAVAILABLE (scripted here after 10 tokens): the router moves
// the stream rather than failing it.
TEST(RouterMigration, GroupBrokenErrorMovesTheStream) {
  auto cluster = StartFake({.ranks = 2, .rank_args = {"--group-breaks-after", "10"}});
  ASSERT_NE(cluster, nullptr);
  auto client = sdk::Client::Create(cluster->router_address());
  const std::vector<int32_t> prompt = {21, 22, 23};
  Collected c = Collect(*client->StartGenerate(IdsRequest(prompt, 60)));
  ASSERT_TRUE(c.status.ok()) << c.status << cluster->Logs();
  EXPECT_EQ(c.tokens(), Cycle(prompt, 60));
  EXPECT_TRUE(absl::StrContains(cluster->Logs(), "moving it to another rank after 10 tokens"))
      << cluster->Logs();
}

// Broken before its first token: retried once on the other rank, then UNAVAILABLE, never INTERNAL.
TEST(RouterMigration, GroupBrokenBeforeTheFirstTokenIsRetriedThenUnavailable) {
  auto cluster = StartFake({.ranks = 2, .rank_args = {"--group-breaks-after", "0"}});
  ASSERT_NE(cluster, nullptr);
  auto client = sdk::Client::Create(cluster->router_address());
  Collected c = Collect(*client->StartGenerate(IdsRequest({21, 22, 23}, 20)));
  EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable) << c.status;
  EXPECT_TRUE(absl::StrContains(c.status.message(), "expert-parallel group failed")) << c.status;
  EXPECT_TRUE(c.tokens().empty());
  EXPECT_TRUE(absl::StrContains(cluster->Logs(), "moving it to another rank after 0 tokens"))
      << cluster->Logs();
}

TEST(RouterMigration, GivesUpUnavailableAfterMaxMoves) {
  auto cluster =
      StartFake({.ranks = 3, .rank_args = {"--step-ms", "5"}, .router_args = {"--max-moves", "1"}});
  ASSERT_NE(cluster, nullptr);
  auto client = sdk::Client::Create(cluster->router_address());
  const std::vector<int32_t> prompt = {7, 8, 9, 10, 11};
  auto stream = client->StartGenerate(IdsRequest(prompt, 400));
  Collected c;
  std::vector<int> alive = {0, 1, 2};
  for (int kill = 0; kill < 2; ++kill) {
    ASSERT_TRUE(ReadUntil(*stream, c, c.tokens().size() + 20)) << cluster->Logs();
    const int busy = BusyRank(*cluster, alive);
    ASSERT_GE(busy, 0);
    cluster->KillRank(busy);
    alive.erase(std::find(alive.begin(), alive.end(), busy));
  }
  ReadRest(*stream, c);
  EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable) << c.status;
  EXPECT_TRUE(absl::StrContains(c.status.message(), "gave up after moving it 1 time(s)"))
      << c.status;
  EXPECT_FALSE(c.final.has_value());
  // What it did stream is the uninterrupted output's beginning: no gap, no duplicate.
  const std::vector<int32_t> got = c.tokens();
  EXPECT_GE(got.size(), 40u);
  EXPECT_EQ(got, Cycle(prompt, static_cast<int>(got.size())));
  // The third rank still serves.
  auto result = client->Generate(IdsRequest({1, 2}, 4), nullptr, {.timeout = absl::Seconds(5)});
  EXPECT_TRUE(result.ok()) << result.status();
}

// Waits for the router process to exit; its description ("... exited with code 0").
std::string WaitExited(Cluster& cluster, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (std::optional<std::string> exited = cluster.CheckExited()) return *exited;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return "still running";
}

TEST(RouterDrain, SigtermLetsAStreamFinishAndRefusesNewWork) {
  auto cluster = StartFake({.ranks = 2, .rank_args = {"--step-ms", "5"}});
  ASSERT_NE(cluster, nullptr);
  auto client = sdk::Client::Create(cluster->router_address());
  constexpr int kTokens = 300;  // 1.5 s, longer than the old 1 s shutdown
  auto stream = client->StartGenerate(IdsRequest({7, 8, 9}, kTokens));
  Collected c;
  ASSERT_TRUE(ReadUntil(*stream, c, 1));
  cluster->SignalRouter(SIGTERM);
  // NOT_SERVING at once; new requests refused while the stream goes on.
  absl::StatusOr<bool> serving = true;
  for (int i = 0; i < 100 && serving.ok() && *serving; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    serving = client->IsServing();
  }
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_FALSE(*serving);
  auto refused = client->Generate(IdsRequest({1, 2}, 4), nullptr, {.timeout = absl::Seconds(5)});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "draining")) << refused.status();
  ReadRest(*stream, c);
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(c.tokens(), Cycle({7, 8, 9}, kTokens));
  ASSERT_TRUE(c.final.has_value());
  EXPECT_EQ(c.final->finish_reason(), v1::FINISH_REASON_LENGTH);
  // Nothing left in flight: the router exits without waiting out the 30 s grace.
  EXPECT_TRUE(absl::StrContains(WaitExited(*cluster, absl::Seconds(10)), "exited with code 0"));
}

TEST(RouterDrain, StreamLongerThanTheGraceEndsUnavailable) {
  auto cluster = StartFake(
      {.ranks = 1, .rank_args = {"--step-ms", "5"}, .router_args = {"--drain-grace-s", "1"}});
  ASSERT_NE(cluster, nullptr);
  auto client = sdk::Client::Create(cluster->router_address());
  constexpr int kTokens = 2000;  // 10 s
  auto stream = client->StartGenerate(IdsRequest({7, 8, 9}, kTokens));
  Collected c;
  ASSERT_TRUE(ReadUntil(*stream, c, 1));
  const absl::Time signalled = absl::Now();
  cluster->SignalRouter(SIGTERM);
  ReadRest(*stream, c);
  EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable) << c.status;
  EXPECT_TRUE(absl::StrContains(c.status.message(), "drain grace over")) << c.status;
  EXPECT_FALSE(c.final.has_value());
  // It ran to about the grace, well short of its natural end.
  EXPECT_GE(c.end - signalled, absl::Milliseconds(900));
  EXPECT_LT(c.end - signalled, absl::Seconds(5));
  EXPECT_LT(c.tokens().size(), static_cast<size_t>(kTokens));
  EXPECT_TRUE(absl::StrContains(WaitExited(*cluster, absl::Seconds(10)), "exited with code 0"));
  // The rank aborted the cut request and freed its slot.
  EXPECT_TRUE(cluster->WaitRankIdle(0, absl::Seconds(2)).ok());
}

}  // namespace
}  // namespace nextserve::testing
