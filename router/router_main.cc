// nextserve-router: the public gRPC endpoint in front of the ranks.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/flags.h"
#include "cli/tls.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "metrics/prometheus.h"
#include "metrics/serving.h"
#include "router/api_keys.h"
#include "router/http_server.h"
#include "router/model_spec.h"
#include "router/openai_frontend.h"
#include "router/parse_errors.h"
#include "router/rank_pool.h"
#include "router/service.h"

namespace {

using nextserve::cli::Flags;

int Run(int argc, char** argv) {
  std::string model_dir, ranks_flag, host = "127.0.0.1", model_name;
  int64_t port = 8000, max_queue = 256, rank_queue_depth = -1, poll_ms = 150,
          probe_timeout_ms = 1000, fail_after_probes = 3, fail_after_ms = 5000, drain_grace_s = 30,
          max_moves = 3, http_port = -1, http_threads = 2, metrics_port = -1;
  std::string http_host, api_keys_file;
  nextserve::cli::TlsFiles public_tls, rank_tls;
  Flags flags(
      "nextserve-router --model DIR --ranks host:port[,host:port...] [--port P] [--host H] "
      "[--max-queue N]");
  flags.String("model", &model_dir,
               "model directory (config.json, tokenizer.json, generation_config.json)");
  flags.String("ranks", &ranks_flag, "comma-separated rank addresses (host:port)");
  flags.String("host", &host, "address to listen on");
  flags.Int("port", &port, "port to listen on (0: any free port, printed at start)");
  flags.String("model-name", &model_name, "name reported by GetModelInfo (default: the directory)");
  flags.Int("max-queue", &max_queue,
            "requests that may wait for a rank; more are RESOURCE_EXHAUSTED");
  flags.Int("rank-queue-depth", &rank_queue_depth,
            "requests sent to a rank beyond its state slots (-1: as many as it has slots)");
  flags.Int("poll-ms", &poll_ms, "how often each rank's load is polled");
  flags.Int("probe-timeout-ms", &probe_timeout_ms,
            "a rank that does not answer a poll this fast is suspect: no new work, streams kept");
  flags.Int("fail-after-probes", &fail_after_probes,
            "a suspect rank is down (its streams end UNAVAILABLE) after this many missed polls in "
            "a row...");
  flags.Int("fail-after-ms", &fail_after_ms,
            "...and no answer for this long (a broken connection is down at once)");
  flags.Int("http-port", &http_port,
            "OpenAI-compatible HTTP port (/v1/chat/completions, /v1/completions, /v1/models, "
            "/health); 0: any free port; -1 (default): off");
  flags.String("http-host", &http_host, "address for the HTTP port (default: --host)");
  flags.Int("http-threads", &http_threads, "I/O threads for the HTTP port (default 2)");
  nextserve::cli::AddTlsFlags(flags, "tls", "the public gRPC port (with -ca: mutual TLS)",
                              &public_tls);
  nextserve::cli::AddTlsFlags(flags, "rank-tls",
                              "the router's channels to the ranks (-ca verifies them; -cert/-key "
                              "is the router's client certificate)",
                              &rank_tls);
  flags.String("api-keys-file", &api_keys_file,
               "API keys, one per line: KEY [label=NAME] [max_in_flight=N]; also read from "
               "$NEXTSERVE_API_KEYS (KEY[:N],...). With any key, every public call needs one");
  flags.Int("drain-grace-s", &drain_grace_s,
            "on SIGTERM/SIGINT, how long requests in flight may finish before they end UNAVAILABLE "
            "(default 30, Kubernetes' termination grace)");
  flags.Int("max-moves", &max_moves,
            "how many times a request that streamed tokens may move to another rank after its "
            "rank is lost (0: never; then it ends UNAVAILABLE)");
  flags.Int("metrics-port", &metrics_port,
            "Prometheus /metrics port; 0: any free port, printed at start; -1 (default): off");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return Flags::Report(s, flags);
  if (model_dir.empty())
    return Flags::Report(absl::InvalidArgumentError("--model is required"), flags);
  std::vector<std::string> ranks = absl::StrSplit(ranks_flag, ',', absl::SkipWhitespace());
  if (ranks.empty()) return Flags::Report(absl::InvalidArgumentError("--ranks is required"), flags);
  if (port < 0 || port > 65535)
    return Flags::Report(absl::InvalidArgumentError("--port must be in [0, 65535]"), flags);
  if (max_queue < 0)
    return Flags::Report(absl::InvalidArgumentError("--max-queue must be >= 0"), flags);
  if (metrics_port < -1 || metrics_port > 65535)
    return Flags::Report(absl::InvalidArgumentError("--metrics-port must be in [-1, 65535]"),
                         flags);
  if (http_port < -1 || http_port > 65535)
    return Flags::Report(absl::InvalidArgumentError("--http-port must be in [-1, 65535]"), flags);
  if (http_threads < 1)
    return Flags::Report(absl::InvalidArgumentError("--http-threads must be >= 1"), flags);
  if (drain_grace_s < 0 || max_moves < 0) {
    return Flags::Report(absl::InvalidArgumentError("--drain-grace-s and --max-moves must be >= 0"),
                         flags);
  }
  if (poll_ms < 1 || probe_timeout_ms < 1 || fail_after_probes < 1 || fail_after_ms < 0) {
    return Flags::Report(absl::InvalidArgumentError(
                             "--poll-ms, --probe-timeout-ms and --fail-after-probes must be >= 1, "
                             "--fail-after-ms >= 0"),
                         flags);
  }

  // gRPC 1.51 notices a reconnection to a rank that came back only when some thread polls; its
  // backup poller does so every 5 s by default. Poll often enough to re-probe within the interval.
  setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100", /*overwrite=*/0);

  // Signals are taken by sigwait below; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<nextserve::router::ModelSpec> model = nextserve::router::LoadModelSpec(model_dir);
  if (!model.ok()) {
    std::fprintf(stderr, "nextserve-router: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  if (!model_name.empty()) model->name = model_name;

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> public_credentials =
      nextserve::cli::ServerCredentials(public_tls);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> rank_credentials =
      nextserve::cli::ChannelCredentials(rank_tls);
  absl::StatusOr<std::unique_ptr<nextserve::router::ApiKeys>> api_keys =
      nextserve::router::ApiKeys::Load(api_keys_file, "NEXTSERVE_API_KEYS");
  for (const absl::Status& s :
       {public_credentials.status(), rank_credentials.status(), api_keys.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "nextserve-router: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if ((*api_keys)->enabled()) {
    std::fprintf(stderr, "nextserve-router: %zu API keys loaded; every public call needs one\n",
                 (*api_keys)->size());
  }

  nextserve::router::RankPool pool(ranks,
                                   {.poll_interval = absl::Milliseconds(poll_ms),
                                    .probe_timeout = absl::Milliseconds(probe_timeout_ms),
                                    .fail_after_missed_probes = static_cast<int>(fail_after_probes),
                                    .fail_after = absl::Milliseconds(fail_after_ms),
                                    .max_queue = static_cast<int>(max_queue),
                                    .rank_queue_depth = static_cast<int>(rank_queue_depth),
                                    .credentials = *rank_credentials});
  nextserve::metrics::PrometheusRegistry metrics_registry;
  std::optional<nextserve::metrics::RouterMetrics> metrics;
  if (metrics_port >= 0) metrics.emplace(metrics_registry, model->name);
  nextserve::router::ServiceOptions service_options;
  service_options.api_keys = api_keys->get();
  service_options.max_moves = static_cast<int>(max_moves);
  service_options.metrics = metrics ? &*metrics : nullptr;
  nextserve::router::InferenceService service(*model, pool, service_options);
  std::unique_ptr<nextserve::metrics::PrometheusExporter> exporter;  // stops before `pool` goes
  if (metrics) {
    metrics_registry.OnCollect([&pool, m = &*metrics] {
      m->queue_depth.Set(pool.queued());
      m->healthy_ranks.Set(pool.healthy_count());
    });
    auto started = nextserve::metrics::PrometheusExporter::Start(
        host, static_cast<int>(metrics_port), metrics_registry);
    if (!started.ok()) {
      std::fprintf(stderr, "nextserve-router: %s\n",
                   std::string(started.status().message()).c_str());
      return 1;
    }
    exporter = *std::move(started);
    std::printf("nextserve-router metrics on http://%s:%d/metrics\n", host.c_str(),
                exporter->port());
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(absl::StrCat(host, ":", port), *public_credentials, &selected_port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(16 << 20);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(nextserve::router::MakeParseErrorInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    std::fprintf(stderr, "nextserve-router: cannot listen on %s:%lld\n", host.c_str(),
                 static_cast<long long>(port));
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);  // until a rank answers
  pool.SetHealthCallback([health](int healthy) { health->SetServingStatus(healthy > 0); });
  pool.Start();
  std::printf("nextserve-router listening on %s:%d (%zu ranks)\n", host.c_str(), selected_port,
              ranks.size());
  std::fflush(stdout);

  // The OpenAI-compatible HTTP endpoints, onto the same Inference service (in-process channel).
  std::unique_ptr<nextserve::router::OpenAiFrontend> openai;
  std::unique_ptr<nextserve::router::HttpServer> http;
  if (http_port >= 0) {
    openai = std::make_unique<nextserve::router::OpenAiFrontend>(
        server->InProcessChannel(grpc::ChannelArguments()), *model->tokenizer, model->name,
        [&pool] { return pool.healthy_count(); });
    absl::StatusOr<std::unique_ptr<nextserve::router::HttpServer>> started =
        nextserve::router::HttpServer::Start(
            {.host = http_host.empty() ? host : http_host,
             .port = static_cast<int>(http_port),
             .threads = static_cast<int>(http_threads)},
            [frontend = openai.get()](nextserve::router::HttpRequest request,
                                      std::shared_ptr<nextserve::router::HttpResponse> response) {
              frontend->Handle(std::move(request), std::move(response));
            });
    if (!started.ok()) {
      std::fprintf(stderr, "nextserve-router: %s\n",
                   std::string(started.status().message()).c_str());
      server->Shutdown();
      pool.SetHealthCallback(nullptr);
      return 1;
    }
    http = *std::move(started);
    std::printf("nextserve-router HTTP (OpenAI-compatible) listening on %s:%d\n",
                (http_host.empty() ? host : http_host).c_str(), http->port());
    std::fflush(stdout);
  }

  int sig = 0;
  sigwait(&signals, &sig);
  // Drain: NOT_SERVING at once (a load balancer moves away) and new requests refused, requests in
  // flight finish within the grace, the rest end UNAVAILABLE; exit as soon as none is left.
  const absl::Time grace_end = absl::Now() + absl::Seconds(drain_grace_s);
  std::fprintf(stderr, "nextserve-router: signal %d, draining (grace %llds)\n", sig,
               static_cast<long long>(drain_grace_s));
  pool.SetHealthCallback(nullptr);  // a rank's health must not turn it back to SERVING
  health->SetServingStatus(false);
  if (http) http->StopAccepting();
  service.StartDrain();
  if (!service.WaitIdle(grace_end)) {
    std::fprintf(stderr, "nextserve-router: drain grace over, ending what is in flight\n");
    service.CutInFlight(absl::Now() + absl::Seconds(2));
  }
  // gRPC waits out the whole deadline when a client still holds a connection, so keep it short.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  server->Wait();
  if (openai) openai->Shutdown();  // its calls have ended with the server's
  http.reset();
  openai.reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return Run(argc, argv);
}
