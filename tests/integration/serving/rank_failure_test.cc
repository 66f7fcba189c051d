// A rank killed mid-stream: its streams end with UNAVAILABLE (naming it) within 2 s, the router
// stops sending it work, and the other rank's streams and new requests carry on.
#include <signal.h>

#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

TEST(RankFailure, KilledRankStreamsEndUnavailableOthersKeepServing) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto started = Cluster::Start(
      *dir, {.ranks = 2, .rank_args = {"--kv-blocks", "256", "--state-slots", "16"}});
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;
  auto client = sdk::Client::Create(cluster.router_address());

  // Four long streams: the router spreads them two per rank.
  constexpr int kStreams = 4;
  constexpr int kTokens = 300;
  std::vector<std::unique_ptr<sdk::GenerateStream>> streams;
  v1::GenerateResponse r;
  for (int i = 0; i < kStreams; ++i) {
    v1::GenerateRequest req = IdsRequest({7, 8, 9, i}, kTokens);
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(0);
    streams.push_back(client->StartGenerate(req));
  }
  for (auto& s : streams) ASSERT_TRUE(s->Next(&r)) << cluster.Logs();
  auto load0 = cluster.RankLoad(0);
  auto load1 = cluster.RankLoad(1);
  ASSERT_TRUE(load0.ok() && load1.ok());
  EXPECT_EQ(load0->running(), 2);
  EXPECT_EQ(load1->running(), 2);

  const absl::Time killed = absl::Now();
  cluster.KillRank(0);
  std::vector<Collected> results(kStreams);
  std::vector<std::thread> readers;
  for (int i = 0; i < kStreams; ++i)
    readers.emplace_back([&, i] { results[i] = Collect(*streams[i]); });
  for (auto& t : readers) t.join();
  int unavailable = 0;
  for (const Collected& c : results) {
    if (c.status.code() == absl::StatusCode::kUnavailable) {
      ++unavailable;
      EXPECT_LT(c.end - killed, absl::Seconds(2));
      EXPECT_TRUE(absl::StrContains(c.status.message(), cluster.rank_address(0))) << c.status;
    } else {
      ASSERT_TRUE(c.status.ok()) << c.status;
      EXPECT_EQ(c.tokens().size() + 1, static_cast<size_t>(kTokens));  // one token was read above
      ASSERT_TRUE(c.final.has_value());
      EXPECT_EQ(c.final->finish_reason(), v1::FINISH_REASON_LENGTH);
    }
  }
  EXPECT_EQ(unavailable, 2);

  // The router no longer counts the rank and sends everything to the other one.
  auto info = client->GetModelInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->ranks(), 1);
  for (int i = 0; i < 6; ++i) {
    auto result =
        client->Generate(IdsRequest({1, 2, i}, 3), nullptr, {.timeout = absl::Seconds(10)});
    EXPECT_TRUE(result.ok()) << result.status();
  }
  EXPECT_TRUE(cluster.WaitRankIdle(1, absl::Seconds(2)).ok());
}

}  // namespace
}  // namespace nextserve::testing
