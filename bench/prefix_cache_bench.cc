// prefix_cache_bench: prefix caching on the hybrid model, through worker::Engine, on workloads the
// benchmark generates. Every mode runs the same requests in the same process:
//   off      no prefix cache;
//   on       this design: full KV blocks shared by hash, DeltaNet state snapshots at prompt ends,
//            response ends, divergence points and every --snapshot-every prompt tokens;
//   align-B  an emulation of block-aligned caching (vLLM's "align" mode): states saved only at
//            multiples of B tokens (same code, SchedulerLimits::snapshot_aligned_only).
// Workloads: "chat" (conversations x turns, a shared system prompt, user turns of 20-200 tokens;
// each turn's prompt = the previous prompt + its answer + the new user turn) and "agent" (one long
// shared prefix, many short divergent continuations).
// Figures per mode: hit rate (reused tokens / prefix tokens that exist, i.e. the longest prefix of
// each prompt that an earlier request had fed), prefill tokens computed, TTFT p50/p99 (all turns
// and turns >= 2), wall time, cache memory held at the end (cached KV blocks + snapshots).
//
//   prefix_cache_bench [--model DIR] [--preset tiny] [--workload chat,agent] [--conversations 16]
//     [--turns 4] [--system 600] [--answer 32] [--concurrency 4] [--threads 2]
//     [--modes off,on,align-512,align-2048] [--snapshot-budget 64] [--snapshot-every 512]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "kernels/backend.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"
#include "worker/engine.h"

namespace nextserve {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct Conversation {
  std::vector<std::vector<int32_t>> user_turns;
};

struct Workload {
  std::string name;
  std::vector<int32_t> system;
  std::vector<Conversation> conversations;
};

std::vector<int32_t> RandomTokens(std::mt19937& rng, int64_t n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(n);
  for (auto& x : t) x = token(rng);
  return t;
}

Workload MakeWorkload(const std::string& name, int64_t conversations, int64_t turns, int64_t system,
                      int64_t vocab) {
  std::mt19937 rng(42);
  Workload w{name, {}, {}};
  if (name == "chat") {
    w.system = RandomTokens(rng, system, vocab);
    std::uniform_int_distribution<int64_t> len(20, 200);
    for (int64_t c = 0; c < conversations; ++c) {
      Conversation conv;
      for (int64_t t = 0; t < turns; ++t)
        conv.user_turns.push_back(RandomTokens(rng, len(rng), vocab));
      w.conversations.push_back(std::move(conv));
    }
  } else {  // agent: a long shared prefix, short divergent continuations, one turn each
    w.system = RandomTokens(rng, 3 * system, vocab);
    std::uniform_int_distribution<int64_t> len(10, 60);
    for (int64_t c = 0; c < conversations * 2; ++c)
      w.conversations.push_back({{RandomTokens(rng, len(rng), vocab)}});
  }
  return w;
}

struct Mode {
  std::string name;
  bool prefix_cache = false;
  bool aligned_only = false;
  int64_t every = 0;
};

struct TurnResult {
  int64_t turn = 0;
  double ttft = 0;
  int64_t prompt = 0, reusable = 0;
};

int64_t CommonPrefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return static_cast<int64_t>(i);
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  return v[i];
}

struct ModeFigures {
  worker::EngineLoad load;
  std::vector<TurnResult> turns;
  double wall = 0;
  int64_t prompt_tokens = 0, reusable = 0;
  std::vector<std::vector<int32_t>> answers;  // per conversation, all turns' tokens: must agree
};

ModeFigures RunMode(const std::shared_ptr<const ModelWeights>& weights, kernels::Backend* backend,
                    const Workload& w, const Mode& mode, int64_t answer, int64_t concurrency,
                    int64_t budget, int64_t blocks, int64_t block_size) {
  worker::EngineOptions options;
  options.cache = {block_size, blocks, 64};
  options.cache.prefix_cache = mode.prefix_cache;
  options.cache.max_snapshots = budget;
  options.scheduler = {512, 16, mode.every, mode.aligned_only};
  worker::Engine engine(weights, backend, options);

  ModeFigures f;
  f.answers.resize(w.conversations.size());
  std::mutex mu;
  // Every earlier request's prompt and every finished one's fed tokens: the prefixes that exist.
  std::vector<std::vector<int32_t>> fed;
  size_t next = 0;
  const auto start = Clock::now();
  auto worker_fn = [&] {
    while (true) {
      size_t c;
      {
        std::lock_guard lock(mu);
        if (next >= w.conversations.size()) return;
        c = next++;
      }
      std::vector<int32_t> prompt = w.system;
      const auto& turns = w.conversations[c].user_turns;
      for (size_t t = 0; t < turns.size(); ++t) {
        prompt.insert(prompt.end(), turns[t].begin(), turns[t].end());
        TurnResult tr;
        tr.turn = static_cast<int64_t>(t);
        tr.prompt = static_cast<int64_t>(prompt.size());
        {
          std::lock_guard lock(mu);
          for (const auto& f2 : fed) tr.reusable = std::max(tr.reusable, CommonPrefix(prompt, f2));
          tr.reusable = std::min(tr.reusable, tr.prompt - 1);
          fed.push_back(prompt);  // fed soon: later requests may reuse it while this one runs
        }
        worker::SubmitSpec spec;
        spec.id = "c" + std::to_string(c) + "t" + std::to_string(t);
        spec.prompt = prompt;
        spec.max_tokens = answer;
        spec.sampling.temperature = 0.0f;
        const auto submitted = Clock::now();
        auto ch = engine.Submit(spec);
        if (!ch.ok()) {
          std::fprintf(stderr, "submit: %s\n", std::string(ch.status().message()).c_str());
          std::exit(1);
        }
        std::vector<int32_t> out;
        bool first = true;
        while (true) {
          worker::RankOutput o;
          if (!(*ch)->Pop(&o, 600s)) {
            std::fprintf(stderr, "request %s timed out\n", spec.id.c_str());
            std::exit(1);
          }
          if (first && !o.tokens.empty()) {
            tr.ttft = Since(submitted);
            first = false;
          }
          out.insert(out.end(), o.tokens.begin(), o.tokens.end());
          if (o.finish != worker::Finish::kNone) break;
        }
        prompt.insert(prompt.end(), out.begin(), out.end());
        std::lock_guard lock(mu);
        f.answers[c].insert(f.answers[c].end(), out.begin(), out.end());
        // What this request fed through the model: its prompt and all but its last token.
        fed.emplace_back(prompt.begin(), prompt.end() - 1);
        f.turns.push_back(tr);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int64_t i = 0; i < concurrency; ++i) threads.emplace_back(worker_fn);
  for (auto& t : threads) t.join();
  f.wall = Since(start);
  for (int i = 0; i < 200 && engine.Load().running > 0; ++i) std::this_thread::sleep_for(5ms);
  f.load = engine.Load();
  for (const TurnResult& t : f.turns) {
    f.prompt_tokens += t.prompt;
    f.reusable += t.reusable;
  }
  return f;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) out.emplace_back(p);
  return out;
}

int Main(int argc, char** argv) {
  std::string model_dir, preset = "tiny", workloads = "chat,agent",
                         modes_list = "off,on,align-512,align-2048";
  int64_t conversations = 16, turns = 4, system = 600, answer = 32, concurrency = 4, threads = 2,
          budget = 64, every = 512, blocks = 2048, block_size = 64;
  cli::Flags flags(
      "prefix_cache_bench [--model DIR] [--preset tiny] [--workload chat,agent] [--conversations "
      "16] [--turns 4] [--system 600] [--answer 32] [--concurrency 4] [--threads 2] [--modes "
      "off,on,align-512,align-2048] [--snapshot-budget 64] [--snapshot-every 512]");
  flags.String("model", &model_dir, "checkpoint (default: --preset, bf16, written to /tmp)");
  flags.String("preset", &preset, "random model preset when no --model (default tiny)");
  flags.String("workload", &workloads, "chat and/or agent (default chat,agent)");
  flags.Int("conversations", &conversations, "chat conversations (agent: twice as many) (16)");
  flags.Int("turns", &turns, "turns per chat conversation (default 4)");
  flags.Int("system", &system, "shared system prompt tokens (agent prefix: 3x) (default 600)");
  flags.Int("answer", &answer, "tokens generated per turn (default 32)");
  flags.Int("concurrency", &concurrency, "conversations in flight (default 4)");
  flags.Int("threads", &threads, "OpenMP threads (default 2)");
  flags.String("modes", &modes_list, "off, on, align-B (default off,on,align-512,align-2048)");
  flags.Int("snapshot-budget", &budget, "state snapshots per mode (default 64)");
  flags.Int("snapshot-every", &every, "the design's snapshot interval in prompts (default 512)");
  flags.Int("kv-blocks", &blocks, "KV blocks (default 2048)");
  flags.Int("block-size", &block_size, "tokens per KV block (default 64)");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  omp_set_num_threads(static_cast<int>(threads));
  if (model_dir.empty()) {
    model_dir =
        (std::filesystem::temp_directory_path() / ("nextserve_prefix_bench_" + preset)).string();
    if (!std::filesystem::exists(std::filesystem::path(model_dir) / "model.safetensors")) {
      auto c = PresetConfig(preset);
      if (!c.ok()) return cli::Flags::Report(c.status(), flags);
      c->eos_token_ids.clear();  // every turn answers exactly --answer tokens
      if (auto s = WriteRandomCheckpoint(*c, model_dir, {}); !s.ok())
        return cli::Flags::Report(s, flags);
    }
  }
  auto loaded = ModelWeights::Load(model_dir);
  if (!loaded.ok()) return cli::Flags::Report(loaded.status(), flags);
  std::shared_ptr<const ModelWeights> weights = std::move(*loaded);
  auto backend = kernels::MakeCpuBackend();
  const ModelConfig& config = weights->config();

  std::vector<Mode> modes;
  for (const std::string& m : Split(modes_list)) {
    int64_t b = 0;
    if (m == "off") {
      modes.push_back({m});
    } else if (m == "on") {
      modes.push_back({m, true, false, every});
    } else if (m.rfind("align-", 0) == 0 && absl::SimpleAtoi(m.substr(6), &b) && b > 0) {
      modes.push_back({m, true, true, b});
    } else {
      return cli::Flags::Report(absl::InvalidArgumentError("--modes: unknown mode '" + m + "'"),
                                flags);
    }
  }
  // The bytes of one KV block and one snapshot, from a pool of one of each.
  CachePool probe(config, {block_size, 1, 1, DType::kF32, true, 1}, backend.get());
  std::printf("model %s: block %ld tokens = %.1f KiB, snapshot (state + tail block) = %.1f KiB\n",
              model_dir.c_str(), block_size, probe.block_bytes() / 1024.0,
              probe.snapshot_bytes() / 1024.0);
  for (const std::string& wname : Split(workloads)) {
    const Workload w = MakeWorkload(wname, conversations, turns, system, config.vocab_size);
    std::printf("\nworkload %s: %zu conversations, system prefix %zu tokens, %ld answer tokens\n",
                wname.c_str(), w.conversations.size(), w.system.size(), answer);
    std::printf("%-11s %8s %9s %10s %10s %9s %9s %9s %9s %8s %6s %9s %9s\n", "mode", "hit%",
                "reused", "reusable", "prefilled", "ttft_p50", "ttft_p99", "t2+_p50", "t2+_p99",
                "wall_s", "snaps", "snap_MiB", "kv_MiB");
    const ModeFigures* baseline = nullptr;
    std::vector<ModeFigures> all;
    all.reserve(modes.size());
    for (const Mode& mode : modes) {
      all.push_back(RunMode(weights, backend.get(), w, mode, answer, concurrency, budget, blocks,
                            block_size));
      const ModeFigures& f = all.back();
      std::vector<double> ttft, later;
      for (const TurnResult& t : f.turns) {
        ttft.push_back(t.ttft);
        if (t.turn >= 1) later.push_back(t.ttft);
      }
      const int64_t reused = f.load.prefix_hit_tokens;
      // Memory the cache holds at the end: snapshots, and cached KV blocks (the KV arena is the
      // same in every mode; cached blocks are evicted on demand, so they cost nothing extra).
      const double snap_mib =
          static_cast<double>(f.load.snapshots_used) * probe.snapshot_bytes() / (1 << 20);
      const double kv_mib =
          static_cast<double>(f.load.cached_blocks) * probe.block_bytes() / (1 << 20);
      std::printf(
          "%-11s %7.1f%% %9ld %10ld %10ld %8.1fms %8.1fms %8.1fms %8.1fms %8.2f %6ld %9.1f %9.1f\n",
          mode.name.c_str(), f.reusable ? 100.0 * reused / f.reusable : 0.0, reused, f.reusable,
          f.prompt_tokens - reused, 1e3 * Percentile(ttft, 0.5), 1e3 * Percentile(ttft, 0.99),
          1e3 * Percentile(later, 0.5), 1e3 * Percentile(later, 0.99), f.wall,
          f.load.snapshots_used, snap_mib, kv_mib);
      std::fflush(stdout);
      if (baseline == nullptr) baseline = &all.front();
      if (f.answers != baseline->answers)
        std::printf("  WARNING: %s generated different tokens than %s\n", mode.name.c_str(),
                    modes.front().name.c_str());
    }
    if (all.size() > 1 && modes.front().name == "off") {
      for (size_t i = 1; i < all.size(); ++i) {
        std::vector<double> a, b;
        for (const TurnResult& t : all[0].turns)
          if (t.turn >= 1) a.push_back(t.ttft);
        for (const TurnResult& t : all[i].turns)
          if (t.turn >= 1) b.push_back(t.ttft);
        if (!a.empty() && !b.empty()) {
          std::printf("  %s: turns >= 2 TTFT p50 %.2fx lower than off\n", modes[i].name.c_str(),
                      Percentile(a, 0.5) / Percentile(b, 0.5));
        }
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
