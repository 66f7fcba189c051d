// The metrics end to end: a router and a 2-rank expert-parallel group (real processes, metrics on
// free ports) under a few seconds of load, scraped every second by a real Prometheus server on
// loopback; then every query of the Grafana dashboard goes through Prometheus's HTTP API and must
// parse and return series, and every metric the dashboard names must be one the processes export.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "sdk/cpp/client.h"
#include "sdk/cpp/local_cluster.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

extern char** environ;

namespace nextserve::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// curl's output (HTTP GET, or a form-encoded POST with --data-urlencode); "" when curl fails.
std::string Curl(const std::vector<std::string>& args) {
  std::string cmd = "curl -sf --max-time 10";
  for (const std::string& a : args) {
    cmd += " '";
    cmd += absl::StrReplaceAll(a, {{"'", "'\\''"}});
    cmd += "'";
  }
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  return pclose(p) == 0 ? out : "";
}

// A Prometheus server, a child of the test; killed when destroyed.
class PrometheusServer {
 public:
  PrometheusServer(const std::string& dir, const std::vector<int>& targets) {
    port_ = sdk::FreeLoopbackPort();
    std::string yml =
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: nextserve\n    static_configs:\n"
        "      - targets: [";
    for (size_t i = 0; i < targets.size(); ++i)
      absl::StrAppend(&yml, i ? ", " : "", "'127.0.0.1:", targets[i], "'");
    yml += "]\n";
    const std::string config = dir + "/prometheus.yml";
    std::ofstream(config) << yml;
    std::vector<std::string> args = {
        "prometheus", "--config.file=" + config, "--storage.tsdb.path=" + dir + "/data",
        absl::StrCat("--web.listen-address=127.0.0.1:", port_), "--log.level=warn"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, (dir + "/prometheus.log").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (posix_spawnp(&pid_, "prometheus", &actions, nullptr, argv.data(), environ) != 0) pid_ = 0;
    posix_spawn_file_actions_destroy(&actions);
    log_ = dir + "/prometheus.log";
  }
  ~PrometheusServer() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  bool started() const { return pid_ > 0; }
  std::string log() const { return ReadFile(log_); }

  // An instant query through /api/v1/query: the parsed response, or null when it did not answer.
  nlohmann::json Query(const std::string& promql) const {
    const std::string out = Curl({absl::StrCat("http://127.0.0.1:", port_, "/api/v1/query"),
                                  "--data-urlencode", "query=" + promql});
    return nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  }

 private:
  pid_t pid_ = 0;
  int port_ = 0;
  std::string log_;
};

// The value of a one-series instant vector; NaN when there is none.
double Value(const nlohmann::json& response) {
  if (response.is_discarded() || !response.contains("data")) return std::nan("");
  const nlohmann::json& result = response["data"]["result"];
  if (result.size() != 1) return std::nan("");
  return std::stod(result[0]["value"][1].get<std::string>());
}

std::string SourceDir() {
  const char* d = std::getenv("NEXTSERVE_SOURCE_DIR");
  return d ? d : ".";
}

// Every `expr` of every panel target.
std::vector<std::string> DashboardQueries(const nlohmann::json& dashboard) {
  std::vector<std::string> out;
  for (const auto& panel : dashboard.at("panels"))
    for (const auto& target : panel.value("targets", nlohmann::json::array()))
      out.push_back(target.at("expr").get<std::string>());
  return out;
}

// Dashboard variables -> what Grafana would send: all models, a window of many 1 s scrapes.
std::string Expand(const std::string& expr) {
  return absl::StrReplaceAll(expr, {{"$model_name", ".+"}, {"$__rate_interval", "30s"}});
}

TEST(PrometheusDashboard, EveryDashboardQueryReturnsSeriesFromARunningCluster) {
  if (system("command -v prometheus >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "Debian's prometheus is not installed (scripts/setup.sh installs it)";
  const std::string dashboard_path = SourceDir() + "/deploy/grafana/nextserve-dashboard.json";
  const nlohmann::json dashboard = nlohmann::json::parse(ReadFile(dashboard_path));
  // The chart ships the same file (Helm cannot read outside its directory).
  EXPECT_EQ(ReadFile(SourceDir() + "/helm/nextserve/files/grafana/nextserve-dashboard.json"),
            ReadFile(dashboard_path));

  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  auto started = Cluster::Start(*dir, {.ranks = 2,
                                       .expert_parallel = true,
                                       .rank_args = {"--metrics-port", "0"},
                                       .router_args = {"--metrics-port", "0"}});
  ASSERT_TRUE(started.ok()) << started.status();
  Cluster& cluster = **started;

  // Each process prints its metrics port at start.
  std::set<int> ports;
  const std::regex printed(R"(metrics on http://127\.0\.0\.1:(\d+)/metrics)");
  for (const absl::Time until = absl::Now() + absl::Seconds(10);
       ports.size() < 3 && absl::Now() < until; absl::SleepFor(absl::Milliseconds(100))) {
    const std::string logs = cluster.Logs();
    for (std::sregex_iterator it(logs.begin(), logs.end(), printed), end; it != end; ++it)
      ports.insert(std::stoi((*it)[1]));
  }
  ASSERT_EQ(ports.size(), 3u) << cluster.Logs();

  const std::string work =
      (std::filesystem::temp_directory_path() / absl::StrCat("nextserve_prom_", getpid())).string();
  std::filesystem::create_directories(work);
  PrometheusServer prometheus(work, std::vector<int>(ports.begin(), ports.end()));
  ASSERT_TRUE(prometheus.started());
  // Every target scraped once before the load, so that rates span it.
  for (const absl::Time until = absl::Now() + absl::Seconds(20);;
       absl::SleepFor(absl::Milliseconds(200))) {
    if (Value(prometheus.Query("sum(up{job=\"nextserve\"})")) == 3) break;
    ASSERT_LT(absl::Now(), until) << "Prometheus did not scrape every target:\n"
                                  << prometheus.log();
  }

  // A few seconds of load from 4 clients: prompts of several lengths, greedy and sampled.
  auto client = sdk::Client::Create(cluster.router_address());
  std::vector<std::thread> clients;
  std::atomic<int> completed{0};
  const absl::Time load_until = absl::Now() + absl::Seconds(4);
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; absl::Now() < load_until; ++i) {
        std::vector<int32_t> ids;
        for (int j = 0; j < 4 + 9 * ((c + i) % 4); ++j) ids.push_back((c * 37 + i * 11 + j) % 500);
        v1::GenerateRequest req = IdsRequest(ids, 8);
        req.set_ignore_eos(true);
        req.mutable_sampling()->set_temperature(c % 2 ? 0.0f : 0.7f);
        auto stream = client->StartGenerate(req);
        if (Collect(*stream).status.ok()) ++completed;
      }
    });
  }
  for (auto& t : clients) t.join();
  ASSERT_GT(completed.load(), 0) << cluster.Logs();

  // Prometheus has scraped every target since the load ended (all the tokens are in).
  for (const absl::Time until = absl::Now() + absl::Seconds(20);;
       absl::SleepFor(absl::Milliseconds(250))) {
    if (Value(prometheus.Query("sum(up{job=\"nextserve\"})")) == 3 &&
        Value(prometheus.Query("sum(nextserve_generation_tokens_total)")) >= completed.load() * 8)
      break;
    ASSERT_LT(absl::Now(), until) << "Prometheus has not seen the load:\n" << prometheus.log();
  }

  const std::vector<std::string> queries = DashboardQueries(dashboard);
  ASSERT_GE(queries.size(), 20u);
  for (const std::string& expr : queries) {
    const nlohmann::json r = prometheus.Query(Expand(expr));
    ASSERT_FALSE(r.is_discarded()) << "no answer for " << expr << "\n" << prometheus.log();
    EXPECT_EQ(r.value("status", ""), "success") << expr << ": " << r.dump();
    EXPECT_FALSE(r["data"]["result"].empty()) << "no series for " << expr;
  }
  // Values that must be there after the load, not only series.
  EXPECT_GT(Value(prometheus.Query("sum(increase(nextserve_generation_tokens_total[1m]))")), 0);
  EXPECT_GT(Value(prometheus.Query("sum(nextserve_all_to_all_bytes_total)")), 0);
  EXPECT_GT(Value(prometheus.Query("sum(increase(nextserve_rank_step_phase_seconds_total"
                                   "{phase=\"all_to_all\"}[1m]))")),
            0);
  const nlohmann::json layers = prometheus.Query("count by (rank) (nextserve_expert_tokens_total)");
  EXPECT_EQ(layers["data"]["result"].size(), 2u) << layers.dump();  // both ranks, every MoE layer

  // Nothing on the dashboard names a metric the processes do not export.
  std::string exported;
  for (int port : ports) exported += Curl({absl::StrCat("http://127.0.0.1:", port, "/metrics")});
  std::set<std::string> families;
  const std::regex type_line(R"(# TYPE (\S+) )");
  for (std::sregex_iterator it(exported.begin(), exported.end(), type_line), end; it != end; ++it)
    families.insert((*it)[1]);
  const std::regex named(R"(nextserve_[a-z0-9_]+)");
  for (const std::string& expr : queries) {
    for (std::sregex_iterator it(expr.begin(), expr.end(), named), end; it != end; ++it) {
      std::string name = (*it)[0];
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        if (!families.count(name) && name.ends_with(suffix))
          name.resize(name.size() - std::string(suffix).size());
      }
      EXPECT_TRUE(families.count(name))
          << expr << " names " << (*it)[0] << ", which no process exports";
    }
  }
  // And docs/metrics.md lists every family they export.
  const std::string docs = ReadFile(SourceDir() + "/docs/metrics.md");
  for (const std::string& family : families) {
    if (family.starts_with("nextserve_")) {
      EXPECT_NE(docs.find("`" + family + "`"), std::string::npos)
          << family << " is not in docs/metrics.md";
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(work, ec);
}

}  // namespace
}  // namespace nextserve::testing
