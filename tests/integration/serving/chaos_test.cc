// Chaos: a router and two replica ranks (sdk::LocalCluster with its supervisor, as `nextserve up`
// runs them) under a steady load of streams, while one rank at a time is killed with SIGKILL for
// a bounded time and the supervisor restarts it on its port. Every stream must end with a Final or
// UNAVAILABLE naming what was lost, well within its deadline; the router keeps serving and takes
// each restarted rank back; afterwards both ranks take work and free every KV block and state slot.
// Also: a rank that cannot start again crash-loops with a capped, logged backoff, then recovers.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

constexpr int kRanks = 2;
constexpr int kLoadThreads = 4;
constexpr absl::Duration kChaosTime = absl::Seconds(20);
constexpr absl::Duration kStreamDeadline = absl::Seconds(30);

// How one stream of the load ended.
struct Outcome {
  absl::Status status;
  bool has_final = false;
  int tokens = 0, max_tokens = 0;
  bool cancelled_by_client = false;
  absl::Duration took;
};

// The supervisor's log lines, kept for the assertions.
struct SupervisorLog {
  std::mutex mu;
  std::vector<std::string> lines;
  int Count(const std::string& needle) {
    std::lock_guard lock(mu);
    int n = 0;
    for (const std::string& l : lines) n += absl::StrContains(l, needle);
    return n;
  }
};

// Waits until the router counts `ranks` healthy ranks.
bool WaitRouterSees(sdk::Client& client, int ranks, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::ModelInfo> info = client.GetModelInfo({.timeout = absl::Seconds(1)});
    if (info.ok() && info->ranks() == ranks) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// Router + kRanks replica ranks with the supervisor on (200 ms first wait); its lines go to
// stderr and to `log`.
absl::StatusOr<std::unique_ptr<Cluster>> StartSupervised(const std::string& dir,
                                                         std::vector<std::string> rank_args,
                                                         absl::Duration max_backoff,
                                                         absl::Duration stable_after,
                                                         std::shared_ptr<SupervisorLog> log) {
  return Cluster::Start(dir, {.ranks = kRanks,
                              .rank_args = std::move(rank_args),
                              .router_args = {},
                              .start_timeout = absl::Seconds(60),
                              .restart = {.enabled = true,
                                          .initial_backoff = absl::Milliseconds(200),
                                          .max_backoff = max_backoff,
                                          .stable_after = stable_after,
                                          .log = [log](const std::string& line) {
                                            std::fprintf(stderr, "%s\n", line.c_str());
                                            std::lock_guard lock(log->mu);
                                            log->lines.push_back(line);
                                          }}});
}

TEST(Chaos, RanksKilledAndRestartedUnderLoad) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto log = std::make_shared<SupervisorLog>();
  auto started = StartSupervised(*dir, {"--kv-blocks", "256", "--state-slots", "16"},
                                 absl::Seconds(2), absl::Seconds(1), log);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;
  const pid_t router_pid = cluster.router_pid();
  std::vector<std::string> addresses;
  for (int i = 0; i < kRanks; ++i) addresses.push_back(cluster.rank_address(i));
  auto client = sdk::Client::Create(cluster.router_address());

  // Steady load: each thread runs one stream after another (varied prompts and lengths; every
  // fifth is cancelled by the client after a few tokens).
  std::atomic<bool> stop_load{false};
  std::mutex outcomes_mu;
  std::vector<Outcome> outcomes;
  std::vector<std::thread> load;
  for (int t = 0; t < kLoadThreads; ++t) {
    load.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      for (int n = 0; !stop_load.load(); ++n) {
        std::vector<int32_t> prompt(1 + rng() % 40);
        for (int32_t& id : prompt) id = static_cast<int32_t>(rng() % 500);
        Outcome o;
        o.max_tokens = 16 + static_cast<int>(rng() % 48);
        o.cancelled_by_client = n % 5 == 4;
        v1::GenerateRequest req = IdsRequest(prompt, o.max_tokens);
        req.set_ignore_eos(true);
        req.mutable_sampling()->set_temperature(n % 2 == 0 ? 0.0f : 0.8f);
        const absl::Time begin = absl::Now();
        std::unique_ptr<sdk::GenerateStream> stream =
            client->StartGenerate(req, {.timeout = kStreamDeadline});
        v1::GenerateResponse r;
        while (stream->Next(&r)) {
          if (r.has_delta()) o.tokens += r.delta().token_ids_size();
          if (r.has_final()) o.has_final = true;
          if (o.cancelled_by_client && o.tokens >= 4) stream->Cancel();
        }
        o.status = stream->Finish();
        o.took = absl::Now() - begin;
        std::lock_guard lock(outcomes_mu);
        outcomes.push_back(o);
      }
    });
  }

  // Chaos: kill one rank at a time, alternating, each time the router has both back. Half the
  // kills go through the supervisor's KillRank, half are a plain kill(2) it must notice itself.
  std::mt19937 rng(7);
  std::vector<int> kills(kRanks, 0);
  const absl::Time chaos_end = absl::Now() + kChaosTime;
  for (int k = 0; absl::Now() < chaos_end; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1000 + rng() % 1500));
    ASSERT_TRUE(WaitRouterSees(*client, kRanks, absl::Seconds(15)))
        << "the router did not take a restarted rank back\n"
        << cluster.Logs();
    const int victim = k % kRanks;
    if (k % 2 == 0) {
      cluster.KillRank(victim);
    } else {
      const pid_t pid = cluster.rank_pid(victim);
      ASSERT_GT(pid, 0);
      ASSERT_EQ(kill(pid, SIGKILL), 0);
    }
    ++kills[victim];
    // The supervisor restarts it (after its backoff) before the next round.
    const absl::Time restart_deadline = absl::Now() + absl::Seconds(15);
    while (cluster.rank_restarts(victim) < kills[victim] && absl::Now() < restart_deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(cluster.rank_restarts(victim), kills[victim]) << "not restarted\n" << cluster.Logs();
  }
  ASSERT_TRUE(WaitRouterSees(*client, kRanks, absl::Seconds(15))) << cluster.Logs();
  stop_load = true;
  for (std::thread& t : load) t.join();

  // Every stream ended with a Final (the whole length, or the client's cancel) or UNAVAILABLE
  // naming the lost rank; none ran into its deadline.
  std::map<absl::StatusCode, int> codes;
  int ok = 0;
  for (const Outcome& o : outcomes) {
    ++codes[o.status.code()];
    EXPECT_LT(o.took, kStreamDeadline) << o.status;
    if (o.status.ok()) {
      ++ok;
      EXPECT_TRUE(o.has_final);
      EXPECT_EQ(o.tokens, o.max_tokens);
    } else if (o.status.code() == absl::StatusCode::kCancelled) {
      EXPECT_TRUE(o.cancelled_by_client) << o.status;
    } else {
      ASSERT_EQ(o.status.code(), absl::StatusCode::kUnavailable) << o.status;
      bool names_rank = absl::StrContains(o.status.message(), "no healthy rank");
      for (const std::string& a : addresses) names_rank |= absl::StrContains(o.status.message(), a);
      EXPECT_TRUE(names_rank) << o.status;
    }
  }
  std::string summary;
  for (const auto& [code, n] : codes)
    absl::StrAppend(&summary, absl::StatusCodeToString(code), " ", n, "; ");
  std::fprintf(stderr, "chaos: %zu streams (%s), kills per rank %d/%d, restarts %d/%d\n",
               outcomes.size(), summary.c_str(), kills[0], kills[1], cluster.rank_restarts(0),
               cluster.rank_restarts(1));
  EXPECT_GT(ok, static_cast<int>(outcomes.size()) / 2) << summary;

  // Each death was seen and restarted on the same port; the router never died.
  for (int i = 0; i < kRanks; ++i) {
    EXPECT_GE(kills[i], 2);
    EXPECT_EQ(cluster.rank_restarts(i), kills[i]);
    EXPECT_EQ(cluster.rank_address(i), addresses[i]);
  }
  EXPECT_EQ(log->Count("was killed by signal 9"), (kills[0] + kills[1]) / 2);  // the plain kills
  EXPECT_EQ(log->Count("restarted rank"), kills[0] + kills[1]);
  EXPECT_EQ(cluster.router_restarts(), 0);
  EXPECT_EQ(cluster.router_pid(), router_pid);

  // Nothing leaked on any rank: once idle, every KV block and state slot is free.
  for (int i = 0; i < kRanks; ++i) {
    absl::Status idle = cluster.WaitRankIdle(i, absl::Seconds(10));
    EXPECT_TRUE(idle.ok()) << idle;
  }

  // Both ranks take work again: four long streams, two on each. First three of the router's load
  // polls (150 ms), so that it no longer balances on a report from during the load.
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  std::vector<std::unique_ptr<sdk::GenerateStream>> streams;
  v1::GenerateResponse r;
  for (int i = 0; i < 2 * kRanks; ++i) {
    v1::GenerateRequest req = IdsRequest({7, 8, 9, i}, 1000);
    req.set_ignore_eos(true);
    streams.push_back(client->StartGenerate(req, {.timeout = kStreamDeadline}));
  }
  for (auto& s : streams) ASSERT_TRUE(s->Next(&r)) << cluster.Logs();
  for (int i = 0; i < kRanks; ++i) {
    absl::StatusOr<internal::v1::LoadReport> load_report = cluster.RankLoad(i);
    ASSERT_TRUE(load_report.ok()) << load_report.status();
    EXPECT_EQ(load_report->running() + load_report->waiting(), 2) << "rank" << i;
  }
  for (auto& s : streams) {
    s->Cancel();
    EXPECT_EQ(s->Finish().code(), absl::StatusCode::kCancelled);
  }
  for (int i = 0; i < kRanks; ++i) {
    absl::Status idle = cluster.WaitRankIdle(i, absl::Seconds(10));
    EXPECT_TRUE(idle.ok()) << idle;
  }
}

// A rank that cannot start again (its port is taken) crash-loops: the supervisor's wait doubles
// up to the cap and each death is logged as a crash loop, while the router serves on the other
// rank; once the port is free the rank comes back and the router takes it again.
TEST(Chaos, CrashLoopBacksOffUpToTheCapAndRecovers) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto log = std::make_shared<SupervisorLog>();
  auto started = StartSupervised(*dir, {"--kv-blocks", "64", "--state-slots", "4"},
                                 absl::Seconds(1), absl::Seconds(30), log);
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;
  auto client = sdk::Client::Create(cluster.router_address());
  const std::string address = cluster.rank_address(0);
  const int port = std::stoi(address.substr(address.rfind(':') + 1));

  // Kill rank 0 and take its port: every restart fails at once.
  cluster.KillRank(0);
  const int squatter = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(squatter, 0);
  const int one = 1;
  setsockopt(squatter, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(bind(squatter, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << errno;
  ASSERT_EQ(listen(squatter, 16), 0);

  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (log->Count("restarting it in") < 6 && absl::Now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  // Meanwhile the other rank serves.
  auto result = client->Generate(IdsRequest({1, 2, 3}, 4), nullptr, {.timeout = absl::Seconds(30)});
  EXPECT_TRUE(result.ok()) << result.status();
  close(squatter);

  std::vector<std::string> waits;
  {
    std::lock_guard lock(log->mu);
    for (const std::string& line : log->lines) {
      const size_t at = line.find("restarting it in ");
      if (at == std::string::npos) continue;
      EXPECT_TRUE(absl::StrContains(line, address)) << line;
      const size_t from = at + std::string("restarting it in ").size();
      waits.push_back(line.substr(from, line.find(' ', from) - from));
      // From the second quick death on, the line says it is a crash loop.
      EXPECT_EQ(absl::StrContains(line, "crash loop"), waits.size() >= 2) << line;
      if (waits.size() >= 2) {
        EXPECT_TRUE(absl::StrContains(line, "exited with code 1")) << line;
      }
    }
  }
  ASSERT_GE(waits.size(), 6u);
  const std::vector<std::string> expected = {"200ms", "400ms", "800ms", "1s", "1s", "1s"};
  EXPECT_EQ(std::vector<std::string>(waits.begin(), waits.begin() + 6), expected);

  // The port is free again: the next restart sticks and the router takes the rank back.
  ASSERT_TRUE(WaitRouterSees(*client, kRanks, absl::Seconds(15))) << cluster.Logs();
  // The supervisor's own health check may notice a moment after the router does.
  const absl::Time log_deadline = absl::Now() + absl::Seconds(10);
  while (log->Count("is serving again") < 1 && absl::Now() < log_deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_GE(log->Count("is serving again"), 1);
  EXPECT_TRUE(cluster.WaitRankIdle(0, absl::Seconds(5)).ok());
  EXPECT_TRUE(cluster.WaitRankIdle(1, absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace nextserve::testing
