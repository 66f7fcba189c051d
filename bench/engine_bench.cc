// engine_bench: prefill and decode speed of the Qwen3-Next CPU engine on the "small" preset, as
// shares of this machine's limits measured in the same run:
//   prefill GFLOP/s  / oneDNN sgemm GFLOP/s on a comparable shape (same thread count)
//   decode weight bytes read per second / streaming-read bandwidth (same thread count)
// and the chunked delta rule's time per token at growing prompt lengths (it should be flat).
// --compute f32,bf16 measures each Linear compute mode (kernels/cpu/cpu_ops.h) against the same
// baselines; bf16 compute needs AVX512-BF16 and is reported as fp32 (with a note) without it.
//
//   engine_bench [--model DIR] [--prompt N] [--decode N] [--threads 1,2] [--compute f32,bf16]
//   [--reps N] [--clock wall|cpu] [--delta-lengths 1024,4096,16384]
// Without --model it writes the small preset (bf16) to a temporary directory first.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "cli/flags.h"
#include "dnnl.h"
#include "kernels/cpu/cpu_ops.h"
#include "model/qwen3_next.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"

namespace nextserve {
namespace {

// --clock cpu: seconds of CPU time this process used instead of wall time, so that time spent
// descheduled by other jobs on a shared machine does not count (with OMP_WAIT_POLICY=passive, so
// that idle threads sleep rather than spin). With several threads it is core-seconds: figures
// then compare efficiency per core, baselines and engine alike.
bool g_cpu_clock = false;
double Now() {
  if (g_cpu_clock) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best of `reps` times: the least disturbed run on a noisy machine.
double BestSeconds(int reps, const std::function<void()>& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Now();
    fn();
    best = std::min(best, Now() - t0);
  }
  return best;
}

double SgemmGflops(int64_t m, int64_t n, int64_t k) {
  std::vector<float> a(m * k, 0.5f), b(n * k, 0.25f), c(m * n);
  auto run = [&] {
    dnnl_sgemm('N', 'T', m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, c.data(), n);
  };
  run();
  return 2.0 * m * n * k / BestSeconds(5, run) / 1e9;
}

double StreamReadGBs(size_t bytes) {
  std::vector<float> buf(bytes / sizeof(float), 1.0f);
  volatile float sink = 0;
  auto run = [&] { sink = bench::StreamSum(buf.data(), static_cast<int64_t>(buf.size())); };
  run();
  (void)sink;
  return bytes / BestSeconds(5, run) / 1e9;
}

struct Costs {
  double flops_per_token = 0;   // matrices every token multiplies (2 flops per weight)
  double bytes_per_decode = 0;  // weight bytes one decode step reads (batch of one)
};

Costs ModelCosts(const ModelWeights& w) {
  const ModelConfig& c = w.config();
  double params = 0, bytes = 0;
  // Bytes in each matrix's own dtype (an FP8 checkpoint keeps some in bf16), FP8 block scales
  // included.
  auto bytes_of = [](const WeightRef& r) {
    const double elements = static_cast<double>(r.rows) * r.cols;
    double b = elements * static_cast<double>(DTypeSize(r.dtype));
    if (r.block_scale) {
      b += 4.0 * static_cast<double>((r.rows + kernels::kFp8Block - 1) / kernels::kFp8Block) *
           static_cast<double>((r.cols + kernels::kFp8Block - 1) / kernels::kFp8Block);
    }
    return b;
  };
  auto add = [&](const WeightRef& r) {
    params += static_cast<double>(r.rows) * r.cols;
    bytes += bytes_of(r);
  };
  for (const auto& l : w.layers) {
    if (l.type == LayerType::kFullAttention) {
      for (auto* r :
           {&l.attention.q_proj, &l.attention.k_proj, &l.attention.v_proj, &l.attention.o_proj})
        add(*r);
    } else {
      for (auto* r : {&l.delta_net.in_proj_qkvz, &l.delta_net.in_proj_ba, &l.delta_net.out_proj})
        add(*r);
    }
    if (l.is_moe) {
      add(l.moe.router);
      add(l.moe.shared_expert_gate);
      for (auto* r : {&l.moe.shared_expert.gate_proj, &l.moe.shared_expert.up_proj,
                      &l.moe.shared_expert.down_proj})
        add(*r);
      const MlpWeights& e = l.moe.experts[0];
      params +=
          c.num_experts_per_tok * (static_cast<double>(e.gate_proj.rows) * e.gate_proj.cols * 3);
      bytes += c.num_experts_per_tok *
               (bytes_of(e.gate_proj) + bytes_of(e.up_proj) + bytes_of(e.down_proj));
    } else {
      for (auto* r : {&l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj}) add(*r);
    }
  }
  Costs costs;
  costs.flops_per_token = 2 * params;
  // The lm_head and one embedding row.
  costs.bytes_per_decode = bytes + bytes_of(w.lm_head) +
                           static_cast<double>(c.hidden_size) * DTypeSize(w.embed_tokens.dtype);
  return costs;
}

int Main(int argc, char** argv) {
  std::string model_dir, threads_list = "1,2", delta_list = "1024,4096,16384",
                         compute_list = "f32,bf16";
  int64_t prompt_len = 512, decode_steps = 32, reps = 1;
  cli::Flags flags(
      "engine_bench [--model DIR] [--prompt N] [--decode N] [--threads 1,2] [--compute f32,bf16] "
      "[--reps N] [--clock wall|cpu] [--delta-lengths L,...]");
  flags.String("model", &model_dir, "checkpoint (default: small preset, bf16, written to /tmp)");
  flags.Int("prompt", &prompt_len, "prefill length (default 512)");
  flags.Int("decode", &decode_steps, "decode steps (default 32)");
  std::string clock = "wall";
  flags.String("clock", &clock, "wall (default) or cpu: CPU seconds of this process");
  flags.Int("reps", &reps, "rounds of measurements, the best of each kept (default 1)");
  flags.String("threads", &threads_list, "thread counts to measure (default 1,2)");
  flags.String("compute", &compute_list,
               "Linear compute modes to measure: f32, bf16 (default both)");
  flags.String("delta-lengths", &delta_list, "prompt lengths for the delta-rule scaling check");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  if (clock != "wall" && clock != "cpu") {
    std::fprintf(stderr, "--clock: '%s' is neither wall nor cpu\n", clock.c_str());
    return 2;
  }
  g_cpu_clock = clock == "cpu";
  if (g_cpu_clock)
    std::printf(
        "clock: CPU seconds of this process (core-seconds with several threads): every rate "
        "below is per CPU-second\n");
  std::vector<kernels::cpu::Compute> modes;
  for (absl::string_view piece : absl::StrSplit(compute_list, ',')) {
    if (piece == "f32") {
      modes.push_back(kernels::cpu::Compute::kF32);
    } else if (piece == "bf16") {
      modes.push_back(kernels::cpu::Compute::kBF16);
    } else {
      std::fprintf(stderr, "--compute: unknown mode '%s' (known: f32, bf16)\n",
                   std::string(piece).c_str());
      return 2;
    }
  }
  if (!kernels::cpu::CpuHasBf16Dot())
    std::printf("note: no AVX512-BF16 on this CPU: bf16 compute runs the fp32 path\n");
  std::string tmp_dir;
  if (model_dir.empty()) {
    tmp_dir = (std::filesystem::temp_directory_path() / "nextserve_bench_small").string();
    auto config = PresetConfig("small");
    if (!std::filesystem::exists(tmp_dir + "/model.safetensors")) {
      if (auto s = WriteRandomCheckpoint(*config, tmp_dir); !s.ok()) {
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        return 1;
      }
    }
    model_dir = tmp_dir;
  }
  auto loaded = ModelWeights::Load(model_dir);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<const ModelWeights> weights = std::move(*loaded);
  auto backend = kernels::MakeCpuBackend();
  Qwen3NextModel model(weights, backend.get());
  const ModelConfig& c = model.config();
  const Costs costs = ModelCosts(*weights);
  std::printf("model %s: hidden %ld, %ld layers, %ld experts top-%ld, stored %s\n",
              model_dir.c_str(), c.hidden_size, c.num_hidden_layers, c.num_experts,
              c.num_experts_per_tok, std::string(DTypeName(weights->stored_dtype)).c_str());
  std::printf("per token: %.1f MFLOP (matrices), decode reads %.1f MB of weights\n\n",
              costs.flops_per_token / 1e6, costs.bytes_per_decode / 1e6);

  std::vector<int32_t> prompt(prompt_len);
  for (int64_t i = 0; i < prompt_len; ++i)
    prompt[i] = static_cast<int32_t>((i * 7919) % c.vocab_size);
  for (absl::string_view piece : absl::StrSplit(threads_list, ',')) {
    int threads = 1;
    if (!absl::SimpleAtoi(piece, &threads)) continue;
    omp_set_num_threads(threads);
    struct Best {
      double prefill_s = 1e30, decode_s = 1e30;
      double prefill_wall_s = 0;  // of the best prefill: the profile's shares are of wall time
      ForwardProfile profile;
    };
    std::vector<Best> best(modes.size());
    double gemm = 0, stream = 0;
    // --reps rounds, each measuring the baselines and then every mode in turn, the best of each
    // kept: on a shared machine every mode gets the same chance of a quiet moment.
    for (int64_t rep = 0; rep < reps; ++rep) {
      gemm = std::max(gemm, SgemmGflops(prompt_len, c.hidden_size, c.hidden_size));
      stream = std::max(stream, StreamReadGBs(size_t{1} << 30));
      for (size_t mi = 0; mi < modes.size(); ++mi) {
        kernels::cpu::SetLinearCompute(modes[mi]);
        if (rep == 0) {
          // Untimed warm-up: the first pass faults the mapped weights in from the page cache (and
          // makes the bf16 matmul primitives of this prompt length).
          auto warm = model.NewSequence();
          SequenceInput w{warm.get(), prompt, false};
          (void)model.Forward({&w, 1});
        }
        ForwardProfile profile;
        auto seq = model.NewSequence();
        SequenceInput in{seq.get(), prompt, false};
        const double t0 = Now();
        const auto wall0 = std::chrono::steady_clock::now();
        auto logits = model.Forward({&in, 1}, &profile);
        const double prefill_s = Now() - t0;
        const double prefill_wall_s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
        std::vector<int32_t> next(1, 0);
        const double t1 = Now();
        for (int64_t step = 0; step < decode_steps; ++step) {
          next[0] = static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) -
                                         logits->begin());
          SequenceInput d{seq.get(), next, false};
          logits = model.Forward({&d, 1});
        }
        const double decode_s = Now() - t1;
        if (prefill_s < best[mi].prefill_s)
          best[mi].prefill_s = prefill_s, best[mi].profile = profile,
          best[mi].prefill_wall_s = prefill_wall_s;
        best[mi].decode_s = std::min(best[mi].decode_s, decode_s);
      }
    }
    kernels::cpu::SetLinearCompute(kernels::cpu::Compute::kF32);
    std::printf("threads %d\n", threads);
    std::printf("  limits   sgemm %ldx%ldx%ld: %.1f GFLOP/s | streaming read: %.1f GB/s\n",
                prompt_len, c.hidden_size, c.hidden_size, gemm, stream);
    for (size_t mi = 0; mi < modes.size(); ++mi) {
      const Best& b = best[mi];
      const double prefill_gflops = costs.flops_per_token * prompt_len / b.prefill_s / 1e9;
      const double decode_tps = decode_steps / b.decode_s,
                   decode_gbs = costs.bytes_per_decode * decode_tps / 1e9;
      std::printf("  compute %s\n", modes[mi] == kernels::cpu::Compute::kBF16 ? "bf16" : "f32");
      std::printf("  prefill  %ld tokens: %.1f tok/s, %.1f GFLOP/s = %.0f%% of sgemm\n", prompt_len,
                  prompt_len / b.prefill_s, prefill_gflops, 100 * prefill_gflops / gemm);
      std::printf(
          "           time: mixers DeltaNet %.0f%% attention %.0f%%, MoE/MLP %.0f%%, lm_head "
          "%.0f%%\n",
          100 * b.profile.delta_net / b.prefill_wall_s,
          100 * b.profile.attention / b.prefill_wall_s, 100 * b.profile.moe / b.prefill_wall_s,
          100 * b.profile.lm_head / b.prefill_wall_s);
      std::printf("  decode   %.1f tok/s, %.2f GB/s of weights = %.0f%% of streaming read\n",
                  decode_tps, decode_gbs, 100 * decode_gbs / stream);
    }
  }

  // The chunked delta rule alone, at the model's DeltaNet shape, one thread.
  omp_set_num_threads(1);
  const kernels::DeltaNetShape shape{c.linear_num_key_heads, c.linear_num_value_heads,
                                     c.linear_key_head_dim, c.linear_value_head_dim,
                                     c.linear_conv_kernel_dim};
  std::printf("\nchunked delta rule (%ld value heads, %ldx%ld state), one thread:\n",
              shape.num_value_heads, shape.key_head_dim, shape.value_head_dim);
  double first = 0;
  for (absl::string_view piece : absl::StrSplit(delta_list, ',')) {
    int64_t t = 0;
    if (!absl::SimpleAtoi(piece, &t) || t <= 0) continue;
    std::vector<float> conv(t * shape.conv_dim()), g(t * shape.num_value_heads, -0.05f),
        beta(t * shape.num_value_heads, 0.5f),
        state(shape.num_value_heads * shape.key_head_dim * shape.value_head_dim),
        out(t * shape.value_dim());
    std::mt19937 rng(1);
    std::normal_distribution<float> dist;
    for (auto& x : conv) x = dist(rng);
    const double s = BestSeconds(2, [&] {
      std::fill(state.begin(), state.end(), 0.0f);
      kernels::cpu::DeltaRule(conv.data(), g.data(), beta.data(), t, shape, state.data(),
                              out.data(), true);
    });
    const double per_token_us = s / t * 1e6;
    if (first == 0) first = per_token_us;
    std::printf("  %6ld tokens: %.2f us/token (x%.2f of the first)\n", t, per_token_us,
                per_token_us / first);
  }
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Main(argc, argv);
}
