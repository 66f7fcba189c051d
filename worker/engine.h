// The rank's engine loop: one thread that repeatedly schedules a step, runs the model over it,
// samples, and sends each request's new tokens to its channel. Submit/Abort/Load are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "metrics/serving.h"
#include "model/qwen3_next.h"
#include "sampling/params.h"
#include "worker/request.h"
#include "worker/scheduler.h"

namespace nextserve::worker {

struct EngineOptions {
  // Called once, on the engine thread, when the expert-parallel group fails (e.g. to set health).
  std::function<void(const std::string& why)> on_broken;
  SchedulerLimits scheduler;
  CacheLimits cache;
  ModelOptions model;
  int64_t max_context = 0;                  // 0: the model's max_position_embeddings
  metrics::RankMetrics* metrics = nullptr;  // not owned; null: none recorded
};

struct EngineLoad {
  int64_t running = 0, waiting = 0;
  int64_t free_blocks = 0, total_blocks = 0, free_slots = 0, total_slots = 0;
  int64_t block_tokens = 0, max_context = 0;
  int64_t steps = 0, preemptions = 0;
  // Prefix cache (zeros while it is off): see PrefixCacheStats.
  int64_t prefix_queries = 0, prefix_hits = 0, prefix_query_tokens = 0, prefix_hit_tokens = 0;
  int64_t snapshots_used = 0, total_snapshots = 0, snapshot_evictions = 0, block_evictions = 0,
          cached_blocks = 0;
};

struct SubmitSpec {
  std::string id;
  std::vector<int32_t> prompt;
  int64_t max_tokens = 1;  // still to generate
  // A request moved from a lost rank: the last `already_generated` prompt tokens are its output so
  // far (the sampler resumes after them: penalties, min_tokens, RNG position).
  int64_t already_generated = 0;
  sampling::SamplingParams sampling;
};

class Engine {
 public:
  // With `comm` (not owned; size > 1) the engine is one rank of an expert-parallel group: every
  // step starts with a small all-reduce on which all ranks agree whether to step (and whether to
  // stop), and ranks with nothing to do step with an empty batch (architecture.md §2).
  Engine(std::shared_ptr<const ModelWeights> weights, kernels::Backend* backend,
         EngineOptions options, comm::Communicator* comm = nullptr,
         std::optional<ExpertPlacement> placement = std::nullopt);
  ~Engine();  // stops the loop; unfinished requests end as aborted

  // Validates (ids in range, prompt within the context, sampling params, unique id) and queues the
  // request; its outputs arrive on the returned channel, the last one with finish != kNone.
  absl::StatusOr<std::shared_ptr<OutputChannel>> Submit(SubmitSpec spec);
  // Ends the request at the next step (kAborted) and frees its cache. False if unknown or done.
  bool Abort(const std::string& id);
  // A snapshot the engine thread publishes after each step; never waits on the engine (atomics),
  // so health and load answers stay prompt however long a step takes.
  EngineLoad Load() const;
  // Why the expert-parallel group failed ("" while it serves). Thread-safe.
  std::string Broken() const;
  const ModelConfig& config() const { return model_.config(); }
  int64_t max_context() const { return max_context_; }

 private:
  void Loop();
  void GroupLoop();  // expert-parallel: the step agreement protocol
  void FailAll(const std::string& why);
  void Step();
  void PublishLoad();  // engine thread: what Load() reports
  void Finish(Request* r, Finish how, std::string error = "", bool unavailable = false);

  Qwen3NextModel model_;
  EngineOptions options_;
  int64_t max_context_;
  Scheduler scheduler_;                            // engine thread only
  std::vector<kernels::SamplingRow> sample_rows_;  // engine thread: a step's row settings
  std::vector<int32_t> sampled_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Request>> incoming_;  // guarded by mu_
  std::vector<std::string> aborts_;                 // guarded by mu_
  std::vector<std::string> live_ids_;               // guarded by mu_: submitted, not finished
  // What Load() reports: written by the engine thread, read by anyone without a lock.
  struct PublishedLoad {
    std::atomic<int64_t> running{0}, waiting{0}, free_blocks{0}, free_slots{0};
    std::atomic<int64_t> steps{0}, preemptions{0};
    std::atomic<int64_t> prefix_queries{0}, prefix_hits{0}, prefix_query_tokens{0},
        prefix_hit_tokens{0}, snapshots_used{0}, snapshot_evictions{0}, block_evictions{0},
        cached_blocks{0};
  };
  PublishedLoad published_;
  bool stop_ = false;
  std::string broken_;  // guarded by mu_: why the group failed (then every Submit is refused)
  bool grouped_ = false;
  std::thread thread_;
};

}  // namespace nextserve::worker
