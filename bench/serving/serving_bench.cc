// serving_bench: a load generator for the serving stack. It starts a router and ranks on this
// machine (sdk::LocalCluster), then for each load point runs the same requests twice -- through
// the router, and streamed straight from rank 0 over the internal API -- and reports throughput,
// time to first token (TTFT) and inter-token latency (ITL) at p50/p90/p99, plus the router's own
// cost: the latency it adds and its CPU time per token (from /proc), all measured in the same run.
//
//   serving_bench [--model DIR] [--concurrency 1,4,16] [--rates 2,8] [--requests 32]
//                 [--prompt-len 64] [--max-tokens 64] [--threads N]
//
// Load points: closed loop (C clients, each sends its next request when the last one ends) and
// open loop (Poisson arrivals at R requests/s, TTFT counted from the scheduled arrival).
// Requests are greedy with eos ignored, so both paths generate exactly max_tokens tokens. Each
// point runs direct, router, router, direct and pools the two runs of each path. "router cpu" on
// the direct rows is the router's idle cost (its load polling); "added" subtracts it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "grpcpp/grpcpp.h"
#include "nextserve/internal/v1/rank.grpc.pb.h"
#include "sdk/cpp/client.h"
#include "sdk/cpp/local_cluster.h"

namespace nextserve {
namespace {

using Clock = std::chrono::steady_clock;

// One request's timeline.
struct Trace {
  Clock::time_point scheduled, first_token, done;
  std::vector<Clock::time_point> token_times;  // one per message that carried tokens
  int tokens = 0;
  bool ok = false;
  std::string error;
};

// Sends one request and records its timeline; implemented by the router and direct paths.
class Path {
 public:
  virtual ~Path() = default;
  virtual void Run(const std::vector<int32_t>& prompt, int max_tokens, Trace* trace) = 0;
};

class RouterPath : public Path {
 public:
  explicit RouterPath(const std::string& address) : client_(sdk::Client::Create(address)) {}
  void Run(const std::vector<int32_t>& prompt, int max_tokens, Trace* t) override {
    v1::GenerateRequest req;
    req.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
    req.set_max_tokens(max_tokens);
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(0);
    auto stream = client_->StartGenerate(req);
    v1::GenerateResponse r;
    while (stream->Next(&r)) {
      if (!r.has_delta() || r.delta().token_ids_size() == 0) continue;
      const auto now = Clock::now();
      if (t->tokens == 0) t->first_token = now;
      t->token_times.push_back(now);
      t->tokens += r.delta().token_ids_size();
    }
    const absl::Status s = stream->Finish();
    t->done = Clock::now();
    t->ok = s.ok();
    if (!s.ok()) t->error = s.ToString();
  }

 private:
  std::unique_ptr<sdk::Client> client_;
};

class DirectPath : public Path {
 public:
  explicit DirectPath(const std::string& address)
      : stub_(internal::v1::Rank::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {}
  void Run(const std::vector<int32_t>& prompt, int max_tokens, Trace* t) override {
    internal::v1::SubmitRequest req;
    req.set_request_id(absl::StrCat("bench-", next_id_.fetch_add(1)));
    req.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
    req.set_max_tokens(max_tokens);
    internal::v1::Sampling* s = req.mutable_sampling();
    s->set_temperature(0);
    s->set_top_p(1);
    s->set_repetition_penalty(1);
    s->set_ignore_eos(true);
    s->set_logprobs(-1);
    grpc::ClientContext ctx;
    auto reader = stub_->Submit(&ctx, req);
    internal::v1::SubmitResponse r;
    while (reader->Read(&r)) {
      if (r.token_ids_size() == 0) continue;
      const auto now = Clock::now();
      if (t->tokens == 0) t->first_token = now;
      t->token_times.push_back(now);
      t->tokens += r.token_ids_size();
    }
    const grpc::Status s2 = reader->Finish();
    t->done = Clock::now();
    t->ok = s2.ok();
    if (!s2.ok()) t->error = s2.error_message();
  }

 private:
  std::unique_ptr<internal::v1::Rank::Stub> stub_;
  std::atomic<int64_t> next_id_{0};
};

struct LoadPoint {
  std::string name;
  int concurrency = 0;  // closed loop
  double rate = 0;      // open loop, requests/s
};

struct Result {
  double wall_s = 0, throughput = 0;               // completion tokens/s
  double ttft[3] = {0, 0, 0}, itl[3] = {0, 0, 0};  // p50, p90, p99 in ms
  int failed = 0;
  std::string first_error;
};

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

struct Run {
  std::vector<Trace> traces;
  double wall_s = 0;
};

Run RunLoad(Path& path, const LoadPoint& point, const std::vector<std::vector<int32_t>>& prompts,
            int max_tokens, uint64_t seed) {
  std::vector<Trace> traces(prompts.size());
  const auto start = Clock::now();
  if (point.concurrency > 0) {
    std::atomic<size_t> next{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < point.concurrency; ++c) {
      clients.emplace_back([&] {
        for (size_t i; (i = next.fetch_add(1)) < prompts.size();) {
          traces[i].scheduled = Clock::now();
          path.Run(prompts[i], max_tokens, &traces[i]);
        }
      });
    }
    for (auto& t : clients) t.join();
  } else {
    std::mt19937_64 rng(seed);
    std::exponential_distribution<double> gap(point.rate);
    std::vector<std::thread> requests;
    auto at = start;
    for (size_t i = 0; i < prompts.size(); ++i) {
      at += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
      std::this_thread::sleep_until(at);
      traces[i].scheduled = at;
      requests.emplace_back([&, i] { path.Run(prompts[i], max_tokens, &traces[i]); });
    }
    for (auto& t : requests) t.join();
  }
  return {std::move(traces), std::chrono::duration<double>(Clock::now() - start).count()};
}

// Pools several runs of one path at one load point.
Result Summarize(const std::vector<Run>& runs) {
  Result r;
  std::vector<double> ttft, itl;
  int64_t tokens = 0;
  for (const Run& run : runs) {
    r.wall_s += run.wall_s;
    for (const Trace& t : run.traces) {
      if (!t.ok) {
        if (r.failed++ == 0) r.first_error = t.error;
        continue;
      }
      tokens += t.tokens;
      ttft.push_back(Ms(t.first_token - t.scheduled));
      for (size_t k = 1; k < t.token_times.size(); ++k)
        itl.push_back(Ms(t.token_times[k] - t.token_times[k - 1]));
    }
  }
  r.throughput = tokens / r.wall_s;
  const double ps[3] = {0.5, 0.9, 0.99};
  for (int k = 0; k < 3; ++k) {
    r.ttft[k] = Percentile(ttft, ps[k]);
    r.itl[k] = Percentile(itl, ps[k]);
  }
  return r;
}

// utime + stime of a process, in seconds.
double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(in, line);
  const size_t close = line.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return 0;
  std::vector<std::string> f = absl::StrSplit(line.substr(close + 2), ' ');
  if (f.size() < 13) return 0;
  // Fields after the name start at 3 (state); utime and stime are 14 and 15.
  return (std::stod(f[11]) + std::stod(f[12])) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string ExecutableDir() {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : self.parent_path().string();
}

absl::StatusOr<std::vector<LoadPoint>> ParsePoints(const std::string& concurrency,
                                                   const std::string& rates) {
  std::vector<LoadPoint> points;
  for (absl::string_view c : absl::StrSplit(concurrency, ',', absl::SkipWhitespace())) {
    int v;
    if (!absl::SimpleAtoi(c, &v) || v < 1)
      return absl::InvalidArgumentError(absl::StrCat("--concurrency: '", c, "'"));
    points.push_back({absl::StrCat("closed c=", v), v, 0});
  }
  for (absl::string_view r : absl::StrSplit(rates, ',', absl::SkipWhitespace())) {
    double v;
    if (!absl::SimpleAtod(r, &v) || !(v > 0))
      return absl::InvalidArgumentError(absl::StrCat("--rates: '", r, "'"));
    points.push_back({absl::StrCat("poisson ", r, "/s"), 0, v});
  }
  return points;
}

// GET /metrics once (what a Prometheus scrape costs the process); false when it did not answer.
bool Scrape(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  if (ok) {
    const std::string req = "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n";
    ok = write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size());
    char buf[8192];
    ssize_t got = 0;
    for (ssize_t n; ok && (n = read(fd, buf, sizeof(buf))) > 0;) got += n;
    ok = ok && got > 0;
  }
  close(fd);
  return ok;
}

// --metrics-compare: the same requests through two clusters, metrics off and on (router and rank
// --metrics-port, scraped every second as Prometheus would), off, on, on, off per load point.
int CompareMetrics(const sdk::LocalClusterOptions& base, const std::vector<LoadPoint>& points,
                   const std::vector<std::vector<int32_t>>& prompts, int64_t max_tokens,
                   int64_t warmup, int64_t seed) {
  const int router_metrics = sdk::FreeLoopbackPort(), rank_metrics = sdk::FreeLoopbackPort();
  sdk::LocalClusterOptions on = base;
  if (!base.log_dir.empty()) {  // the children's log names would collide
    on.log_dir = (std::filesystem::path(base.log_dir) / "nextserve_bench_metrics_on").string();
    std::filesystem::create_directories(on.log_dir);
  }
  on.router_args.insert(on.router_args.end(), {"--metrics-port", std::to_string(router_metrics)});
  on.rank_args.insert(on.rank_args.end(), {"--metrics-port", std::to_string(rank_metrics)});
  absl::StatusOr<std::unique_ptr<sdk::LocalCluster>> clusters[2] = {sdk::LocalCluster::Start(base),
                                                                    sdk::LocalCluster::Start(on)};
  for (auto& c : clusters) {
    if (!c.ok()) {
      std::fprintf(stderr, "serving_bench: %s\n", std::string(c.status().message()).c_str());
      return 1;
    }
  }
  if (!Scrape(router_metrics) || !Scrape(rank_metrics)) {
    std::fprintf(stderr, "serving_bench: the metrics ports %d, %d do not answer\n", router_metrics,
                 rank_metrics);
    return 1;
  }
  std::atomic<bool> stop{false};
  std::thread scraper([&] {
    while (!stop.load()) {
      Scrape(router_metrics);
      Scrape(rank_metrics);
      for (int i = 0; i < 10 && !stop.load(); ++i) usleep(100 * 1000);
    }
  });
  RouterPath off_path((*clusters[0])->router_address()), on_path((*clusters[1])->router_address());
  Path* paths[2] = {&off_path, &on_path};
  std::vector<std::vector<int32_t>> warm(
      prompts.begin(), prompts.begin() + std::min<int64_t>(warmup, prompts.size()));
  for (Path* p : paths) RunLoad(*p, {"warmup", 1, 0}, warm, max_tokens, seed);
  std::printf("metrics off vs on (router and rank, scraped every 1 s), %zu requests per point\n",
              prompts.size());
  std::printf("%-16s %-7s %9s %8s %8s %8s %8s %12s %12s\n", "load", "metrics", "tok/s", "ttft50",
              "ttft99", "itl50", "itl99", "router cpu", "rank cpu");
  std::printf("%-16s %-7s %9s %8s %8s %8s %8s %12s %12s\n", "", "", "", "ms", "ms", "ms", "ms",
              "us/token", "us/token");
  const double total_tokens = static_cast<double>(prompts.size() * max_tokens);
  for (const LoadPoint& point : points) {
    std::vector<Run> runs[2];
    double router_cpu[2] = {0, 0}, rank_cpu[2] = {0, 0};
    for (int k : {0, 1, 1, 0}) {
      const pid_t router_pid = (*clusters[k])->router_pid(), rank_pid = (*clusters[k])->rank_pid(0);
      const double r0 = CpuSeconds(router_pid), k0 = CpuSeconds(rank_pid);
      runs[k].push_back(RunLoad(*paths[k], point, prompts, max_tokens, seed + runs[k].size()));
      router_cpu[k] += (CpuSeconds(router_pid) - r0) / (2 * total_tokens) * 1e6;
      rank_cpu[k] += (CpuSeconds(rank_pid) - k0) / (2 * total_tokens) * 1e6;
    }
    const Result res[2] = {Summarize(runs[0]), Summarize(runs[1])};
    for (int k = 0; k < 2; ++k) {
      const Result& r = res[k];
      std::printf("%-16s %-7s %9.1f %8.2f %8.2f %8.2f %8.2f %12.1f %12.1f%s%s\n",
                  point.name.c_str(), k == 0 ? "off" : "on", r.throughput, r.ttft[0], r.ttft[2],
                  r.itl[0], r.itl[2], router_cpu[k], rank_cpu[k], r.failed ? "  FAILED: " : "",
                  r.first_error.c_str());
    }
    std::printf("%-16s %-7s %8.1f%% %8.2f %8.2f %8.2f %8.2f %11.1f%% %11.1f%%\n", "", "on-off",
                100.0 * (res[1].throughput / res[0].throughput - 1),
                res[1].ttft[0] - res[0].ttft[0], res[1].ttft[2] - res[0].ttft[2],
                res[1].itl[0] - res[0].itl[0], res[1].itl[2] - res[0].itl[2],
                100.0 * (router_cpu[1] / router_cpu[0] - 1),
                100.0 * (rank_cpu[1] / rank_cpu[0] - 1));
    std::fflush(stdout);
  }
  stop = true;
  scraper.join();
  return 0;
}

int Main(int argc, char** argv) {
  std::string model = (std::filesystem::path(ExecutableDir()) / ".." / "models" / "tiny")
                          .lexically_normal()
                          .string();
  std::string concurrency = "1,4,16", rates = "4", rank_args;
  int64_t requests = 32, prompt_len = 64, max_tokens = 64, threads = 0, seed = 1, warmup = 4;
  cli::Flags flags(
      "serving_bench [--model DIR] [--concurrency 1,4,16] [--rates 4] [--requests N] ...");
  flags.String("model", &model, "model directory with tokenizer.json (default: build/models/tiny)");
  flags.String("concurrency", &concurrency,
               "closed-loop client counts, comma-separated ('' = none)");
  flags.String("rates", &rates, "open-loop Poisson arrival rates in requests/s ('' = none)");
  flags.Int("requests", &requests, "requests per load point and path");
  flags.Int("prompt-len", &prompt_len, "prompt tokens (random ids)");
  flags.Int("max-tokens", &max_tokens, "tokens generated per request (eos ignored)");
  flags.Int("threads", &threads, "CPU threads for the rank (default: cores - 1)");
  flags.Int("warmup", &warmup, "requests sent before measuring");
  flags.Int("seed", &seed, "seed for prompts and arrivals");
  flags.String("rank-args", &rank_args, "extra nextserve-rank flags, space-separated");
  bool metrics_compare = false;
  flags.Bool("metrics-compare", &metrics_compare,
             "instead: metrics off vs on, through the router of two clusters (docs/metrics.md)");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  absl::StatusOr<std::vector<LoadPoint>> points = ParsePoints(concurrency, rates);
  if (!points.ok()) return cli::Flags::Report(points.status(), flags);
  if (requests < 1 || prompt_len < 1 || max_tokens < 1) {
    return cli::Flags::Report(
        absl::InvalidArgumentError("--requests, --prompt-len, --max-tokens must be >= 1"), flags);
  }
  // Leave a core for the client and the router, whose cost is what is measured.
  if (threads <= 0)
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1);

  sdk::LocalClusterOptions options{.bin_dir = ExecutableDir(), .model_dir = model, .ranks = 1};
  options.rank_args = {"--threads", std::to_string(threads)};
  for (absl::string_view a : absl::StrSplit(rank_args, ' ', absl::SkipWhitespace()))
    options.rank_args.emplace_back(a);
  options.rank_env = {absl::StrCat("OMP_NUM_THREADS=", threads), "OMP_WAIT_POLICY=passive"};
  options.log_dir = std::filesystem::temp_directory_path().string();
  if (metrics_compare) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::vector<std::vector<int32_t>> prompts(requests);
    for (auto& p : prompts) {
      p.resize(prompt_len);
      for (int32_t& id : p) id = static_cast<int32_t>(rng() % 500);  // ids every model has
    }
    return CompareMetrics(options, *points, prompts, max_tokens, warmup, seed);
  }
  auto cluster = sdk::LocalCluster::Start(options);
  if (!cluster.ok()) {
    std::fprintf(stderr, "serving_bench: %s\n", std::string(cluster.status().message()).c_str());
    return 1;
  }
  auto info = sdk::Client::Create((*cluster)->router_address())->GetModelInfo();
  if (!info.ok()) {
    std::fprintf(stderr, "serving_bench: %s\n", info.status().ToString().c_str());
    return 1;
  }
  std::mt19937 rng(static_cast<uint32_t>(seed));
  const int32_t vocab = static_cast<int32_t>(std::min<int64_t>(info->vocab_size(), 151643));
  std::vector<std::vector<int32_t>> prompts(requests);
  for (auto& p : prompts) {
    p.resize(prompt_len);
    for (int32_t& id : p) id = static_cast<int32_t>(rng() % vocab);
  }

  RouterPath router((*cluster)->router_address());
  DirectPath direct((*cluster)->rank_address(0));
  {
    std::vector<std::vector<int32_t>> warm(prompts.begin(),
                                           prompts.begin() + std::min<int64_t>(warmup, requests));
    RunLoad(router, {"warmup", 1, 0}, warm, max_tokens, seed);
    RunLoad(direct, {"warmup", 1, 0}, warm, max_tokens, seed);
  }
  std::printf(
      "model %s, 1 rank (%lld threads), %lld requests per point, prompt %lld, output %lld tokens\n",
      model.c_str(), static_cast<long long>(threads), static_cast<long long>(requests),
      static_cast<long long>(prompt_len), static_cast<long long>(max_tokens));
  std::printf("%-16s %-7s %9s %8s %8s %8s %8s %8s %8s %12s %12s\n", "load", "path", "tok/s",
              "ttft50", "ttft90", "ttft99", "itl50", "itl90", "itl99", "router cpu", "rank cpu");
  std::printf("%-16s %-7s %9s %8s %8s %8s %8s %8s %8s %12s %12s\n", "", "", "", "ms", "ms", "ms",
              "ms", "ms", "ms", "us/token", "us/token");
  const pid_t router_pid = (*cluster)->router_pid(), rank_pid = (*cluster)->rank_pid(0);
  const double total_tokens = static_cast<double>(requests * max_tokens);
  for (const LoadPoint& point : *points) {
    // Direct, router, router, direct: both paths see the same drift (caches, clocks, neighbours).
    std::vector<Run> runs[2];
    double router_cpu[2] = {0, 0}, rank_cpu[2] = {0, 0};
    Path* paths[2] = {&direct, &router};
    for (int k : {0, 1, 1, 0}) {
      const double r0 = CpuSeconds(router_pid), k0 = CpuSeconds(rank_pid);
      runs[k].push_back(RunLoad(*paths[k], point, prompts, max_tokens, seed + runs[k].size()));
      router_cpu[k] += (CpuSeconds(router_pid) - r0) / (2 * total_tokens) * 1e6;
      rank_cpu[k] += (CpuSeconds(rank_pid) - k0) / (2 * total_tokens) * 1e6;
    }
    const Result res[2] = {Summarize(runs[0]), Summarize(runs[1])};
    for (int k = 0; k < 2; ++k) {
      const Result& r = res[k];
      std::printf("%-16s %-7s %9.1f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %12.1f %12.1f%s%s\n",
                  point.name.c_str(), k == 0 ? "direct" : "router", r.throughput, r.ttft[0],
                  r.ttft[1], r.ttft[2], r.itl[0], r.itl[1], r.itl[2], router_cpu[k], rank_cpu[k],
                  r.failed ? "  FAILED: " : "", r.first_error.c_str());
    }
    std::printf("%-16s %-7s %8.1f%% %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %12.1f\n", "", "added",
                100.0 * (res[1].throughput / res[0].throughput - 1),
                res[1].ttft[0] - res[0].ttft[0], res[1].ttft[1] - res[0].ttft[1],
                res[1].ttft[2] - res[0].ttft[2], res[1].itl[0] - res[0].itl[0],
                res[1].itl[1] - res[0].itl[1], res[1].itl[2] - res[0].itl[2],
                router_cpu[1] - router_cpu[0]);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Main(argc, argv);
}
