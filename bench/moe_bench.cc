// moe_bench: the CPU backend's GroupedExpertMlp at decode batch sizes, against the streaming-read
// bandwidth of the same run. Random bf16 experts of the small preset's shape (hidden 1024, inter
// 256, 128 experts) for --layers layers, more bytes than the caches hold, so every layer reads its
// experts from memory as the model does; uniform top-8 routing of --batches tokens per layer.
// Reports ms per layer, the experts a layer reads, and their bytes per second as a share of
// streaming read. Every pass routes afresh, so the experts come from memory, not from L3.
//
//   moe_bench [--batches 1,2,4,8,16] [--layers 4] [--compute bf16|f32] [--reps 5]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "cli/flags.h"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve {
namespace {

using Clock = std::chrono::steady_clock;

// Bytes read per second by all threads summing a buffer larger than the caches.
double StreamReadGBs(const uint16_t* data, size_t count) {
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    volatile float sink =
        bench::StreamSum(reinterpret_cast<const float*>(data), static_cast<int64_t>(count / 2));
    (void)sink;
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, count * 2.0 / s / 1e9);
  }
  return best;
}

int Main(int argc, char** argv) {
  std::string batches_list = "1,2,4,8,16", compute = "bf16";
  int64_t layers = 4, reps = 10, rows_each = 0;
  cli::Flags flags("moe_bench [--batches 1,2,4,8,16] [--layers N] [--compute bf16|f32] [--reps N]");
  flags.String("batches", &batches_list, "tokens per layer (default 1,2,4,8,16)");
  flags.Int("layers", &layers, "layers of 128 experts, 1.5 MiB each (default 4)");
  flags.String("compute", &compute, "bf16 (default) or f32");
  flags.Int("reps", &reps, "passes over the layers, each layer's best kept (default 10)");
  flags.Int("rows-each", &rows_each,
            "instead of routing: every expert gets this many rows (--batches ignored)");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  kernels::cpu::SetLinearCompute(compute == "f32" ? kernels::cpu::Compute::kF32
                                                  : kernels::cpu::Compute::kBF16);
  const int64_t experts = 128, top_k = 8, hidden = 1024, inter = 256;
  const int64_t expert_elems = 3 * inter * hidden;
  std::vector<uint16_t> weights(static_cast<size_t>(layers * experts * expert_elems));
  {
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    for (auto& v : weights) v = F32ToBf16(dist(rng));
  }
  std::vector<std::vector<kernels::ExpertMatrices>> mats(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t e = 0; e < experts; ++e) {
      const uint16_t* base = weights.data() + (l * experts + e) * expert_elems;
      mats[l].push_back({{DType::kBF16, base, inter, hidden},
                         {DType::kBF16, base + inter * hidden, inter, hidden},
                         {DType::kBF16, base + 2 * inter * hidden, hidden, inter}});
    }
  }
  const double stream = StreamReadGBs(weights.data(), weights.size());
  std::printf(
      "moe_bench: %d threads, compute %s, %ld layers x %ld experts (%.0f MiB); streaming "
      "read %.1f GB/s\n",
      omp_get_max_threads(), compute.c_str(), layers, experts, weights.size() * 2.0 / (1 << 20),
      stream);
  std::printf("  %6s %8s %8s %10s %8s %7s\n", "tokens", "experts", "pairs", "ms/layer", "GB/s",
              "%read");
  const std::vector<int64_t> batches = rows_each > 0
                                           ? std::vector<int64_t>{rows_each * experts / top_k}
                                           : bench::ParsePositiveList(batches_list);
  for (int64_t batch : batches) {
    // Per pass and layer: a fresh routing (top-8 distinct experts per token, pairs grouped by
    // expert), so that a pass finds its experts in memory, not left in L3 by the pass before.
    std::mt19937 rng(static_cast<uint32_t>(batch));
    const int64_t pairs = batch * top_k, passes = reps + 1;
    std::vector<std::vector<int64_t>> offsets(static_cast<size_t>(passes * layers));
    std::vector<int64_t> distinct(offsets.size(), 0);
    for (size_t p = 0; p < offsets.size(); ++p) {
      std::vector<int64_t> count(experts, 0);
      std::vector<int32_t> ids(experts);
      for (int64_t t = 0; t < batch; ++t) {
        std::iota(ids.begin(), ids.end(), 0);
        std::shuffle(ids.begin(), ids.end(), rng);
        for (int64_t j = 0; j < top_k; ++j) ++count[ids[j]];
      }
      if (rows_each > 0) std::fill(count.begin(), count.end(), rows_each);
      offsets[p].assign(experts + 1, 0);
      for (int64_t e = 0; e < experts; ++e) {
        offsets[p][e + 1] = offsets[p][e] + count[e];
        distinct[p] += count[e] > 0;
      }
    }
    std::vector<float> xs(pairs * hidden), ys(pairs * hidden), scratch(2 * pairs * inter);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (auto& v : xs) v = dist(rng);
    // Each layer's best seconds per expert over the passes (the machine may be shared: a pass
    // that lost the CPU is dropped); the first pass warms up.
    std::vector<double> per_expert(static_cast<size_t>(layers), 1e30);
    double mean_distinct = 0;
    for (int64_t pass = 0; pass < passes; ++pass) {
      for (int64_t l = 0; l < layers; ++l) {
        const size_t p = static_cast<size_t>(pass * layers + l);
        const auto t0 = Clock::now();
        kernels::cpu::GroupedExpertMlp(xs.data(), offsets[p].data(), experts, mats[l].data(),
                                       scratch.data(), ys.data());
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        mean_distinct += static_cast<double>(distinct[p]) / static_cast<double>(passes * layers);
        if (pass > 0) per_expert[l] = std::min(per_expert[l], s / static_cast<double>(distinct[p]));
      }
    }
    const double best = mean_distinct * std::accumulate(per_expert.begin(), per_expert.end(), 0.0);
    const double gbs = layers * mean_distinct * expert_elems * 2.0 / best / 1e9;
    std::printf("  %6ld %8.1f %8ld %10.3f %8.1f %6.0f%%\n", batch, mean_distinct, pairs,
                best * 1e3 / layers, gbs, 100 * gbs / stream);
  }
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Main(argc, argv);
}
