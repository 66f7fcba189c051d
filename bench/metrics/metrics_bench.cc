// metrics_bench: what one recording costs on the hot path (the router records one ITL observation
// per token and a handful per request; a rank one step record per step) and what a scrape costs,
// next to an empty loop measured in the same run. Compare with serving_bench's router CPU per
// token.
#include <benchmark/benchmark.h>

#include <vector>

#include "metrics/prometheus.h"
#include "metrics/serving.h"

namespace nextserve::metrics {
namespace {

void BM_Baseline(benchmark::State& state) {
  double x = 0;
  for (auto _ : state) benchmark::DoNotOptimize(x += 0.001);
}
BENCHMARK(BM_Baseline)->ThreadRange(1, 8);

void BM_HistogramObserve(benchmark::State& state) {
  static PrometheusRegistry registry;
  static RouterMetrics metrics(registry, "bench");
  double x = 0;
  for (auto _ : state) metrics.inter_token_latency.Observe(x += 0.0001);
}
BENCHMARK(BM_HistogramObserve)->ThreadRange(1, 8);

void BM_CounterAdd(benchmark::State& state) {
  static PrometheusRegistry registry;
  static RouterMetrics metrics(registry, "bench");
  for (auto _ : state) metrics.generation_tokens.Add(1);
}
BENCHMARK(BM_CounterAdd)->ThreadRange(1, 8);

// One rank step of Qwen3-Next's shape: 48 layers x 512 experts of cumulative counts.
void BM_RankStep(benchmark::State& state) {
  PrometheusRegistry registry;
  std::vector<int64_t> layers(48);
  for (int64_t l = 0; l < 48; ++l) layers[l] = l;
  RankMetrics metrics(
      registry,
      {.model_name = "bench", .rank = 0, .layers = 48, .moe_layers = layers, .experts = 512});
  std::vector<int64_t> counts(48 * 512, 0);
  for (auto _ : state) {
    for (int64_t i = 0; i < 48 * 512; i += 7) counts[i] += 3;  // some experts ran
    metrics.RecordStep(0.01, 0.002, 4096, counts);
  }
}
BENCHMARK(BM_RankStep);

void BM_Scrape(benchmark::State& state) {
  PrometheusRegistry registry;
  RouterMetrics router(registry, "bench");
  for (int i = 0; i < 1000; ++i) router.time_to_first_token.Observe(i * 0.001);
  for (auto _ : state) benchmark::DoNotOptimize(registry.TextFormat());
}
BENCHMARK(BM_Scrape);

}  // namespace
}  // namespace nextserve::metrics

BENCHMARK_MAIN();
