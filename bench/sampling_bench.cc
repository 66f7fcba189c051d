// Per-token cost of Sampler::Sample on a 151,936-token row (Qwen3-Next's vocabulary), against
// baselines measured in the same run: a plain argmax pass (std::max_element) and a plain full
// std::sort of the row. The table at the end gives each time as a multiple of both.
//
//   build/bin/sampling_bench [--benchmark_repetitions=5 --benchmark_report_aggregates_only=true]
//
// Rows: "peaked" (what a language model usually gives: a few dozen strong tokens over a wide
// background; top_p 0.9 keeps ~10 tokens) and "flat" (unit normal logits, the worst case for
// top_p: ~45% of the vocabulary is needed to reach 0.9).
//
// BM_Step_*: one engine step's sampling over 16 and 64 rows (each row its own request and its own
// peaked row): kernels::cpu::SampleRows in one call (OpenMP over rows, all of this process's
// threads; OMP_NUM_THREADS sets them) against the same rows through Sampler::Sample one after
// another. The second table gives the ratio (wall time).
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/cpu/sample_rows.h"
#include "sampling/reference.h"
#include "sampling/sampler.h"

namespace nextserve::sampling {
namespace {

constexpr int64_t kVocab = 151936;

std::array<std::vector<float>, 2> MakeRows() {
  std::vector<float> flat(kVocab), peaked(kVocab);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < kVocab; ++i) {
    flat[i] = normal(rng);
    peaked[i] = 2.0f * flat[i];
  }
  for (int i = 0; i < 40; ++i) peaked[rng() % kVocab] += 8.0f + 0.25f * i;
  return {flat, peaked};
}

const std::vector<float>& Row(bool peaked) {
  static const std::array<std::vector<float>, 2> rows = MakeRows();
  return rows[peaked ? 1 : 0];
}

void BM_Baseline_Argmax(benchmark::State& state) {
  const std::vector<float>& row = Row(true);
  for (auto _ : state) {
    benchmark::DoNotOptimize(std::max_element(row.begin(), row.end()));
  }
}
BENCHMARK(BM_Baseline_Argmax);

void BM_Baseline_FullSort(benchmark::State& state) {
  const std::vector<float>& row = Row(true);
  std::vector<float> copy(row.size());
  for (auto _ : state) {
    std::copy(row.begin(), row.end(), copy.begin());
    std::sort(copy.begin(), copy.end(), std::greater<>());
    benchmark::DoNotOptimize(copy.data());
  }
}
BENCHMARK(BM_Baseline_FullSort);

SamplingParams Params(float temperature, int32_t top_k, float top_p, int32_t logprobs = -1) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.logprobs = logprobs;
  p.seed = 1;
  return p;
}

void RunSampler(benchmark::State& state, SamplingParams p, bool peaked,
                std::vector<int32_t> prompt = {}) {
  const std::vector<float>& row = Row(peaked);
  absl::StatusOr<Sampler> s = Sampler::Create(p, kVocab, prompt);
  if (!s.ok()) {
    state.SkipWithError(std::string(s.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    absl::StatusOr<SampleResult> r = s->Sample(row);
    benchmark::DoNotOptimize(r->token);
  }
}

void BM_Greedy(benchmark::State& state) {
  RunSampler(state, Params(0, 0, 1), true);
}
BENCHMARK(BM_Greedy);

void BM_Greedy_Logprobs5(benchmark::State& state) {
  RunSampler(state, Params(0, 0, 1, 5), true);
}
BENCHMARK(BM_Greedy_Logprobs5);

void BM_T08_TopK20_TopP08(benchmark::State& state) {
  RunSampler(state, Params(0.8f, 20, 0.8f), true);
}
BENCHMARK(BM_T08_TopK20_TopP08);

void BM_T08_TopK20_TopP08_Logprobs5(benchmark::State& state) {
  RunSampler(state, Params(0.8f, 20, 0.8f, 5), true);
}
BENCHMARK(BM_T08_TopK20_TopP08_Logprobs5);

void BM_TopP09_Peaked(benchmark::State& state) {
  RunSampler(state, Params(1, 0, 0.9f), true);
}
BENCHMARK(BM_TopP09_Peaked);

void BM_TopP09_Flat(benchmark::State& state) {
  RunSampler(state, Params(1, 0, 0.9f), false);
}
BENCHMARK(BM_TopP09_Flat);

void BM_Temperature_Only(benchmark::State& state) {
  RunSampler(state, Params(0.7f, 0, 1), true);
}
BENCHMARK(BM_Temperature_Only);

// Penalties over a 4096-token prompt (2,800-odd distinct ids) and the output so far.
void BM_T08_TopK20_TopP08_Penalties(benchmark::State& state) {
  SamplingParams p = Params(0.8f, 20, 0.8f);
  p.repetition_penalty = 1.05f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.1f;
  std::vector<int32_t> prompt(4096);
  std::mt19937 rng(2);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % 3000);
  RunSampler(state, p, true, prompt);
}
BENCHMARK(BM_T08_TopK20_TopP08_Penalties);

// The straightforward way (sampling/reference.cc: full sort, double softmax), for comparison.
void BM_NaiveFullSort_TopP09(benchmark::State& state) {
  const std::vector<float>& row = Row(true);
  const SamplingParams p = Params(1, 0, 0.9f);
  for (auto _ : state) {
    benchmark::DoNotOptimize(ReferenceProbabilities(row, p, {}, {}).data());
  }
}
BENCHMARK(BM_NaiveFullSort_TopP09);

// One step's rows: the peaked row, rotated differently for each request.
const std::vector<float>& StepRows() {
  static const std::vector<float> rows = [] {
    constexpr int64_t kMaxRows = 64;
    const std::vector<float>& peaked = Row(true);
    std::vector<float> out(kMaxRows * kVocab);
    for (int64_t r = 0; r < kMaxRows; ++r) {
      std::rotate_copy(peaked.begin(), peaked.begin() + (7919 * r) % kVocab, peaked.end(),
                       out.begin() + r * kVocab);
    }
    return out;
  }();
  return rows;
}

std::vector<Sampler> Requests(int64_t n, SamplingParams p) {
  std::vector<Sampler> out;
  for (int64_t r = 0; r < n; ++r) {
    p.seed = r;
    out.push_back(*Sampler::Create(p, kVocab, {}));
  }
  return out;
}

// All rows in one SampleRows call, then each request records its token (as Sample does).
void BM_Step_SampleRows(benchmark::State& state, SamplingParams p) {
  const int64_t n = state.range(0);
  const std::vector<float>& rows = StepRows();
  std::vector<Sampler> requests = Requests(n, p);
  std::vector<kernels::SamplingRow> settings(n);
  std::vector<int32_t> tokens(n);
  for (auto _ : state) {
    for (int64_t r = 0; r < n; ++r) settings[r] = requests[r].Row();
    if (absl::Status s = kernels::cpu::SampleRows(rows.data(), n, kVocab, settings, tokens.data());
        !s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
    for (int64_t r = 0; r < n; ++r) benchmark::DoNotOptimize(requests[r].Record(tokens[r]));
  }
  state.counters["threads"] = omp_get_max_threads();
}

// The same rows, one Sampler::Sample per request, one after another.
void BM_Step_Sequential(benchmark::State& state, SamplingParams p) {
  const int64_t n = state.range(0);
  const std::vector<float>& rows = StepRows();
  std::vector<Sampler> requests = Requests(n, p);
  for (auto _ : state) {
    for (int64_t r = 0; r < n; ++r) {
      absl::StatusOr<SampleResult> t =
          requests[r].Sample(std::span<const float>(rows.data() + r * kVocab, kVocab));
      benchmark::DoNotOptimize(t->token);
    }
  }
}

// Wall time on a shared machine: besides the mean, the fastest repetition ("min"), which the
// step table uses when present (--benchmark_repetitions=N).
double Fastest(const std::vector<double>& v) {
  return *std::min_element(v.begin(), v.end());
}

void StepArgs(benchmark::internal::Benchmark* b) {
  b->Arg(16)->Arg(64)->UseRealTime()->ComputeStatistics("min", Fastest);
}

// Qwen3's recommended settings (T 0.7, top-k 20, top-p 0.8), top-p alone (the whole-row path)
// and greedy.
BENCHMARK_CAPTURE(BM_Step_SampleRows, qwen, Params(0.7f, 20, 0.8f))->Apply(StepArgs);
BENCHMARK_CAPTURE(BM_Step_Sequential, qwen, Params(0.7f, 20, 0.8f))->Apply(StepArgs);
BENCHMARK_CAPTURE(BM_Step_SampleRows, top_p, Params(1, 0, 0.9f))->Apply(StepArgs);
BENCHMARK_CAPTURE(BM_Step_Sequential, top_p, Params(1, 0, 0.9f))->Apply(StepArgs);
BENCHMARK_CAPTURE(BM_Step_SampleRows, greedy, Params(0, 0, 1))->Apply(StepArgs);
BENCHMARK_CAPTURE(BM_Step_Sequential, greedy, Params(0, 0, 1))->Apply(StepArgs);

// Prints each benchmark's mean time as a multiple of the two baselines from this run.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      std::string name = r.run_name.function_name;
      if (!r.run_name.args.empty()) name += "/" + r.run_name.args;
      if (!r.error_occurred && r.run_type == Run::RT_Aggregate && r.aggregate_name == "min") {
        fastest_ns_[name] = r.GetAdjustedRealTime();
      }
      if (r.error_occurred || (r.run_type == Run::RT_Aggregate && r.aggregate_name != "mean"))
        continue;
      ns_[name] = r.GetAdjustedRealTime();  // the mean when repeated; nanoseconds (default unit)
      if (std::find(order_.begin(), order_.end(), name) == order_.end()) order_.push_back(name);
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    const double argmax = ns_["BM_Baseline_Argmax"], sort = ns_["BM_Baseline_FullSort"];
    std::printf("\n%-34s %12s %10s %10s\n", "per token, vocab 151936", "time (us)", "x argmax",
                "x sort");
    for (const std::string& name : order_) {
      if (name.starts_with("BM_Step_")) continue;
      const double t = ns_[name];
      std::printf("%-34s %12.2f %10.2f %10.4f\n", name.c_str(), t / 1e3, t / argmax, t / sort);
    }
    std::printf("\n%-24s %16s %16s %14s   (%s; %d OpenMP threads)\n", "per step, vocab 151936",
                "SampleRows (us)", "sequential (us)", "sequential / op",
                fastest_ns_.empty() ? "mean" : "fastest repetition", omp_get_max_threads());
    for (const char* settings : {"qwen", "top_p", "greedy"}) {
      for (const char* rows : {"16", "64"}) {
        const std::string tail = std::string("/") + settings + "/" + rows;
        const std::map<std::string, double>& ns = fastest_ns_.empty() ? ns_ : fastest_ns_;
        const auto op = ns.find("BM_Step_SampleRows" + tail);
        const auto seq = ns.find("BM_Step_Sequential" + tail);
        if (op == ns.end() || seq == ns.end()) continue;
        std::printf("%-24s %16.1f %16.1f %14.2f\n",
                    (std::string(settings) + ", " + rows + " rows").c_str(), op->second / 1e3,
                    seq->second / 1e3, seq->second / op->second);
      }
    }
  }

 private:
  std::map<std::string, double> ns_;
  std::map<std::string, double> fastest_ns_;  // the "min" aggregate, when repeated
  std::vector<std::string> order_;
};

}  // namespace
}  // namespace nextserve::sampling

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  nextserve::sampling::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
