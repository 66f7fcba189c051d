// A rank killed mid-stream: without moves its streams end with UNAVAILABLE (naming it) within 2 s,
// the router stops sending it work, and the other rank's streams and new requests carry on. With
// moves (the default) the stream continues on another rank and its whole output equals an
// uninterrupted run, greedy and seeded; a rank drained by SIGTERM hands its stream over the same
// way. Token-for-token equality after a move is a property of exact compute (`--compute f32`): the
// new rank recomputes prompt + output as a prefill, whose sums differ from the decode steps' in
// the last bits, and bf16 compute's rounding of activations can turn that into a different seeded
// sample 600 tokens on. These clusters therefore run in f32 (the default elsewhere is bf16).
#include <signal.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

TEST(RankFailure, KilledRankStreamsEndUnavailableOthersKeepServing) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto started = Cluster::Start(*dir, {.ranks = 2,
                                       .rank_args = {"--kv-blocks", "256", "--state-slots", "16"},
                                       .router_args = {"--max-moves", "0"}});
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

v1::GenerateRequest MovableRequest(bool seeded, int max_tokens) {
  v1::GenerateRequest req = IdsRequest({11, 12, 13, 14, 15}, max_tokens);
  req.set_ignore_eos(true);
  if (seeded) {
    // Sampling with every state the move must carry: RNG position, penalties, min_tokens.
    req.mutable_sampling()->set_temperature(0.9f);
    req.mutable_sampling()->set_top_k(40);
    req.mutable_sampling()->set_seed(1234);
    req.mutable_sampling()->set_presence_penalty(0.5f);
    req.mutable_sampling()->set_frequency_penalty(0.3f);
    req.mutable_sampling()->set_repetition_penalty(1.2f);
  } else {
    req.mutable_sampling()->set_temperature(0);
  }
  return req;
}

// Starts `req`, reads at least `first` tokens, then runs `interrupt` (which ends the rank serving
// it) and reads the rest.
Collected RunInterrupted(sdk::Client& client, const v1::GenerateRequest& req, size_t first,
                         const std::function<void()>& interrupt) {
  auto stream = client.StartGenerate(req);
  Collected c;
  v1::GenerateResponse r;
  while (c.tokens().size() < first && stream->Next(&r)) {
    if (r.has_delta()) c.deltas.push_back(r.delta());
  }
  interrupt();
  Collected rest = Collect(*stream);
  c.deltas.insert(c.deltas.end(), rest.deltas.begin(), rest.deltas.end());
  c.final = rest.final;
  c.status = rest.status;
  return c;
}

int BusyRank(Cluster& cluster, const std::vector<int>& candidates) {
  for (int i : candidates) {
    absl::StatusOr<internal::v1::LoadReport> load = cluster.RankLoad(i);
    if (load.ok() && load->running() > 0) return i;
  }
  return -1;
}

TEST(RankFailure, KilledRankStreamMovesAndMatchesAnUninterruptedRun) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto started = Cluster::Start(*dir, {.ranks = 3, .rank_args = {"--compute", "f32"}});
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;
  auto client = sdk::Client::Create(cluster.router_address());
  constexpr int kTokens = 600;
  std::vector<int> alive = {0, 1, 2};
  for (bool seeded : {false, true}) {
    SCOPED_TRACE(seeded ? "seeded" : "greedy");
    const v1::GenerateRequest req = MovableRequest(seeded, kTokens);
    auto whole = client->Generate(req, nullptr, {.timeout = absl::Seconds(60)});
    ASSERT_TRUE(whole.ok()) << whole.status();
    int killed = -1;
    Collected moved = RunInterrupted(*client, req, 20, [&] {
      killed = BusyRank(cluster, alive);
      if (killed >= 0) cluster.KillRank(killed);
    });
    ASSERT_GE(killed, 0);
    alive.erase(std::find(alive.begin(), alive.end(), killed));
    ASSERT_TRUE(moved.status.ok()) << moved.status << cluster.Logs();
    EXPECT_EQ(moved.tokens(),
              std::vector<int32_t>(whole->token_ids.begin(), whole->token_ids.end()));
    EXPECT_EQ(moved.text(), whole->text);
    ASSERT_TRUE(moved.final.has_value());
    EXPECT_EQ(moved.final->usage().completion_tokens(), kTokens);
    // It really moved (rather than finishing before the kill).
    const std::string logs = cluster.Logs();
    EXPECT_TRUE(absl::StrContains(logs, absl::StrCat("on rank ", cluster.rank_address(killed))) &&
                absl::StrContains(logs, "moving it to another rank"))
        << logs;
  }
  EXPECT_TRUE(cluster.WaitRankIdle(alive[0], absl::Seconds(2)).ok());
}

// SIGTERM of the rank serving a seeded stream: with the default grace the stream finishes there;
// with no grace it is cut at once and moves. Either way the output equals the uninterrupted run and
// the rank exits by itself as soon as nothing is open.
void CheckRankDrain(int grace_s) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto started = Cluster::Start(
      *dir,
      {.ranks = 2, .rank_args = {"--drain-grace-s", std::to_string(grace_s), "--compute", "f32"}});
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;
  auto client = sdk::Client::Create(cluster.router_address());
  constexpr int kTokens = 1000;
  const v1::GenerateRequest req = MovableRequest(/*seeded=*/true, kTokens);
  auto whole = client->Generate(req, nullptr, {.timeout = absl::Seconds(120)});
  ASSERT_TRUE(whole.ok()) << whole.status();
  int drained = -1;
  Collected moved = RunInterrupted(*client, req, 10, [&] {
    drained = BusyRank(cluster, {0, 1});
    if (drained >= 0) cluster.SignalRank(drained, SIGTERM);
  });
  ASSERT_GE(drained, 0);
  ASSERT_TRUE(moved.status.ok()) << moved.status << cluster.Logs();
  EXPECT_EQ(moved.tokens(), std::vector<int32_t>(whole->token_ids.begin(), whole->token_ids.end()));
  std::optional<std::string> exited;
  for (int i = 0; i < 500 && !exited; ++i) {
    exited = cluster.CheckExited();
    if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(exited.has_value());
  EXPECT_TRUE(absl::StrContains(*exited, "exited with code 0")) << *exited;
  const std::string logs = cluster.Logs();
  EXPECT_EQ(absl::StrContains(logs, "moving it to another rank"), grace_s == 0) << logs;
  EXPECT_EQ(absl::StrContains(logs, "drain grace over"), grace_s == 0) << logs;
  // New work goes to the other rank.
  auto after = client->Generate(IdsRequest({1, 2, 3}, 5), nullptr, {.timeout = absl::Seconds(10)});
  EXPECT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(cluster.WaitRankIdle(1 - drained, absl::Seconds(2)).ok());
}

TEST(RankFailure, DrainedRankFinishesItsStreamThenExits) {
  CheckRankDrain(/*grace_s=*/30);
}
TEST(RankFailure, DrainGraceOverHandsTheStreamToAnotherRank) {
  CheckRankDrain(/*grace_s=*/0);
}

}  // namespace
}  // namespace nextserve::testing
