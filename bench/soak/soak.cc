// soak: a router and N replica ranks (sdk::LocalCluster with the supervisor, as `nextserve up`
// runs them) under a steady, moderate closed-loop load for a bounded time. Every --sample-s it
// writes one CSV row per process: RSS, open fds, threads, and for ranks the free KV blocks and
// state slots of their load report. At the end (load stopped, ranks idle) a last row per process
// and a summary: growth of RSS / fds / threads from the first sample to the idle one, outcomes.
// Not a test (it runs for half an hour by default); scripts/soak.sh builds and runs it.
#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/flags.h"
#include "grpcpp/grpcpp.h"
#include "nextserve/internal/v1/rank.grpc.pb.h"
#include "sdk/cpp/client.h"
#include "sdk/cpp/local_cluster.h"

namespace nextserve {
namespace {

std::string ExecutableDir() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : self.parent_path().string();
}

// What /proc says of one process.
struct ProcStats {
  int64_t rss_kb = -1, threads = -1, fds = -1;
};

ProcStats ReadProc(pid_t pid) {
  ProcStats s;
  if (pid <= 0) return s;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    std::istringstream in(line);
    std::string key;
    in >> key;
    if (key == "VmRSS:") in >> s.rss_kb;
    if (key == "Threads:") in >> s.threads;
  }
  if (DIR* dir = opendir(absl::StrCat("/proc/", pid, "/fd").c_str())) {
    s.fds = 0;
    while (dirent* e = readdir(dir)) s.fds += e->d_name[0] != '.';
    closedir(dir);
  }
  return s;
}

// One channel per rank for the whole run, so that sampling does not itself open connections.
absl::StatusOr<internal::v1::LoadReport> RankLoad(const std::string& address) {
  static std::map<std::string, std::unique_ptr<internal::v1::Rank::Stub>> stubs;
  std::unique_ptr<internal::v1::Rank::Stub>& stub = stubs[address];
  if (stub == nullptr) {
    stub = internal::v1::Rank::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  internal::v1::LoadReport report;
  grpc::Status s = stub->GetLoad(&ctx, internal::v1::LoadRequest(), &report);
  if (!s.ok()) return sdk::FromGrpc(s);
  return report;
}

struct Outcomes {
  std::mutex mu;
  std::map<std::string, int64_t> by_code;  // "OK", "UNAVAILABLE", ...
  std::map<std::string, int64_t> errors;   // the message of each failure (not client cancels)
  int64_t tokens = 0;
};

int Run(int argc, char** argv) {
  std::string model = (std::filesystem::path(ExecutableDir()) / ".." / "models" / "tiny")
                          .lexically_normal()
                          .string();
  std::string csv_path, log_dir;
  int64_t duration_s = 1800, sample_s = 30, streams = 4, ranks = 2, max_tokens = 64,
          max_prompt = 256, pause_ms = 250;
  cli::Flags flags("soak [--duration-s 1800] [--streams 4] [--ranks 2] [--sample-s 30] ...");
  flags.String("model", &model, "model directory (default: build/models/tiny)");
  flags.Int("duration-s", &duration_s, "how long the load runs (default 1800)");
  flags.Int("sample-s", &sample_s, "seconds between samples (default 30)");
  flags.Int("streams", &streams, "concurrent streams, one after another each (default 4)");
  flags.Int("ranks", &ranks, "replica ranks, one thread each (default 2)");
  flags.Int("max-tokens", &max_tokens, "longest completion; each asks 16..this (default 64)");
  flags.Int("max-prompt", &max_prompt, "longest prompt in tokens; each has 1..this (default 256)");
  flags.Int("pause-ms", &pause_ms,
            "each stream waits this long before its next request (default 250)");
  flags.String("log-dir", &log_dir,
               "the children's logs, kept (default: a temporary folder, removed unless a stream "
               "failed)");
  flags.String("csv", &csv_path, "also write the samples here (default: stdout only)");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  if (duration_s < 1 || sample_s < 1 || streams < 1 || ranks < 1 || max_tokens < 16 ||
      max_prompt < 1) {
    return cli::Flags::Report(absl::InvalidArgumentError("every number must be positive "
                                                         "(--max-tokens >= 16)"),
                              flags);
  }

  const bool keep_logs = !log_dir.empty();
  if (log_dir.empty()) {
    log_dir = (std::filesystem::temp_directory_path() / absl::StrCat("nextserve_soak_", getpid()))
                  .string();
  }
  std::filesystem::create_directories(log_dir);
  auto cluster = sdk::LocalCluster::Start({
      .bin_dir = ExecutableDir(),
      .model_dir = model,
      .ranks = static_cast<int>(ranks),
      .expert_parallel = false,
      .rank_args = {"--threads", "1"},
      .router_args = {},
      .rank_env = {"OMP_NUM_THREADS=1", "OMP_WAIT_POLICY=passive"},
      .log_dir = log_dir,
      .start_timeout = absl::Seconds(120),
      .stop_grace = absl::Seconds(10),
      .cancelled = nullptr,
      .restart = {.enabled = true,
                  .initial_backoff = absl::Milliseconds(500),
                  .max_backoff = absl::Seconds(30),
                  .stable_after = absl::Seconds(30),
                  .log = nullptr},
  });
  if (!cluster.ok()) {
    std::fprintf(stderr, "soak: %s\n", std::string(cluster.status().message()).c_str());
    return 1;
  }
  std::fprintf(stderr, "soak: router %s, %lld ranks, %lld streams for %lld s (logs in %s)\n",
               (*cluster)->router_address().c_str(), static_cast<long long>(ranks),
               static_cast<long long>(streams), static_cast<long long>(duration_s),
               log_dir.c_str());

  FILE* csv = csv_path.empty() ? nullptr : std::fopen(csv_path.c_str(), "w");
  auto emit = [&](const std::string& row) {
    std::printf("%s\n", row.c_str());
    std::fflush(stdout);
    if (csv != nullptr) {
      std::fprintf(csv, "%s\n", row.c_str());
      std::fflush(csv);
    }
  };
  emit(
      "time_s,process,pid,rss_mb,fds,threads,free_kv_blocks,total_kv_blocks,free_state_slots,"
      "total_state_slots,running,waiting,streams_done,tokens_done");

  Outcomes outcomes;
  std::atomic<bool> stop{false};
  std::vector<std::thread> load;
  const std::string router = (*cluster)->router_address();
  for (int t = 0; t < streams; ++t) {
    load.emplace_back([&, t] {
      auto client = sdk::Client::Create(router);
      std::mt19937 rng(1000 + t);
      for (int n = 0; !stop.load(); ++n) {
        v1::GenerateRequest req;
        const int len = 1 + static_cast<int>(rng() % max_prompt);
        for (int i = 0; i < len; ++i)
          req.mutable_token_ids()->add_ids(static_cast<int32_t>(rng() % 150000));
        req.set_max_tokens(16 + static_cast<int>(rng() % (max_tokens - 15)));
        req.set_ignore_eos(true);
        req.mutable_sampling()->set_temperature(n % 2 == 0 ? 0.0f : 0.7f);
        int64_t tokens = 0;
        absl::StatusOr<sdk::GenerateResult> result =
            client->Generate(req,
                             [&](const v1::GenerateResponse& r) {
                               if (r.has_delta()) tokens += r.delta().token_ids_size();
                               return !stop.load();
                             },
                             {.timeout = absl::Seconds(120)});
        {
          std::lock_guard lock(outcomes.mu);
          ++outcomes.by_code[absl::StatusCodeToString(result.status().code())];
          if (!result.ok() && result.status().code() != absl::StatusCode::kCancelled) {
            ++outcomes.errors[absl::StrCat(
                absl::FormatTime("%H:%M:%S ", absl::Now(), absl::LocalTimeZone()),
                result.status().ToString())];
          }
          outcomes.tokens += tokens;
        }
        for (absl::Time until = absl::Now() + absl::Milliseconds(pause_ms);
             !stop.load() && absl::Now() < until;)
          absl::SleepFor(absl::Milliseconds(10));
      }
    });
  }

  // The baseline is the second sample: by then the ranks have paged in their weights.
  int samples = 0;
  std::map<std::string, ProcStats> first;
  std::map<std::string, ProcStats> last;
  const absl::Time start = absl::Now();
  auto sample = [&] {
    int64_t done = 0, tokens = 0;
    {
      std::lock_guard lock(outcomes.mu);
      for (const auto& [code, n] : outcomes.by_code) done += n;
      tokens = outcomes.tokens;
    }
    const std::string t = absl::StrCat(absl::ToInt64Seconds(absl::Now() - start));
    std::vector<std::pair<std::string, pid_t>> procs = {{"router", (*cluster)->router_pid()}};
    for (int i = 0; i < ranks; ++i)
      procs.emplace_back(absl::StrCat("rank", i), (*cluster)->rank_pid(i));
    for (const auto& [name, pid] : procs) {
      const ProcStats s = ReadProc(pid);
      std::string load_cols = ",,,,,";
      if (name != "router") {
        const int i = std::stoi(name.substr(4));
        if (auto l = RankLoad((*cluster)->rank_address(i)); l.ok()) {
          load_cols = absl::StrCat(l->free_kv_blocks(), ",", l->total_kv_blocks(), ",",
                                   l->free_state_slots(), ",", l->total_state_slots(), ",",
                                   l->running(), ",", l->waiting());
        }
      }
      emit(absl::StrCat(t, ",", name, ",", pid, ",", absl::StrFormat("%.1f", s.rss_kb / 1024.0),
                        ",", s.fds, ",", s.threads, ",", load_cols, ",", done, ",", tokens));
      if (samples <= 1) first[name] = s;
      last[name] = s;
    }
    ++samples;
  };

  const absl::Time end = start + absl::Seconds(duration_s);
  for (absl::Time next = start; absl::Now() < end;) {
    sample();
    next += absl::Seconds(sample_s);
    while (absl::Now() < std::min(next, end)) absl::SleepFor(absl::Milliseconds(200));
  }
  stop = true;
  for (std::thread& t : load) t.join();
  // Idle: every rank should report all of its cache free again.
  absl::SleepFor(absl::Seconds(2));
  sample();

  std::fprintf(stderr, "\nsoak summary after %lld s (second sample, warm -> idle at the end):\n",
               static_cast<long long>(duration_s));
  for (const auto& [name, f] : first) {
    const ProcStats& l = last[name];
    std::fprintf(stderr, "  %-7s RSS %.1f -> %.1f MB, fds %lld -> %lld, threads %lld -> %lld\n",
                 name.c_str(), f.rss_kb / 1024.0, l.rss_kb / 1024.0, static_cast<long long>(f.fds),
                 static_cast<long long>(l.fds), static_cast<long long>(f.threads),
                 static_cast<long long>(l.threads));
  }
  std::string codes;
  int64_t tokens = 0;
  std::map<std::string, int64_t> errors;
  {
    std::lock_guard lock(outcomes.mu);
    for (const auto& [code, n] : outcomes.by_code) absl::StrAppend(&codes, code, " ", n, "  ");
    tokens = outcomes.tokens;
    errors = outcomes.errors;
  }
  std::fprintf(stderr, "  streams: %s| %lld tokens, %.1f tokens/s | restarts: router %d",
               codes.c_str(), static_cast<long long>(tokens),
               tokens / static_cast<double>(duration_s), (*cluster)->router_restarts());
  for (int i = 0; i < ranks; ++i)
    std::fprintf(stderr, ", rank%d %d", i, (*cluster)->rank_restarts(i));
  std::fprintf(stderr, "\n");
  int shown = 0;
  for (const auto& [message, n] : errors) {
    if (++shown > 20) break;
    std::fprintf(stderr, "  failed: %s%s\n", message.c_str(),
                 n > 1 ? absl::StrCat(" (x", n, ")").c_str() : "");
  }
  if (csv != nullptr) std::fclose(csv);
  (*cluster)->Stop();
  if (keep_logs || !errors.empty()) {
    std::fprintf(stderr, "  the children's logs: %s\n", log_dir.c_str());
  } else {
    std::error_code ec;
    std::filesystem::remove_all(log_dir, ec);
  }
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Run(argc, argv);
}
