// ep_bench: the expert-parallel group end to end on the "small" preset, run under mpirun -np R:
//   mpirun --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none
//     -x OMP_NUM_THREADS=1 -np R build/bin/ep_bench [--model DIR] [--prompt 256] [--decode 16]
//     [--batches 1,2,4] [--idle-seconds 3] [--ttft-prompt 16] [--ttft-reps 6]
// Without --model, rank 0 writes the small preset (bf16) to /tmp/nextserve_bench_small first.
//
// Each rank loads the backbone plus its own experts (contiguous placement, LoadOptions.experts)
// and reports, for the whole group (rank 0 prints):
//  1. memory per rank after loading and after the run: VmRSS, RssAnon, RssFile (/proc/self/status).
//     The weights are mmap'd, so RssFile is the checkpoint pages this rank touched: the backbone
//     plus its own experts, which should fall with R.
//  2. throughput: prefill (every rank its own --prompt-token sequence) and decode (a batch of B
//     sequences per rank, --decode steps), as tokens/s of the group and per rank (group step time
//     = the slowest rank's, since every step ends in the last MoE layer's combine), with the share
//     of step time spent in communication. Two communication figures: `comm` times the
//     communicator calls themselves (counts exchange + dispatch + combine, a timing wrapper around
//     the communicator: it includes waiting for slower ranks); `prof` is
//     ForwardProfile.communication as the model reports it.
//  3. an idle group (worker::Engine in group mode): process CPU time (getrusage, all threads) over
//     --idle-seconds, and the latency from Submit to the first token of a --ttft-prompt-token
//     request (max_tokens 1) submitted on one rank of the idle group, against the same request's
//     lone step (that rank has the prompt, the others an empty batch) timed on the model directly.
// Run it for R = 1 first: ratios are against R = 1 only when the figures of that run are given
// with --baseline (printed by the R = 1 run as one line to paste).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/bench_util.h"
#include "cli/flags.h"
#include "comm/communicator.h"
#include "comm/mpi_session.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "model/expert_placement.h"
#include "model/qwen3_next.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"
#include "worker/engine.h"

namespace nextserve {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void Check(const absl::Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "ep_bench: %s: %s\n", what, s.ToString().c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

// Forwards every call to `inner` and sums the wall time of the MoE exchange calls (counts exchange
// and all-to-all-v), so the figure is exactly the time inside the communicator.
class TimingCommunicator : public comm::Communicator {
 public:
  explicit TimingCommunicator(comm::Communicator* inner) : inner_(inner) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view name() const override { return inner_->name(); }
  void set_timeout(std::chrono::milliseconds t) override { inner_->set_timeout(t); }
  std::chrono::milliseconds timeout() const override { return inner_->timeout(); }
  absl::Status health() const override { return inner_->health(); }
  absl::Status ExchangeCounts(std::span<const int64_t> send, std::span<int64_t> recv) override {
    WaitForPeers();
    const auto t0 = Clock::now();
    auto s = inner_->ExchangeCounts(send, recv);
    seconds += Seconds(t0);
    return s;
  }
  absl::Status AllToAllV(const void* send, std::span<const int64_t> send_counts, void* recv,
                         std::span<const int64_t> recv_counts) override {
    WaitForPeers();
    const auto t0 = Clock::now();
    auto s = inner_->AllToAllV(send, send_counts, recv, recv_counts);
    seconds += Seconds(t0);
    for (int64_t b : send_counts) bytes_sent += b;
    return s;
  }
  absl::Status AllReduce(float* d, int64_t n, comm::ReduceOp op) override {
    return inner_->AllReduce(d, n, op);
  }
  absl::Status AllReduce(int64_t* d, int64_t n, comm::ReduceOp op) override {
    return inner_->AllReduce(d, n, op);
  }
  absl::Status Broadcast(void* d, int64_t bytes, int root) override {
    return inner_->Broadcast(d, bytes, root);
  }
  absl::Status Barrier() override { return inner_->Barrier(); }

  double seconds = 0;
  int64_t bytes_sent = 0;  // all-to-all-v payload this rank sent (to itself included)
  // --split-wait: a barrier before each exchange call, timed apart (wait_seconds), so that
  // `seconds` is the exchange among ranks that all arrived, and wait_seconds the time spent
  // waiting for the slowest rank (load imbalance, or a rank descheduled on a shared core).
  bool split_wait = false;
  double wait_seconds = 0;

 private:
  void WaitForPeers() {
    if (!split_wait) return;
    const auto t0 = Clock::now();
    Check(inner_->Barrier(), "barrier");
    wait_seconds += Seconds(t0);
  }

  comm::Communicator* inner_;
};

// Resident memory from /proc/self/status, in MiB.
struct Memory {
  double vm_rss = 0, rss_anon = 0, rss_file = 0;
};

Memory ReadMemory() {
  Memory m;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    auto field = [&](const char* name, double* out) {
      if (line.rfind(name, 0) != 0) return;
      double kb = 0;
      if (absl::SimpleAtod(
              absl::StripAsciiWhitespace(absl::StripSuffix(absl::StripPrefix(line, name), "kB")),
              &kb)) {
        *out = kb / 1024.0;
      }
    };
    field("VmRSS:", &m.vm_rss);
    field("RssAnon:", &m.rss_anon);
    field("RssFile:", &m.rss_file);
  }
  return m;
}

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec * 1e-6;
}

// Every rank contributes `mine` (k values); every rank gets all of them, [rank * k + i]. The
// doubles travel as their bit patterns in an int64 sum (every other rank adds zeros): exact.
std::vector<double> Gather(comm::Communicator& comm, const std::vector<double>& mine) {
  const int64_t k = static_cast<int64_t>(mine.size());
  std::vector<int64_t> bits(k * comm.size(), 0);
  for (int64_t i = 0; i < k; ++i) bits[comm.rank() * k + i] = std::bit_cast<int64_t>(mine[i]);
  Check(comm.AllReduce(bits.data(), static_cast<int64_t>(bits.size()), comm::ReduceOp::kSum),
        "gather");
  std::vector<double> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = std::bit_cast<double>(bits[i]);
  return out;
}

std::vector<int32_t> Tokens(int64_t n, int64_t seed, int64_t vocab) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((seed * 104729 + i * 7919) % vocab);
  return t;
}

// One measured phase: wall time of this rank's Forward calls and the parts of it.
struct Phase {
  double wall = 0, comm = 0, prof_comm = 0, wait = 0;
  int64_t tokens = 0;  // this rank's tokens
  double bytes = 0;    // all-to-all payload sent by this rank
};

struct Options {
  int64_t prompt = 256, decode = 16, idle_seconds = 3, ttft_prompt = 16, ttft_reps = 6;
  std::string batches = "1,2,4";
  bool split_wait = false;
  std::string dispatch_dtype = "f32";
  std::string compute = "auto";
  std::string baseline;  // "prefill_group_tps,decode_group_tps(b1),...,idle_cpu,ttft" of R = 1
};

int Main(int argc, char** argv) {
  Options o;
  std::string model_dir;
  cli::Flags flags(
      "ep_bench [--model DIR] [--prompt N] [--decode N] [--batches 1,2,4] [--idle-seconds S] "
      "[--ttft-prompt N] [--ttft-reps N] [--baseline LINE]   (under mpirun -np R)");
  flags.String("model", &model_dir, "checkpoint (default: small preset, bf16, written to /tmp)");
  flags.Int("prompt", &o.prompt, "prefill tokens per rank (default 256)");
  flags.Int("decode", &o.decode, "decode steps per batch size (default 16)");
  flags.String("batches", &o.batches, "decode batch sizes per rank (default 1,2,4)");
  flags.Int("idle-seconds", &o.idle_seconds, "idle group CPU window (default 3)");
  flags.Int("ttft-prompt", &o.ttft_prompt, "prompt of the idle-group latency request (16)");
  flags.Int("ttft-reps", &o.ttft_reps, "idle-group latency requests (default 6)");
  flags.String("baseline", &o.baseline, "the R = 1 run's baseline line, for ratios");
  flags.String("dispatch-dtype", &o.dispatch_dtype,
               "hidden rows of the dispatch records: f32 (default) or bf16");
  flags.String("compute", &o.compute,
               "matrix products for bf16 weights: auto (default: bf16 where the CPU has "
               "AVX512-BF16, as the rank), bf16 or f32");
  flags.Bool("split-wait", &o.split_wait,
             "barrier before each exchange call, timed apart: wait for peers vs transfer");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  if (o.compute != "auto" && o.compute != "bf16" && o.compute != "f32") {
    return cli::Flags::Report(absl::InvalidArgumentError("--compute: expected auto, bf16 or f32"),
                              flags);
  }
  kernels::cpu::SetLinearCompute(o.compute == "f32" ? kernels::cpu::Compute::kF32
                                                    : kernels::cpu::Compute::kBF16);

  auto session_or = comm::MpiSession::Start();
  Check(session_or.status(), "MPI");
  std::unique_ptr<comm::MpiSession> session = std::move(*session_or);
  auto bench_comm_or = session->WorldCommunicator(600000ms);  // the bench's own syncs
  Check(bench_comm_or.status(), "communicator");
  comm::Communicator& bench = **bench_comm_or;
  const int rank = bench.rank(), R = bench.size();
  const bool root = rank == 0;

  if (model_dir.empty()) {
    model_dir = (std::filesystem::temp_directory_path() / "nextserve_bench_small").string();
    if (root && !std::filesystem::exists(model_dir + "/model.safetensors")) {
      auto config = PresetConfig("small");
      Check(config.status(), "preset");
      Check(WriteRandomCheckpoint(*config, model_dir), "writing the small preset");
    }
  }
  Check(bench.Barrier(), "barrier");

  // Load the backbone + this rank's experts.
  auto config = LoadModelConfig(model_dir + "/config.json");
  Check(config.status(), "config");
  const ExpertPlacement placement = ExpertPlacement::Contiguous(config->num_experts, R);
  LoadOptions load;
  load.experts = placement.ExpertsOf(rank);
  const Memory mem_start = ReadMemory();
  auto loaded = ModelWeights::Load(model_dir, load);
  Check(loaded.status(), "loading");
  std::shared_ptr<const ModelWeights> weights = std::move(*loaded);
  const Memory mem_loaded = ReadMemory();
  const ModelConfig& c = weights->config();
  if (root) {
    std::printf(
        "ep_bench: R = %d rank(s) on %ld CPU core(s)%s, OMP_NUM_THREADS=%s; model %s: hidden "
        "%ld, %ld layers, %ld experts top-%ld (%ld per rank at most), %s\n",
        R, sysconf(_SC_NPROCESSORS_ONLN),
        R > sysconf(_SC_NPROCESSORS_ONLN) ? " (OVERSUBSCRIBED: ranks share cores)" : "",
        std::getenv("OMP_NUM_THREADS") ? std::getenv("OMP_NUM_THREADS") : "(unset)",
        model_dir.c_str(), c.hidden_size, c.num_hidden_layers, c.num_experts, c.num_experts_per_tok,
        (c.num_experts + R - 1) / R, std::string(DTypeName(weights->stored_dtype)).c_str());
  }

  if (root) {
    std::ifstream la("/proc/loadavg");
    std::string l1, l5;
    la >> l1 >> l5;
    std::printf(
        "load average before the run: %s (1 min), %s (5 min) on %ld cores: other "
        "processes share the CPUs when it exceeds the core count minus R\n",
        l1.c_str(), l5.c_str(), sysconf(_SC_NPROCESSORS_ONLN));
  }

  auto backend = kernels::MakeCpuBackend();
  auto model_comm_or = session->WorldCommunicator(120000ms);
  Check(model_comm_or.status(), "communicator");
  TimingCommunicator timed(model_comm_or->get());
  timed.split_wait = o.split_wait;

  // ---- 2. throughput: the model in lock-step on every rank ----
  std::vector<Phase> phases;  // prefill, decode b..., lone step
  std::vector<std::string> phase_names;
  const std::vector<int64_t> batch_sizes = bench::ParsePositiveList(o.batches);
  {
    ModelOptions model_options;
    model_options.dispatch_dtype = o.dispatch_dtype == "bf16" ? DType::kBF16 : DType::kF32;
    Qwen3NextModel model(weights, backend.get(), CacheLimits{64, 4096, 64}, &timed, placement,
                         model_options);
    auto run = [&](std::span<const SequenceInput> batch, Phase* ph) {
      ForwardProfile prof;
      const double comm0 = timed.seconds, wait0 = timed.wait_seconds;
      const int64_t bytes0 = timed.bytes_sent;
      const auto t0 = Clock::now();
      auto logits = model.Step(batch, &prof);
      ph->wall += Seconds(t0);
      Check(logits.status(), "forward");
      ph->comm += timed.seconds - comm0;
      ph->wait += timed.wait_seconds - wait0;
      ph->bytes += static_cast<double>(timed.bytes_sent - bytes0);
      ph->prof_comm += prof.communication;
      for (const auto& in : batch) ph->tokens += static_cast<int64_t>(in.tokens.size());
      return *logits;
    };
    auto argmax = [&](std::span<const float> logits, int64_t row) {
      const float* p = logits.data() + row * c.vocab_size;
      return static_cast<int32_t>(std::max_element(p, p + c.vocab_size) - p);
    };

    // Warm-up: one short prefill + a decode step, so the first timed step does not pay page
    // faults for this rank's experts in the hot path of everyone else.
    {
      Phase warm;
      auto seq = model.NewSequence();
      const auto t = Tokens(64, 1000 + rank, c.vocab_size);
      SequenceInput in{seq.get(), t, false};
      auto lg = run({&in, 1}, &warm);
      std::vector<int32_t> next{argmax(lg, 0)};
      SequenceInput d{seq.get(), next, false};
      run({&d, 1}, &warm);
    }

    // Prefill: every rank its own sequence of o.prompt tokens.
    {
      Phase ph;
      auto seq = model.NewSequence();
      const auto t = Tokens(o.prompt, 1 + rank, c.vocab_size);
      SequenceInput in{seq.get(), t, false};
      Check(bench.Barrier(), "barrier");
      run({&in, 1}, &ph);
      phases.push_back(ph);
      phase_names.push_back("prefill " + std::to_string(o.prompt) + "/rank");
    }
    // Decode: B sequences per rank (each with a 32-token prompt, not timed), o.decode steps.
    for (int64_t b : batch_sizes) {
      std::vector<std::unique_ptr<SequenceState>> seqs;
      std::vector<std::vector<int32_t>> prompts, next(b);
      std::vector<SequenceInput> batch;
      for (int64_t i = 0; i < b; ++i) {
        seqs.push_back(model.NewSequence());
        prompts.push_back(Tokens(32, 100 * (rank + 1) + i, c.vocab_size));
      }
      for (int64_t i = 0; i < b; ++i) batch.push_back({seqs[i].get(), prompts[i], false});
      Phase untimed;
      auto lg = run(batch, &untimed);
      Phase ph;
      Check(bench.Barrier(), "barrier");
      for (int64_t step = 0; step < o.decode; ++step) {
        batch.clear();
        for (int64_t i = 0; i < b; ++i) {
          next[i] = {argmax(lg, i)};
          batch.push_back({seqs[i].get(), next[i], false});
        }
        lg = run(batch, &ph);
      }
      phases.push_back(ph);
      phase_names.push_back("decode batch " + std::to_string(b) + "/rank");
    }
    // The lone step: rank 0 has an o.ttft_prompt-token prompt, the others nothing.
    {
      Phase ph;
      for (int rep = 0; rep < 3; ++rep) {
        auto seq = model.NewSequence();
        const auto t = Tokens(o.ttft_prompt, 7 + rep, c.vocab_size);
        SequenceInput in{seq.get(), t, false};
        Check(bench.Barrier(), "barrier");
        Phase one;
        run(root ? std::span<const SequenceInput>(&in, 1) : std::span<const SequenceInput>(), &one);
        if (rep == 0 || one.wall < ph.wall) ph = one;  // best of 3 (rank 0's)
      }
      phases.push_back(ph);
      phase_names.push_back("lone step (" + std::to_string(o.ttft_prompt) + " tok on rank 0)");
    }
  }
  const Memory mem_run = ReadMemory();

  // ---- 3. idle group: worker::Engine in group mode ----
  double idle_cpu_frac = 0;
  std::vector<double> ttft, queued;  // this rank's submissions; gathered below
  {
    auto engine_comm_or = session->WorldCommunicator(60000ms);
    Check(engine_comm_or.status(), "communicator");
    worker::EngineOptions eo;
    eo.cache = {64, 1024, 16};
    eo.scheduler = {512, 16};
    auto engine = std::make_unique<worker::Engine>(weights, backend.get(), eo,
                                                   engine_comm_or->get(), placement);
    Check(bench.Barrier(), "barrier");
    std::this_thread::sleep_for(500ms);  // settle
    const double cpu0 = CpuSeconds();
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(o.idle_seconds));
    idle_cpu_frac = (CpuSeconds() - cpu0) / Seconds(t0);
    Check(bench.Barrier(), "barrier");
    // Submit -> first token on an idle group: the ranks take turns submitting; in between the
    // group idles for 100 ms.
    for (int64_t rep = 0; rep < o.ttft_reps; ++rep) {
      const int who = static_cast<int>(rep % R);
      std::this_thread::sleep_for(100ms);
      if (rank == who) {
        worker::SubmitSpec spec;
        spec.id = "ttft" + std::to_string(rep);
        spec.prompt = Tokens(o.ttft_prompt, 7 + rep, c.vocab_size);
        spec.max_tokens = 1;
        const auto s0 = Clock::now();
        auto ch = engine->Submit(spec);
        Check(ch.status(), "submit");
        worker::RankOutput out;
        bool got = false;
        double queue_time = -1;
        while ((*ch)->Pop(&out, 30000ms)) {
          if (out.queue_time_s >= 0 && queue_time < 0) queue_time = out.queue_time_s;
          if (!out.tokens.empty()) {
            if (!got) ttft.push_back(Seconds(s0));
            got = true;
          }
          if (out.finish != worker::Finish::kNone) break;
        }
        if (!got) Check(absl::InternalError("no token: " + out.error), "idle-group request");
        queued.push_back(queue_time);
      }
      Check(bench.Barrier(), "barrier");
    }
    engine.reset();  // collective: the ranks stop together
  }

  // ---- gather and print ----
  std::vector<double> mine = {mem_start.vm_rss,    mem_loaded.vm_rss, mem_loaded.rss_anon,
                              mem_loaded.rss_file, mem_run.vm_rss,    mem_run.rss_anon,
                              mem_run.rss_file,    idle_cpu_frac};
  for (const Phase& p : phases) {
    mine.push_back(p.wall);
    mine.push_back(p.comm);
    mine.push_back(p.prof_comm);
    mine.push_back(static_cast<double>(p.tokens));
    mine.push_back(p.bytes);
    mine.push_back(p.wait);
  }
  // TTFT: each rank's own submissions (reps / R of them), padded.
  const int64_t per_rank = (o.ttft_reps + R - 1) / R;
  for (int64_t i = 0; i < per_rank; ++i) mine.push_back(i < (int64_t)ttft.size() ? ttft[i] : -1);
  for (int64_t i = 0; i < per_rank; ++i)
    mine.push_back(i < (int64_t)queued.size() ? queued[i] : -1);
  const int64_t k = static_cast<int64_t>(mine.size());
  const std::vector<double> all = Gather(bench, mine);
  if (root) {
    auto at = [&](int r, int64_t i) { return all[r * k + i]; };
    std::printf("\n1. resident memory per rank, MiB (after load -> after run)\n");
    std::printf("   rank  VmRSS load   RssAnon   RssFile |  VmRSS run   RssAnon   RssFile\n");
    double file_run_max = 0, rss_run_max = 0;
    for (int r = 0; r < R; ++r) {
      std::printf("   %4d  %10.0f %9.0f %9.0f | %10.0f %9.0f %9.0f\n", r, at(r, 1), at(r, 2),
                  at(r, 3), at(r, 4), at(r, 5), at(r, 6));
      file_run_max = std::max(file_run_max, at(r, 6));
      rss_run_max = std::max(rss_run_max, at(r, 4));
    }
    const double expert_mib = static_cast<double>(c.num_hidden_layers) * 3 *
                              c.moe_intermediate_size * c.hidden_size *
                              DTypeSize(weights->stored_dtype) / (1 << 20);
    std::printf(
        "   (one expert in all %ld layers = %.1f MiB of checkpoint; all %ld experts = %.0f MiB)\n",
        c.num_hidden_layers, expert_mib, c.num_experts, expert_mib * c.num_experts);

    std::printf(
        "\n2. throughput (group step time = slowest rank; comm = time inside counts exchange + "
        "dispatch + combine, incl. waiting for slower ranks; prof = "
        "ForwardProfile.communication)\n");
    std::printf("   %-28s %9s %11s %10s %8s %8s %8s %8s %10s\n", "phase", "step ms", "group tok/s",
                "rank tok/s", "comm%avg", "comm%max", "prof%avg", o.split_wait ? "wait%avg" : "",
                "a2a KB/tok");
    std::vector<double> group_tps;
    double prefill_bytes_per_token = 0;
    for (size_t p = 0; p < phases.size(); ++p) {
      const int64_t base = 8 + 6 * static_cast<int64_t>(p);
      double wall = 0, comm_share = 0, comm_max = 0, prof_share = 0, tokens = 0, bytes = 0,
             wait_share = 0;
      int64_t steps = 1;
      if (phase_names[p].rfind("decode", 0) == 0) steps = o.decode;
      for (int r = 0; r < R; ++r) {
        wall = std::max(wall, at(r, base));
        const double share = at(r, base) > 0 ? at(r, base + 1) / at(r, base) : 0;
        comm_share += share / R;
        comm_max = std::max(comm_max, share);
        prof_share += (at(r, base) > 0 ? at(r, base + 2) / at(r, base) : 0) / R;
        tokens += at(r, base + 3);
        bytes += at(r, base + 4);
        wait_share += (at(r, base) > 0 ? at(r, base + 5) / at(r, base) : 0) / R;
      }
      const double tps = tokens / wall;
      group_tps.push_back(tps);
      const bool lone = p + 1 == phases.size();  // one rank's tokens: no per-rank rate
      char per_rank[32], wait[32];
      std::snprintf(per_rank, sizeof per_rank, lone ? "-" : "%.1f", tps / R);
      std::snprintf(wait, sizeof wait, o.split_wait ? "%.1f%%" : "", 100 * wait_share);
      std::printf("   %-28s %9.2f %11.1f %10s %7.1f%% %7.1f%% %7.1f%% %8s %10.1f\n",
                  phase_names[p].c_str(), 1e3 * wall / steps, tps, per_rank, 100 * comm_share,
                  100 * comm_max, 100 * prof_share, wait,
                  tokens > 0 ? bytes / tokens / (c.num_hidden_layers) / 1024 : 0.0);
      if (p == 0) prefill_bytes_per_token = tokens > 0 ? bytes / tokens / c.num_hidden_layers : 0;
    }
    std::printf(
        "   (a2a KB/tok: dispatch + combine bytes sent per token per MoE layer, local copy "
        "to itself included)\n");
    if (o.split_wait) {
      std::printf(
          "   (--split-wait: a barrier before each exchange call; wait = time in those "
          "barriers, comm = the exchange after them)\n");
    }
    {
      // Distinct destination ranks per token: measured (prefill bytes / bytes per record pair)
      // and for uniform routing, E = sum over ranks of 1 - C(E - n_r, k) / C(E, k).
      const double pair = 4.0 * (2 * c.hidden_size + 2 * c.num_experts_per_tok);
      double expected = 0;
      for (int r = 0; r < R; ++r) {
        const int64_t own = static_cast<int64_t>(placement.ExpertsOf(r).size());
        double none = 1;
        for (int64_t i = 0; i < c.num_experts_per_tok; ++i)
          none *= static_cast<double>(c.num_experts - own - i) / (c.num_experts - i);
        expected += 1 - none;
      }
      std::printf(
          "   destination ranks per token: %.2f measured (prefill), %.2f for uniform "
          "routing; %.0f bytes per (token, rank) in dispatch + combine\n",
          prefill_bytes_per_token / pair, expected, pair);
    }

    double idle_avg = 0, idle_max = 0;
    for (int r = 0; r < R; ++r) {
      idle_avg += at(r, 7) / R;
      idle_max = std::max(idle_max, at(r, 7));
    }
    std::vector<double> lat, wait;
    for (int r = 0; r < R; ++r) {
      for (int64_t i = 0; i < per_rank; ++i) {
        const double v = at(r, k - 2 * per_rank + i), q = at(r, k - per_rank + i);
        if (v >= 0) lat.push_back(v);
        if (q >= 0) wait.push_back(q);
      }
    }
    std::sort(lat.begin(), lat.end());
    std::sort(wait.begin(), wait.end());
    const double lone = at(0, 8 + 6 * static_cast<int64_t>(phases.size() - 1));
    std::printf("\n3. idle group (worker::Engine%s)\n",
                R > 1 ? ", group mode: 2 ms step-agreement poll" : ", R = 1: plain loop, no group");
    std::printf(
        "   CPU over %ld s idle: %.1f%% of a core per rank (max %.1f%%), %.1f%% for the "
        "group\n",
        o.idle_seconds, 100 * idle_avg, 100 * idle_max, 100 * idle_avg * R);
    std::printf(
        "   Submit -> first token, %ld-token prompt, submitted by each rank in turn: "
        "median %.1f ms, min %.1f, max %.1f (n=%zu); the lone step itself: %.1f ms\n",
        o.ttft_prompt, lat.empty() ? 0 : 1e3 * lat[lat.size() / 2],
        lat.empty() ? 0 : 1e3 * lat.front(), lat.empty() ? 0 : 1e3 * lat.back(), lat.size(),
        1e3 * lone);
    std::printf(
        "   Submit -> its first step starts (RankOutput.queue_time_s: wake-up + step "
        "agreement): median %.2f ms, max %.2f ms\n",
        wait.empty() ? 0 : 1e3 * wait[wait.size() / 2], wait.empty() ? 0 : 1e3 * wait.back());

    // Baseline line (R = 1) and ratios against it.
    std::string line;
    for (double v : group_tps) line += std::to_string(v) + ",";
    line += std::to_string(rss_run_max) + "," + std::to_string(file_run_max);
    if (R == 1) {
      std::printf("\nbaseline line for the R > 1 runs: --baseline %s\n", line.c_str());
    } else if (!o.baseline.empty()) {
      std::vector<double> b;
      for (absl::string_view piece : absl::StrSplit(o.baseline, ',')) {
        double v = 0;
        if (absl::SimpleAtod(piece, &v)) b.push_back(v);
      }
      if (b.size() == group_tps.size() + 2) {
        std::printf("\nratios to the R = 1 baseline:\n");
        for (size_t p = 0; p + 1 < phases.size(); ++p) {
          std::printf("   %-28s group tok/s x%.2f, per rank x%.2f\n", phase_names[p].c_str(),
                      group_tps[p] / b[p], group_tps[p] / R / b[p]);
        }
        std::printf("   max VmRSS after run x%.2f, max RssFile after run x%.2f\n",
                    rss_run_max / b[b.size() - 2], file_run_max / b.back());
      } else {
        std::printf("\n(--baseline has %zu values, expected %zu: no ratios)\n", b.size(),
                    group_tps.size() + 2);
      }
    }
    std::fflush(stdout);
  }
  Check(bench.Barrier(), "barrier");
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Main(argc, argv);
}
