// The series nextserve exports (docs/metrics.md), bound once to a Registry so that the hot path
// only adds and observes. RouterMetrics: one per router; RankMetrics: one per rank.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "metrics/metrics.h"

namespace nextserve::metrics {

// Per request, as the client sees it (vLLM's request-level series, `nextserve_` prefix).
class RouterMetrics {
 public:
  RouterMetrics(Registry& registry, const std::string& model_name);

  Histogram& time_to_first_token;  // arrival -> first token, seconds
  Histogram& inter_token_latency;  // between consecutive tokens of one request
  Histogram& e2e_latency;          // arrival -> last message
  Histogram& queue_time;           // arrival -> first scheduled step (router + rank queues)
  Counter& prompt_tokens;
  Counter& generation_tokens;
  Gauge& queue_depth;  // requests waiting in the router for a rank
  Gauge& healthy_ranks;
  Counter& rejected_queue_full;  // RESOURCE_EXHAUSTED at admission
  Counter& rejected_no_rank;     // UNAVAILABLE at admission

  // finish_reason "stop" | "length".
  void Finished(bool by_length) { (by_length ? finished_length_ : finished_stop_).Add(); }
  // A request that ended with a non-OK gRPC status (code 1..16).
  void Failed(int grpc_code);

 private:
  Counter& finished_stop_;
  Counter& finished_length_;
  std::array<Counter*, 17> errors_{};
};

// A rank's engine: scheduler state, cache use, and the expert-parallel step.
class RankMetrics {
 public:
  struct Options {
    std::string model_name;
    int rank = 0;
    int64_t layers = 0;               // all layers of the model
    std::vector<int64_t> moe_layers;  // those with routed experts (label `layer`)
    int64_t experts = 0;              // routed experts per layer
    // Off: tokens per (layer, rank) only. On: also one series per (layer, expert) held here,
    // which is layers x experts / ranks series per rank (24,576 / ranks for 48 x 512).
    bool per_expert = false;
  };
  RankMetrics(Registry& registry, const Options& options);

  Gauge& requests_running;
  Gauge& requests_waiting;
  Gauge& kv_cache_usage;    // used / total KV blocks, 0..1
  Gauge& state_slot_usage;  // used / total DeltaNet state slots, 0..1
  // Prefix cache (vLLM's names; in tokens, as vLLM counts them).
  Counter& prefix_cache_queries;  // prompt tokens looked up at admission
  Counter& prefix_cache_hits;     // of those, tokens reused from the cache
  Gauge& prefix_snapshot_usage;   // state snapshots held / budget, 0..1
  Counter& prefix_snapshot_evictions;
  Counter& prefix_block_evictions;  // cached KV blocks evicted for new ones
  Counter& preemptions;
  Histogram& step_duration;
  Counter& step_compute_seconds;     // step time outside all-to-all
  Counter& step_all_to_all_seconds;  // counts exchange, dispatch and combine
  Counter& step_sync_wait_seconds;   // the step agreement: waiting for the slowest rank
  Counter& all_to_all_bytes;         // payload bytes this rank sent

  // One engine step: its wall time and parts, and the cumulative tokens per (layer, expert)
  // of the model ([layers * experts], only this rank's experts non-zero).
  void RecordStep(double step_s, double all_to_all_s, int64_t all_to_all_bytes_sent,
                  const std::vector<int64_t>& expert_token_counts);
  // Copies the latest cumulative preemption count into the counter.
  void SetPreemptionsTotal(int64_t total);
  // The same for the prefix cache's cumulative counts.
  void SetPrefixCacheTotals(int64_t query_tokens, int64_t hit_tokens, int64_t snapshot_evictions,
                            int64_t block_evictions);

 private:
  Options options_;
  Registry* per_expert_registry_;        // where lazily made series go
  std::vector<Counter*> layer_tokens_;   // [layers]
  std::vector<Counter*> expert_tokens_;  // [layers * experts], null where not held / not opted in
  std::vector<int64_t> last_counts_;
  int64_t last_preemptions_ = 0;
  std::array<int64_t, 4> last_prefix_{};
};

}  // namespace nextserve::metrics
