// Overload and slow ranks with the whole stack (router + 2 real ranks on the generated test model):
// a busy rank is not a dead rank.
//  - Twice what the ranks and the router's per-rank budget hold, at once: every stream ends with a
//    Final and all its tokens (the router's default probe settings hold under this load).
//  - A SIGSTOPped rank: new work goes to the other rank while the stopped one is only suspect; its
//    streams end UNAVAILABLE, naming it, only after the stated detection time; SIGCONT brings it
//    back into rotation.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

v1::GenerateRequest Greedy(std::vector<int32_t> ids, int max_tokens) {
  v1::GenerateRequest req = IdsRequest(ids, max_tokens);
  req.set_ignore_eos(true);
  req.mutable_sampling()->set_temperature(0);
  return req;
}

std::vector<Collected> CollectAll(std::vector<std::unique_ptr<sdk::GenerateStream>>& streams) {
  std::vector<Collected> results(streams.size());
  std::vector<std::thread> readers;
  for (size_t i = 0; i < streams.size(); ++i)
    readers.emplace_back([&, i] { results[i] = Collect(*streams[i]); });
  for (auto& t : readers) t.join();
  return results;
}

TEST(Overload, TwiceWhatTheRanksHoldEveryStreamEndsWithAFinal) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  // Per rank 4 state slots + 4 in its own queue: 16 requests in the ranks, 16 more queued in the
  // router. Router flags are the defaults.
  auto started = Cluster::Start(
      *dir,
      {.ranks = 2, .rank_args = {"--kv-blocks", "128", "--state-slots", "4"}, .router_args = {}});
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;
  auto client = sdk::Client::Create(cluster.router_address());

  constexpr int kStreams = 32;
  constexpr int kTokens = 24;
  std::vector<std::unique_ptr<sdk::GenerateStream>> streams;
  for (int i = 0; i < kStreams; ++i)
    streams.push_back(client->StartGenerate(Greedy({3, 4, 5, i}, kTokens)));
  std::vector<Collected> results = CollectAll(streams);
  for (int i = 0; i < kStreams; ++i) {
    const Collected& c = results[i];
    ASSERT_TRUE(c.status.ok()) << "stream " << i << ": " << c.status << "\n" << cluster.Logs();
    ASSERT_TRUE(c.final.has_value()) << "stream " << i;
    EXPECT_EQ(c.final->finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(c.tokens().size(), static_cast<size_t>(kTokens));
  }
  // Nothing was taken for lost: both ranks still count, and hold nothing now.
  auto info = client->GetModelInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->ranks(), 2);
  EXPECT_FALSE(absl::StrContains(cluster.Logs(), "is down")) << cluster.Logs();
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(cluster.WaitRankIdle(r, absl::Seconds(5)).ok());
}

TEST(SlowRank, StoppedRankGetsNoNewWorkKeepsStreamsUntilDetectionThenRejoins) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  // Stated detection: down after 3 missed probes and 3 s without an answer.
  constexpr absl::Duration kDetection = absl::Seconds(3);
  // The silence runs from the rank's last answer, which can come up to one poll before SIGSTOP.
  constexpr absl::Duration kPoll = absl::Milliseconds(100);
  auto started = Cluster::Start(
      *dir, {.ranks = 2,
             .rank_args = {"--kv-blocks", "256", "--state-slots", "8"},
             // Without moves, so that the stopped rank's streams end (moves: rank_failure_test).
             .router_args = {"--poll-ms", "100", "--probe-timeout-ms", "300", "--fail-after-probes",
                             "3", "--fail-after-ms", "3000", "--max-moves", "0"}});
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;
  auto client = sdk::Client::Create(cluster.router_address());

  // Two long streams per rank.
  constexpr int kLong = 4;
  constexpr int kLongTokens = 600;
  std::vector<std::unique_ptr<sdk::GenerateStream>> long_streams;
  v1::GenerateResponse r;
  for (int i = 0; i < kLong; ++i) {
    long_streams.push_back(client->StartGenerate(Greedy({7, 8, 9, i}, kLongTokens)));
    ASSERT_TRUE(long_streams.back()->Next(&r)) << cluster.Logs();
  }
  auto load0 = cluster.RankLoad(0);
  auto load1 = cluster.RankLoad(1);
  ASSERT_TRUE(load0.ok() && load1.ok());
  ASSERT_EQ(load0->running(), 2);
  ASSERT_EQ(load1->running(), 2);

  cluster.SignalRank(0, SIGSTOP);
  const absl::Time stopped = absl::Now();
  std::vector<Collected> long_results(kLong);
  std::vector<std::thread> readers;
  for (int i = 0; i < kLong; ++i)
    readers.emplace_back([&, i] { long_results[i] = Collect(*long_streams[i]); });

  // After one missed probe (300 ms + a poll) the stopped rank is suspect: new requests go to the
  // other one and finish while rank 0's streams are still held open.
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  std::vector<std::unique_ptr<sdk::GenerateStream>> fresh;
  for (int i = 0; i < 4; ++i) fresh.push_back(client->StartGenerate(Greedy({1, 2, i}, 4)));
  std::vector<Collected> fresh_results = CollectAll(fresh);
  absl::Time fresh_done = stopped;
  for (const Collected& c : fresh_results) {
    ASSERT_TRUE(c.status.ok()) << c.status;
    EXPECT_EQ(c.tokens().size(), 4u);
    fresh_done = std::max(fresh_done, c.end);
  }
  for (auto& t : readers) t.join();

  int unavailable = 0;
  absl::Time first_cut = absl::InfiniteFuture();
  for (const Collected& c : long_results) {
    if (c.status.code() == absl::StatusCode::kUnavailable) {
      ++unavailable;
      first_cut = std::min(first_cut, c.end);
      // Not cut before the stated time.
      EXPECT_GE(c.end - stopped, kDetection - kPoll) << c.status;
      EXPECT_TRUE(absl::StrContains(c.status.message(), cluster.rank_address(0))) << c.status;
    } else {
      ASSERT_TRUE(c.status.ok()) << c.status;
      ASSERT_TRUE(c.final.has_value());
      EXPECT_EQ(c.tokens().size() + 1, static_cast<size_t>(kLongTokens));
    }
  }
  EXPECT_EQ(unavailable, 2);
  EXPECT_LT(fresh_done, first_cut);  // the new work never waited for rank 0
  std::printf("SIGSTOP: rank 0's streams ended UNAVAILABLE %.2f s after the stop\n",
              absl::ToDoubleSeconds(first_cut - stopped));

  // SIGCONT: its probes answer again and it takes new work.
  cluster.SignalRank(0, SIGCONT);
  const absl::Time resumed = absl::Now();
  while (absl::Now() < resumed + absl::Seconds(10) && client->GetModelInfo()->ranks() != 2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(client->GetModelInfo()->ranks(), 2);
  EXPECT_TRUE(cluster.WaitRankIdle(0, absl::Seconds(10)).ok());  // the cut streams were aborted
  std::vector<std::unique_ptr<sdk::GenerateStream>> again;
  for (int i = 0; i < 4; ++i) {
    again.push_back(client->StartGenerate(Greedy({4, 5, i}, kLongTokens)));
    ASSERT_TRUE(again.back()->Next(&r));
  }
  // Back in rotation (how many it gets depends on whether the router's report of it is already
  // newer than the aborts of its cut streams).
  load0 = cluster.RankLoad(0);
  ASSERT_TRUE(load0.ok());
  EXPECT_GE(load0->running(), 1);
  for (auto& s : again) s->Cancel();
  for (auto& s : again) EXPECT_EQ(s->Finish().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace nextserve::testing
