// nextserve-rank: one worker rank serving nextserve.internal.v1.Rank (plus gRPC health) for a
// model.
#include <omp.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/flags.h"
#include "cli/tls.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "metrics/prometheus.h"
#include "metrics/serving.h"
#include "model/expert_placement.h"
#include "model/weights.h"
#include "worker/engine.h"
#include "worker/group_model.h"
#include "worker/rank_service.h"

int main(int argc, char** argv) {
  std::string model_dir, host = "127.0.0.1", placement_file, model_name, kv_dtype_name = "f32",
                         dispatch_dtype_name = "f32", compute = "auto";
  int64_t metrics_port = -1;
  bool metrics_per_expert = false, no_prefix_cache = false;
  int64_t snapshot_every = 512, snapshot_budget = 16;
  int64_t port = 0, threads = 0, kv_blocks = 1024, state_slots = 64, block_size = 64,
          max_batch_tokens = 512, max_running = 64, rank_id = 0, max_context = 0,
          drain_grace_s = 30;
  nextserve::cli::Flags flags("nextserve-rank --model DIR --port P [options]");
  flags.String("model", &model_dir, "Hugging Face model directory");
  flags.String("host", &host, "address to listen on (default 127.0.0.1)");
  flags.Int("port", &port, "port to listen on (0: pick one and print it)");
  flags.Int("threads", &threads, "CPU threads for the model (default: all cores)");
  flags.Int("kv-blocks", &kv_blocks, "KV cache blocks (default 1024)");
  flags.Int("block-size", &block_size, "tokens per KV block (default 64)");
  flags.Int("state-slots", &state_slots,
            "DeltaNet state slots = most sequences in flight (default 64)");
  flags.String("kv-dtype", &kv_dtype_name,
               "KV cache element type: f32 (default, exact) or bf16 (half the memory per token)");
  flags.String("dispatch-dtype", &dispatch_dtype_name,
               "hidden rows in expert-parallel dispatch records: f32 (default, exact) or bf16 "
               "(half the bytes exchanged)");
  flags.Bool("no-prefix-cache", &no_prefix_cache,
             "turn off prefix caching (on by default: shared full KV blocks + DeltaNet state "
             "snapshots reuse the prompt prefixes earlier requests ran)");
  flags.Int("snapshot-every", &snapshot_every,
            "prefix cache: also snapshot the state every N prompt tokens (default 512; 0: "
            "only at prompt and response ends)");
  flags.Int(
      "snapshot-budget", &snapshot_budget,
      "state snapshots the prefix cache keeps, LRU (default 16; each costs one state slot + one "
      "KV block: ~77 MiB on the 80B model)");
  flags.String(
      "compute", &compute,
      "CPU matrix products for bf16 weights: auto (default: bf16 where the CPU has "
      "AVX512-BF16, else f32), bf16 (bf16 products with fp32 sums: ~1.5-2x faster "
      "prefill and batched decode; rms logit error under 1% of the row's range on the golden "
      "data) or f32 (exact: the golden-test mode; a request's tokens then do not depend on the "
      "load, and a moved stream continues exactly as an uninterrupted run)");
  flags.Int("max-batch-tokens", &max_batch_tokens, "tokens per engine step (default 512)");
  flags.Int("max-running", &max_running, "sequences per engine step (default 64)");
  flags.Int("max-context", &max_context, "longest prompt + output (default: the model's)");
  flags.String("expert-placement", &placement_file,
               "file with the rank of each routed expert, one per line (default: contiguous)");
  flags.Int("rank-id", &rank_id, "this rank's number, reported in its load (default 0)");
  flags.Int("drain-grace-s", &drain_grace_s,
            "on SIGTERM/SIGINT, how long open streams may finish before they end UNAVAILABLE "
            "(default 30, Kubernetes' termination grace; 0 in an expert-parallel group, which "
            "mpirun ends)");
  nextserve::cli::TlsFiles tls;
  nextserve::cli::AddTlsFlags(flags, "tls",
                              "the internal port (with -ca: only clients with a certificate it "
                              "signed, i.e. routers, may call)",
                              &tls);
  flags.Int("metrics-port", &metrics_port,
            "Prometheus /metrics port (a group's rank r: port + r); 0: any free port, printed; "
            "-1 (default): off");
  flags.Bool("metrics-per-expert", &metrics_per_expert,
             "also export tokens per (layer, expert) held here (many series)");
  flags.String("model-name", &model_name, "the metrics' model_name label (default: --model)");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return nextserve::cli::Flags::Report(s, flags);
  if (model_dir.empty()) {
    return nextserve::cli::Flags::Report(absl::InvalidArgumentError("--model is required"), flags);
  }
  if (kv_blocks < 1 || state_slots < 1 || block_size < 1 || max_batch_tokens < 1 ||
      max_running < 1 || drain_grace_s < 0 || snapshot_every < 0 || snapshot_budget < 0) {
    return nextserve::cli::Flags::Report(
        absl::InvalidArgumentError(
            "--kv-blocks, --block-size, --state-slots, --max-batch-tokens and "
            "--max-running must be positive (--drain-grace-s, --snapshot-every, --snapshot-budget "
            ">= 0)"),
        flags);
  }
  auto parse_dtype = [](const std::string& name) -> std::optional<nextserve::DType> {
    if (name == "f32" || name == "fp32" || name == "float32") return nextserve::DType::kF32;
    if (name == "bf16" || name == "bfloat16") return nextserve::DType::kBF16;
    return std::nullopt;
  };
  const auto kv_dtype = parse_dtype(kv_dtype_name),
             dispatch_dtype = parse_dtype(dispatch_dtype_name);
  if (!kv_dtype || !dispatch_dtype) {
    return nextserve::cli::Flags::Report(
        absl::InvalidArgumentError(absl::StrCat(
            "--", !kv_dtype ? "kv-dtype" : "dispatch-dtype", " '",
            !kv_dtype ? kv_dtype_name : dispatch_dtype_name, "': expected f32 or bf16")),
        flags);
  }
  if (compute != "auto" && compute != "bf16" && compute != "f32") {
    return nextserve::cli::Flags::Report(
        absl::InvalidArgumentError(
            absl::StrCat("--compute '", compute, "': expected auto, bf16 or f32")),
        flags);
  }
  // bf16 without the instructions runs as f32 (the kernels check the CPU at run time).
  const bool bf16_dot = nextserve::kernels::cpu::CpuHasBf16Dot();
  nextserve::kernels::cpu::SetLinearCompute(compute == "f32"
                                                ? nextserve::kernels::cpu::Compute::kF32
                                                : nextserve::kernels::cpu::Compute::kBF16);
  std::fprintf(stderr, "nextserve-rank %ld: compute %s\n", rank_id,
               compute == "f32" ? "f32"
               : bf16_dot       ? "bf16 (AVX512-BF16 dot products, fp32 sums)"
                                : "f32 (this CPU has no AVX512-BF16)");
  if (compute == "bf16" && !bf16_dot) {
    std::fprintf(stderr,
                 "nextserve-rank: warning: --compute bf16 but this CPU has no AVX512-BF16: "
                 "computing in f32\n");
  }
  if (metrics_port < -1 || metrics_port > 65535) {
    return nextserve::cli::Flags::Report(
        absl::InvalidArgumentError("--metrics-port must be in [-1, 65535]"), flags);
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      nextserve::cli::ServerCredentials(tls);
  if (!credentials.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(credentials.status().message()).c_str());
    return 2;
  }
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));

  // Signals are taken by sigwait below, so block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto group = nextserve::worker::LoadGroupModel(model_dir, placement_file);
  if (!group.ok()) {
    std::fprintf(stderr, "error: %s\n", group.status().ToString().c_str());
    return 1;
  }
  const int group_size = group->size();
  if (group_size > 1) rank_id = group->rank();
  auto backend = nextserve::kernels::MakeCpuBackend();
  // gRPC health goes NOT_SERVING when the group breaks (the engine says so from its thread); the
  // server starts after the engine, and goes before it, hence the guarded pointer.
  std::mutex health_mu;
  grpc::HealthCheckServiceInterface* health = nullptr;  // guarded by health_mu
  bool broke = false;                                   // guarded by health_mu
  nextserve::worker::EngineOptions options;
  options.on_broken = [&](const std::string& why) {
    std::lock_guard lock(health_mu);
    broke = true;
    if (health != nullptr) health->SetServingStatus(false);
    std::fprintf(stderr, "nextserve-rank %ld: NOT_SERVING: %s\n", rank_id, why.c_str());
  };
  options.cache = {block_size, kv_blocks,        state_slots,
                   *kv_dtype,  !no_prefix_cache, snapshot_budget};
  options.model.dispatch_dtype = *dispatch_dtype;
  options.scheduler = {max_batch_tokens, max_running, snapshot_every};
  options.max_context = max_context;
  nextserve::metrics::PrometheusRegistry metrics_registry;
  std::optional<nextserve::metrics::RankMetrics> metrics;
  if (metrics_port >= 0) {
    const auto& config = group->weights->config();
    std::vector<int64_t> moe_layers;
    for (int64_t l = 0; l < config.num_hidden_layers; ++l)
      if (config.is_moe_layer(l)) moe_layers.push_back(l);
    metrics.emplace(metrics_registry, nextserve::metrics::RankMetrics::Options{
                                          .model_name = model_name.empty() ? model_dir : model_name,
                                          .rank = static_cast<int>(rank_id),
                                          .layers = config.num_hidden_layers,
                                          .moe_layers = moe_layers,
                                          .experts = config.num_experts,
                                          .per_expert = metrics_per_expert});
    options.metrics = &*metrics;
  }
  nextserve::worker::Engine engine(group->weights, backend.get(), options, group->comm.get(),
                                   group->placement);
  nextserve::worker::RankService service(&engine, static_cast<int32_t>(rank_id));
  if (metrics) {
    // Scheduler and cache state are read when scraped rather than updated on every step.
    metrics_registry.OnCollect([&engine, m = &*metrics] {
      const nextserve::worker::EngineLoad load = engine.Load();
      m->requests_running.Set(static_cast<double>(load.running));
      m->requests_waiting.Set(static_cast<double>(load.waiting));
      if (load.total_blocks > 0)
        m->kv_cache_usage.Set(1.0 - static_cast<double>(load.free_blocks) / load.total_blocks);
      if (load.total_slots > 0)
        m->state_slot_usage.Set(1.0 - static_cast<double>(load.free_slots) / load.total_slots);
      m->SetPreemptionsTotal(load.preemptions);
      m->SetPrefixCacheTotals(load.prefix_query_tokens, load.prefix_hit_tokens,
                              load.snapshot_evictions, load.block_evictions);
      if (load.total_snapshots > 0) {
        m->prefix_snapshot_usage.Set(static_cast<double>(load.snapshots_used) /
                                     static_cast<double>(load.total_snapshots));
      }
    });
  }
  // Declared after the engine, so it stops serving (and calling the hook) before the engine goes.
  std::unique_ptr<nextserve::metrics::PrometheusExporter> exporter;
  if (metrics) {
    auto started = nextserve::metrics::PrometheusExporter::Start(
        host, metrics_port == 0 ? 0 : metrics_port + (group_size > 1 ? rank_id : 0),
        metrics_registry);
    if (!started.ok()) {
      std::fprintf(stderr, "error: %s\n", started.status().ToString().c_str());
      return 1;
    }
    exporter = *std::move(started);
    std::printf("nextserve-rank %ld metrics on http://%s:%d/metrics\n", rank_id, host.c_str(),
                exporter->port());
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  // In a group, rank r takes --port + r (gRPC would let them share one port with SO_REUSEPORT).
  const int64_t listen_port = port == 0 ? 0 : port + (group_size > 1 ? rank_id : 0);
  builder.AddListeningPort(absl::StrCat(host, ":", listen_port), *credentials, &bound_port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    std::fprintf(stderr, "error: cannot listen on %s:%ld\n", host.c_str(), port);
    return 1;
  }
  {
    std::lock_guard lock(health_mu);
    health = server->GetHealthCheckService();
    if (broke) health->SetServingStatus(false);
  }
  std::printf("nextserve-rank %ld listening on %s:%d\n", rank_id, host.c_str(), bound_port);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  // Drain: NOT_SERVING and new work refused at once, open streams finish within the grace, the
  // rest end UNAVAILABLE so that the router moves them to another rank.
  // In an expert-parallel group the signal comes from mpirun, which kills the group shortly after
  // (and sends it when a peer died, leaving this rank's steps stuck): hand the streams over at
  // once.
  if (group_size > 1) drain_grace_s = 0;
  const absl::Time grace_end = absl::Now() + absl::Seconds(drain_grace_s);
  std::fprintf(stderr, "nextserve-rank %ld: signal %d, draining (grace %lds)\n", rank_id, sig,
               drain_grace_s);
  server->GetHealthCheckService()->SetServingStatus(false);
  service.StartDrain();
  if (!service.WaitIdle(grace_end)) {
    std::fprintf(stderr, "nextserve-rank %ld: drain grace over, ending the open streams\n",
                 rank_id);
    service.CutOpenStreams();
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  {
    std::lock_guard lock(health_mu);
    health = nullptr;  // the server (and its health service) goes before the engine
  }
  return 0;
}
