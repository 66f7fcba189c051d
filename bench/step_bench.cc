// step_bench: the engine step at serving batch sizes, on one process (R = 1):
//   prefill tokens/s for a few prompt lengths (one sequence each);
//   decode tokens/s at 1, 2, 4, ... sequences, each as a ratio to single-sequence decode measured
//   in the same run (the goal: >= 2.5x at 16);
//   the host overhead of a step: the share of the step's wall time spent outside the backend's
//   ops (metadata, workspace layout, bookkeeping), timed by a forwarding TimedBackend.
//
//   step_bench [--model DIR] [--threads 1,2] [--batches 1,2,4,8,16,32] [--decode N]
//              [--context N] [--prefill 128,512] [--kv-dtype f32|bf16] [--reps N]
// Without --model it writes the small preset (bf16) to a temporary directory first.
#include <omp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "bench/timed_backend.h"
#include "cli/flags.h"
#include "kernels/cpu/cpu_ops.h"
#include "model/qwen3_next.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"

namespace nextserve {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<int32_t> Tokens(int64_t n, int64_t seed, int64_t vocab) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((seed * 7919 + i * 104729) % vocab);
  return t;
}

int32_t Argmax(std::span<const float> logits, int64_t row, int64_t vocab) {
  const float* p = logits.data() + row * vocab;
  return static_cast<int32_t>(std::max_element(p, p + vocab) - p);
}

struct DecodeFigure {
  double tokens_per_s = 0, host_share = 0, step_ms = 0;
  std::array<bench::TimedBackend::OpTime, bench::TimedBackend::kOps> ops{};
};

int Main(int argc, char** argv) {
  std::string model_dir, threads_list = "1,2", batches_list = "1,2,4,8,16,32",
                         prefill_list = "128,512", kv_dtype = "f32", compute = "f32";
  int64_t decode = 16, context = 32, reps = 3;
  bool show_ops = false;
  cli::Flags flags(
      "step_bench [--model DIR] [--threads 1,2] [--batches 1,2,4,8,16,32] [--decode N] "
      "[--context N] [--prefill 128,512] [--kv-dtype f32|bf16] [--reps N]");
  flags.String("model", &model_dir, "checkpoint (default: small preset, bf16, written to /tmp)");
  flags.String("threads", &threads_list, "OpenMP thread counts (default 1,2)");
  flags.String("batches", &batches_list, "decode batch sizes (default 1,2,4,8,16,32)");
  flags.String("prefill", &prefill_list, "prefill prompt lengths (default 128,512)");
  flags.Int("decode", &decode, "timed decode steps per batch size (default 16)");
  flags.Int("context", &context, "prompt tokens of each decoding sequence (default 32)");
  flags.Int("reps", &reps, "repetitions; the best is reported (default 3)");
  flags.String("kv-dtype", &kv_dtype, "KV cache dtype: f32 (default) or bf16");
  flags.String("compute", &compute, "bf16-weight matrix products: f32 (default) or bf16");
  flags.Bool("ops", &show_ops, "print the time per op of the smallest and largest batch");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  if (model_dir.empty()) {
    model_dir = (std::filesystem::temp_directory_path() / "nextserve_step_bench_small").string();
    if (!std::filesystem::exists(model_dir + "/config.json")) {
      auto c = PresetConfig("small");
      if (!c.ok() || !WriteRandomCheckpoint(*c, model_dir, {}).ok()) {
        std::fprintf(stderr, "error: cannot write the small preset to %s\n", model_dir.c_str());
        return 1;
      }
    }
  }
  kernels::cpu::SetLinearCompute(compute == "bf16" ? kernels::cpu::Compute::kBF16
                                                   : kernels::cpu::Compute::kF32);
  auto weights = ModelWeights::Load(model_dir);
  if (!weights.ok()) {
    std::fprintf(stderr, "error: %s\n", weights.status().ToString().c_str());
    return 1;
  }
  const ModelConfig& c = (*weights)->config();
  const std::vector<int64_t> batches = bench::ParsePositiveList(batches_list),
                             prefills = bench::ParsePositiveList(prefill_list);
  const int64_t most = *std::max_element(batches.begin(), batches.end());
  auto cpu = kernels::MakeCpuBackend();
  bench::TimedBackend timed(cpu.get());
  CacheLimits limits{64, most * ((context + decode * (reps + 1)) / 64 + 2) + 64, most + 4,
                     kv_dtype == "bf16" ? DType::kBF16 : DType::kF32};
  Qwen3NextModel model(std::shared_ptr<const ModelWeights>(std::move(*weights)), &timed, limits);
  int64_t reserve = most * context;
  for (int64_t p : prefills) reserve = std::max(reserve, p);
  model.ReserveWorkspace(reserve);
  std::printf("model %s: hidden %ld, %ld layers, %ld experts top-%ld, KV %s, compute %s\n",
              model_dir.c_str(), c.hidden_size, c.num_hidden_layers, c.num_experts,
              c.num_experts_per_tok, kv_dtype.c_str(), compute.c_str());

  for (int64_t threads : bench::ParsePositiveList(threads_list)) {
    omp_set_num_threads(static_cast<int>(threads));
    std::printf("\nthreads %ld\n", threads);
    {  // warm-up: fault the weights in
      auto seq = model.NewSequence();
      const auto t = Tokens(64, 1, c.vocab_size);
      SequenceInput in{seq.get(), t, false};
      (void)model.Step({&in, 1});
    }
    for (int64_t p : prefills) {
      double best = 1e30;
      for (int64_t rep = 0; rep < reps; ++rep) {
        auto seq = model.NewSequence();
        const auto t = Tokens(p, 2 + rep, c.vocab_size);
        SequenceInput in{seq.get(), t, false};
        const auto t0 = Clock::now();
        auto logits = model.Step({&in, 1});
        best = std::min(best, Since(t0));
        if (!logits.ok()) {
          std::fprintf(stderr, "error: %s\n", logits.status().ToString().c_str());
          return 1;
        }
      }
      std::printf("  prefill %4ld tokens: %8.1f tok/s\n", p, p / best);
    }
    std::vector<DecodeFigure> figures;
    for (int64_t b : batches) {
      DecodeFigure best;
      for (int64_t rep = 0; rep < reps; ++rep) {
        std::vector<std::unique_ptr<SequenceState>> seqs;
        std::vector<std::vector<int32_t>> feed;
        std::vector<SequenceInput> batch;
        for (int64_t i = 0; i < b; ++i) {
          seqs.push_back(model.NewSequence());
          feed.push_back(Tokens(context, 100 + i + rep * most, c.vocab_size));
        }
        for (int64_t i = 0; i < b; ++i) batch.push_back({seqs[i].get(), feed[i], false});
        auto logits = model.Step(batch);
        double wall = 0, inside = 0;
        std::array<bench::TimedBackend::OpTime, bench::TimedBackend::kOps> ops{};
        for (int64_t step = 0; step < decode && logits.ok(); ++step) {
          batch.clear();
          for (int64_t i = 0; i < b; ++i) {
            feed[i] = {Argmax(*logits, i, c.vocab_size)};
            batch.push_back({seqs[i].get(), feed[i], false});
          }
          timed.Reset();
          const auto t0 = Clock::now();
          logits = model.Step(batch);
          wall += Since(t0);
          inside += timed.total_seconds();
          for (int op = 0; op < bench::TimedBackend::kOps; ++op) {
            ops[op].seconds += timed.times()[op].seconds;
            ops[op].calls += timed.times()[op].calls;
          }
        }
        if (!logits.ok()) {
          std::fprintf(stderr, "error: %s\n", logits.status().ToString().c_str());
          return 1;
        }
        const double tps = static_cast<double>(b * decode) / wall;
        if (tps > best.tokens_per_s) {
          best = {tps, (wall - inside) / wall, 1e3 * wall / static_cast<double>(decode), ops};
        }
      }
      figures.push_back(best);
    }
    const double single = figures.front().tokens_per_s;
    for (size_t i = 0; i < batches.size(); ++i) {
      std::printf(
          "  decode  %3ld seqs: %8.1f tok/s  x%.2f of %ld seq  step %7.2f ms  host %.1f%%\n",
          batches[i], figures[i].tokens_per_s, figures[i].tokens_per_s / single, batches.front(),
          figures[i].step_ms, 100 * figures[i].host_share);
    }
    if (show_ops) {  // where the steps of the first and the last batch size go, by op
      for (size_t i : {size_t{0}, batches.size() - 1}) {
        std::printf("  ops at %ld seqs (ms per step):", batches[i]);
        for (int op = 0; op < bench::TimedBackend::kOps; ++op) {
          const double ms = 1e3 * figures[i].ops[op].seconds / static_cast<double>(decode);
          if (ms >= 0.05)
            std::printf(" %s %.2f", std::string(bench::TimedBackend::kOpNames[op]).c_str(), ms);
        }
        std::printf("\n");
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Main(argc, argv);
}
