// The whole stack with the ranks as one expert-parallel group (mpirun, experts sharded over 2
// ranks): concurrent requests on both ranks give the tokens of a single rank holding every expert,
// and a rank process killed mid-stream ends every stream of the group with UNAVAILABLE within 2 s.
#include <dirent.h>
#include <signal.h>

#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

std::vector<v1::GenerateRequest> Requests() {
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> ids;
    for (int j = 0; j < 5 + 23 * i; ++j) ids.push_back((i * 31 + j * 7) % 500);
    v1::GenerateRequest req = IdsRequest(ids, 12);
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(i % 2 ? 0.0f : 0.8f);
    req.mutable_sampling()->set_seed(100 + i);
    reqs.push_back(req);
  }
  return reqs;
}

std::vector<std::vector<int32_t>> RunAll(const std::string& router) {
  auto client = sdk::Client::Create(router);
  std::vector<std::unique_ptr<sdk::GenerateStream>> streams;
  for (const auto& req : Requests()) streams.push_back(client->StartGenerate(req));
  std::vector<std::vector<int32_t>> out;
  for (auto& s : streams) {
    Collected c = Collect(*s);
    EXPECT_TRUE(c.status.ok()) << c.status;
    out.push_back(c.tokens());
  }
  return out;
}

// The nextserve-rank processes that mpirun (pid) started.
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> kids;
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  pid_t k;
  while (in >> k) kids.push_back(k);
  return kids;
}

TEST(ExpertParallelServing, GroupMatchesSingleRankAndFailsTogether) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  std::vector<std::vector<int32_t>> single;
  {
    auto one = Cluster::Start(*dir, {.ranks = 1});
    ASSERT_TRUE(one.ok()) << one.status();
    single = RunAll((*one)->router_address());
  }
  auto started = Cluster::Start(*dir, {.ranks = 2, .expert_parallel = true});
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& group = **started;
  EXPECT_EQ(RunAll(group.router_address()), single) << group.Logs();

  // Long streams on both ranks, then one rank process dies.
  auto client = sdk::Client::Create(group.router_address());
  std::vector<std::unique_ptr<sdk::GenerateStream>> streams;
  v1::GenerateResponse r;
  for (int i = 0; i < 4; ++i) {
    v1::GenerateRequest req = IdsRequest({1, 2, 3, i}, 1500);
    req.set_ignore_eos(true);
    streams.push_back(client->StartGenerate(req));
  }
  for (auto& s : streams) ASSERT_TRUE(s->Next(&r)) << group.Logs();
  const pid_t mpirun = group.rank_pid(0);
  const std::vector<pid_t> ranks = ChildrenOf(mpirun);
  ASSERT_EQ(ranks.size(), 2u);
  const absl::Time killed = absl::Now();
  kill(ranks[1], SIGKILL);
  for (auto& s : streams) {
    Collected c = Collect(*s);
    EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable) << c.status;
    EXPECT_LT(c.end - killed, absl::Seconds(2)) << c.status << group.Logs();
  }
}

}  // namespace
}  // namespace nextserve::testing
