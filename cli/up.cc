// `nextserve up`: a router and N ranks on this machine (sdk::LocalCluster). Waits until the router
// sees every rank, then supervises them until Ctrl-C / SIGTERM: a child that dies is restarted on
// its port with capped backoff (expert-parallel: the whole mpirun group, whose communicator is
// broken), while the router serves on the other ranks and takes it back once it answers. Then
// stops them in order, router first. The children die with this process even if it is killed,
// so nothing is left behind.
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/flags.h"
#include "cli/serving_commands.h"
#include "sdk/cpp/local_cluster.h"

namespace nextserve::cli {
namespace {

std::string ExecutableDir() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : self.parent_path().string();
}

// One line on stderr, with the time: the supervisor's deaths and restarts read as a timeline.
void Say(const std::string& line) {
  std::fprintf(stderr, "%s nextserve up: %s\n",
               absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()).c_str(),
               line.c_str());
}

}  // namespace

int Up(int argc, char** argv) {
  // build/bin/nextserve -> build/models/tiny, the model the install script generates.
  std::string model = (std::filesystem::path(ExecutableDir()) / ".." / "models" / "tiny")
                          .lexically_normal()
                          .string();
  std::string host = "127.0.0.1";
  int64_t ranks = 1, port = 8000, threads = 0, kv_blocks = 0, state_slots = 0, max_batch_tokens = 0,
          max_queue = 256, timeout_s = 300, max_restart_backoff_s = 30, drain_grace_s = -1,
          http_port = -1;
  std::string router_args, rank_args;
  Flags flags("nextserve up [--model DIR] [--ranks N] [--port P] [--host H] [--threads N] ...");
  flags.String(
      "model", &model,
      "model directory: config.json, weights, tokenizer.json (default: build/models/tiny)");
  flags.Int("ranks", &ranks, "rank processes to start (default 1)");
  std::string mode = "expert-parallel";
  flags.String("mode", &mode,
               "expert-parallel (default: the ranks are one mpirun group, experts sharded over "
               "them) or replicas (independent ranks, each with every expert)");
  flags.Int("port", &port, "router port (default 8000)");
  flags.String("host", &host,
               "router listen address (default 127.0.0.1; ranks listen on loopback)");
  flags.Int("threads", &threads, "CPU threads per rank (default: cores / ranks)");
  flags.Int("kv-blocks", &kv_blocks, "KV blocks per rank (default: the rank's)");
  flags.Int("state-slots", &state_slots, "DeltaNet state slots per rank (default: the rank's)");
  flags.Int("max-batch-tokens", &max_batch_tokens, "tokens per engine step (default: the rank's)");
  flags.Int("max-queue", &max_queue, "requests that may wait in the router (default 256)");
  flags.Int(
      "http-port", &http_port,
      "the router's OpenAI-compatible HTTP port (/v1/chat/completions, ...); -1 (default): off");
  flags.String("router-args", &router_args,
               "more flags for nextserve-router, space-separated (e.g. \"--api-keys-file F\")");
  flags.String("rank-args", &rank_args,
               "more flags for every nextserve-rank, space-separated (e.g. \"--max-running 32\")");
  flags.Int("timeout-s", &timeout_s, "how long to wait for everything to be ready (default 300)");
  flags.Int("max-restart-backoff-s", &max_restart_backoff_s,
            "a child that keeps dying is restarted after 0.5 s, then twice as long each time, up "
            "to this (default 30)");
  flags.Int("drain-grace-s", &drain_grace_s,
            "passed to the router and the ranks: on Ctrl-C / SIGTERM, how long streams in flight "
            "may finish (default: theirs)");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return Flags::Report(s, flags);
  if (max_restart_backoff_s < 1) {
    return Flags::Report(absl::InvalidArgumentError("--max-restart-backoff-s must be >= 1"), flags);
  }
  if (ranks < 1 || ranks > 64)
    return Flags::Report(absl::InvalidArgumentError("--ranks must be in [1, 64]"), flags);
  if (mode != "expert-parallel" && mode != "replicas") {
    return Flags::Report(absl::InvalidArgumentError(
                             "--mode must be expert-parallel or replicas, not '" + mode + "'"),
                         flags);
  }
  if (port < 1 || port > 65535)
    return Flags::Report(absl::InvalidArgumentError("--port must be in [1, 65535]"), flags);
  for (const char* file : {"config.json", "tokenizer.json"}) {
    if (!std::filesystem::exists(std::filesystem::path(model) / file)) {
      std::fprintf(
          stderr, "error: %s has no %s%s\n", model.c_str(), file,
          std::string(file) == "tokenizer.json"
              ? " (copy the model's tokenizer there, e.g. build/tokenizer/qwen/tokenizer.json)"
              : " (make one: build/bin/nextserve-make-model --out DIR --preset tiny)");
      return 1;
    }
  }
  if (threads <= 0) threads = std::max<int64_t>(1, std::thread::hardware_concurrency() / ranks);

  // SIGINT and SIGTERM are taken by sigtimedwait below (the children unblock them).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigprocmask(SIG_BLOCK, &signals, nullptr);

  sdk::LocalClusterOptions options{
      .bin_dir = ExecutableDir(),
      .model_dir = model,
      .ranks = static_cast<int>(ranks),
      .expert_parallel = mode == "expert-parallel",
      .rank_args = {"--threads", std::to_string(threads)},
      .router_args = {"--max-queue", std::to_string(max_queue)},
      .router_host = host,
      .router_port = static_cast<int>(port),
      .rank_env = {absl::StrCat("OMP_NUM_THREADS=", threads)},
      .log_dir = "",
      .start_timeout = absl::Seconds(timeout_s),
      // Time for the router's and then the ranks' drain (their default grace is 30 s), then
      // SIGKILL; a second Ctrl-C kills at once.
      .stop_grace = absl::Seconds((drain_grace_s >= 0 ? drain_grace_s : 30) + 10),
      .cancelled = nullptr,
      .restart = {.enabled = true,
                  .initial_backoff = absl::Milliseconds(500),
                  .max_backoff = absl::Seconds(max_restart_backoff_s),
                  .stable_after = absl::Seconds(30),
                  .log = [](const std::string& line) { Say(line); }},
  };
  if (drain_grace_s >= 0) {
    for (auto* args : {&options.rank_args, &options.router_args})
      args->insert(args->end(), {"--drain-grace-s", std::to_string(drain_grace_s)});
  }
  if (http_port >= 0)
    options.router_args.insert(options.router_args.end(),
                               {"--http-port", std::to_string(http_port)});
  for (const auto& [text, args] :
       {std::pair{&router_args, &options.router_args}, std::pair{&rank_args, &options.rank_args}}) {
    for (absl::string_view word : absl::StrSplit(*text, ' ', absl::SkipWhitespace()))
      args->emplace_back(word);
  }
  if (kv_blocks > 0)
    options.rank_args.insert(options.rank_args.end(), {"--kv-blocks", std::to_string(kv_blocks)});
  if (state_slots > 0)
    options.rank_args.insert(options.rank_args.end(),
                             {"--state-slots", std::to_string(state_slots)});
  if (max_batch_tokens > 0) {
    options.rank_args.insert(options.rank_args.end(),
                             {"--max-batch-tokens", std::to_string(max_batch_tokens)});
  }
  // Ctrl-C while starting abandons the start; a child that dies while starting fails it.
  options.cancelled = [] {
    sigset_t pending;
    sigpending(&pending);
    return sigismember(&pending, SIGINT) == 1 || sigismember(&pending, SIGTERM) == 1;
  };
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<sdk::LocalCluster>> cluster = sdk::LocalCluster::Start(options);
  if (!cluster.ok()) {
    std::fprintf(stderr, "nextserve up: %s\n", std::string(cluster.status().message()).c_str());
    return cluster.status().code() == absl::StatusCode::kCancelled ? 130 : 1;
  }
  std::printf(
      "nextserve up: router at %s, %lld rank%s, model %s (ready in %.1f s). Ctrl-C stops.\n",
      (*cluster)->router_address().c_str(), static_cast<long long>(ranks), ranks == 1 ? "" : "s",
      model.c_str(), absl::ToDoubleSeconds(absl::Now() - start));
  for (int i = 0; i < (*cluster)->num_ranks(); ++i)
    std::printf("nextserve up: rank%d at %s\n", i, (*cluster)->rank_address(i).c_str());
  if (http_port >= 0)
    std::printf("nextserve up: OpenAI-compatible HTTP at http://%s:%lld/v1\n", host.c_str(),
                static_cast<long long>(http_port));
  std::fflush(stdout);

  // The supervisor (a thread of the cluster) restarts what dies; this thread waits for a signal.
  for (;;) {
    siginfo_t info;
    const int sig = sigwaitinfo(&signals, &info);
    if (sig == SIGINT || sig == SIGTERM) break;
  }
  Say("stopping (router first, then the ranks; Ctrl-C again to kill them now)");
  (*cluster)->Stop();
  Say("stopped");
  return 0;
}

}  // namespace nextserve::cli
