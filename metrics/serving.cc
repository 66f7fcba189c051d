#include "metrics/serving.h"

#include "absl/strings/str_cat.h"

namespace nextserve::metrics {
namespace {

// Upper bounds in seconds. Latencies span a tiny CPU model (milliseconds) to a long generation on
// a big one (minutes); the request-level ones follow vLLM's, with finer steps at the low end.
const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                          0.25,  0.5,   0.75, 1,    2.5,  5,    7.5,  10,
                                          20,    40,    80,   160,  640,  2560};
const std::vector<double> kItlBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
                                         0.1,   0.15,   0.2,   0.3,  0.4,   0.5,  0.75,
                                         1,     2.5,    5,     7.5,  10,    20,   40};
const std::vector<double> kE2eBuckets = {0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1,    1.5,
                                         2,    2.5,  5,   10,  15,  20,  30,   40,
                                         50,   60,   120, 240, 480, 960, 1920, 7680};
const std::vector<double> kQueueBuckets = {0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25,   0.5,   1,     2.5,  5,     10,   20,
                                           40,     80,    160,   320,  640,   1280};
const std::vector<double> kStepBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5,     10};

constexpr const char* kCodeNames[17] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

}  // namespace

RouterMetrics::RouterMetrics(Registry& r, const std::string& model_name)
    : time_to_first_token(r.GetHistogram("nextserve_time_to_first_token_seconds",
                                         "Time from arrival at the router to the first token",
                                         {{"model_name", model_name}}, kTtftBuckets)),
      inter_token_latency(r.GetHistogram("nextserve_inter_token_latency_seconds",
                                         "Time between consecutive tokens of a request",
                                         {{"model_name", model_name}}, kItlBuckets)),
      e2e_latency(r.GetHistogram("nextserve_e2e_request_latency_seconds",
                                 "Time from arrival at the router to the end of the request",
                                 {{"model_name", model_name}}, kE2eBuckets)),
      queue_time(r.GetHistogram("nextserve_request_queue_time_seconds",
                                "Time from arrival to the first scheduled step (router and rank "
                                "queues)",
                                {{"model_name", model_name}}, kQueueBuckets)),
      prompt_tokens(r.GetCounter("nextserve_prompt_tokens_total",
                                 "Prompt tokens of requests sent to ranks",
                                 {{"model_name", model_name}})),
      generation_tokens(r.GetCounter("nextserve_generation_tokens_total",
                                     "Tokens generated and streamed to clients",
                                     {{"model_name", model_name}})),
      queue_depth(r.GetGauge("nextserve_router_queue_depth",
                             "Requests waiting in the router's admission queue for a rank",
                             {{"model_name", model_name}})),
      healthy_ranks(r.GetGauge("nextserve_router_healthy_ranks",
                               "Ranks that answered their last load probe",
                               {{"model_name", model_name}})),
      rejected_queue_full(r.GetCounter("nextserve_router_rejections_total",
                                       "Requests refused at admission, by reason",
                                       {{"model_name", model_name}, {"reason", "queue_full"}})),
      rejected_no_rank(r.GetCounter("nextserve_router_rejections_total",
                                    "Requests refused at admission, by reason",
                                    {{"model_name", model_name}, {"reason", "no_healthy_rank"}})),
      finished_stop_(r.GetCounter("nextserve_request_success_total",
                                  "Requests that finished, by finish reason",
                                  {{"model_name", model_name}, {"finish_reason", "stop"}})),
      finished_length_(r.GetCounter("nextserve_request_success_total",
                                    "Requests that finished, by finish reason",
                                    {{"model_name", model_name}, {"finish_reason", "length"}})) {
  // Every code exists from the start, so that rate() over a code that first fails works.
  for (int code = 1; code < 17; ++code) {
    errors_[code] = &r.GetCounter("nextserve_request_errors_total",
                                  "Requests that ended with an error, by gRPC status code",
                                  {{"model_name", model_name}, {"code", kCodeNames[code]}});
  }
}

void RouterMetrics::Failed(int grpc_code) {
  if (grpc_code < 1 || grpc_code > 16) grpc_code = 2;  // UNKNOWN
  errors_[grpc_code]->Add();
}

RankMetrics::RankMetrics(Registry& r, const Options& o)
    : requests_running(
          r.GetGauge("nextserve_num_requests_running", "Requests in the rank's running batch",
                     {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      requests_waiting(
          r.GetGauge("nextserve_num_requests_waiting", "Requests waiting in the rank's queue",
                     {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      kv_cache_usage(r.GetGauge("nextserve_kv_cache_usage_perc",
                                "Fraction of the rank's KV cache blocks in use (0-1)",
                                {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      state_slot_usage(
          r.GetGauge("nextserve_state_slot_usage_perc",
                     "Fraction of the rank's DeltaNet state slots in use (0-1)",
                     {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      prefix_cache_queries(
          r.GetCounter("nextserve_prefix_cache_queries_total",
                       "Prompt tokens looked up in the prefix cache at admission",
                       {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      prefix_cache_hits(r.GetCounter(
          "nextserve_prefix_cache_hits_total", "Prompt tokens reused from the prefix cache",
          {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      prefix_snapshot_usage(
          r.GetGauge("nextserve_prefix_cache_snapshot_usage_perc",
                     "Fraction of the DeltaNet state snapshot budget in use (0-1)",
                     {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      prefix_snapshot_evictions(
          r.GetCounter("nextserve_prefix_cache_snapshot_evictions_total",
                       "DeltaNet state snapshots evicted (least recently used) for new ones",
                       {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      prefix_block_evictions(
          r.GetCounter("nextserve_prefix_cache_block_evictions_total",
                       "Cached unreferenced KV blocks evicted (least recently used) for new ones",
                       {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      preemptions(r.GetCounter("nextserve_num_preemptions_total",
                               "Requests preempted (cache dropped, recomputed later)",
                               {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      step_duration(r.GetHistogram("nextserve_rank_step_duration_seconds",
                                   "Wall time of one engine step (schedule, forward, sample)",
                                   {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}},
                                   kStepBuckets)),
      step_compute_seconds(r.GetCounter(
          "nextserve_rank_step_phase_seconds_total",
          "Engine step time by phase: compute, all_to_all (MoE counts exchange, dispatch, "
          "combine), sync_wait (step agreement: waiting for the slowest rank)",
          {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}, {"phase", "compute"}})),
      step_all_to_all_seconds(r.GetCounter(
          "nextserve_rank_step_phase_seconds_total",
          "Engine step time by phase: compute, all_to_all (MoE counts exchange, dispatch, "
          "combine), sync_wait (step agreement: waiting for the slowest rank)",
          {{"model_name", o.model_name},
           {"rank", std::to_string(o.rank)},
           {"phase", "all_to_all"}})),
      step_sync_wait_seconds(r.GetCounter(
          "nextserve_rank_step_phase_seconds_total",
          "Engine step time by phase: compute, all_to_all (MoE counts exchange, dispatch, "
          "combine), sync_wait (step agreement: waiting for the slowest rank)",
          {{"model_name", o.model_name},
           {"rank", std::to_string(o.rank)},
           {"phase", "sync_wait"}})),
      all_to_all_bytes(
          r.GetCounter("nextserve_all_to_all_bytes_total",
                       "Payload bytes this rank sent in MoE all-to-all (dispatch and combine)",
                       {{"model_name", o.model_name}, {"rank", std::to_string(o.rank)}})),
      options_(o),
      per_expert_registry_(&r) {
  // Every MoE layer from the start, so that a rank whose experts get no tokens still counts in the
  // mean of the imbalance (max / mean over ranks); dense layers export none.
  layer_tokens_.assign(o.layers, nullptr);
  for (int64_t l : o.moe_layers) {
    if (l < 0 || l >= o.layers) continue;
    layer_tokens_[l] =
        &r.GetCounter("nextserve_expert_tokens_total",
                      "Token-to-expert assignments processed by this rank's experts, per MoE layer",
                      {{"model_name", o.model_name},
                       {"rank", std::to_string(o.rank)},
                       {"layer", std::to_string(l)}});
  }
  if (o.per_expert) expert_tokens_.assign(o.layers * o.experts, nullptr);
  last_counts_.assign(o.layers * o.experts, 0);
}

void RankMetrics::RecordStep(double step_s, double all_to_all_s, int64_t bytes_sent,
                             const std::vector<int64_t>& counts) {
  step_duration.Observe(step_s);
  step_all_to_all_seconds.Add(all_to_all_s);
  step_compute_seconds.Add(step_s > all_to_all_s ? step_s - all_to_all_s : 0.0);
  if (bytes_sent > 0) all_to_all_bytes.Add(static_cast<double>(bytes_sent));
  if (counts.size() != last_counts_.size()) return;  // not the model these metrics were made for
  const int64_t experts = options_.experts;
  for (int64_t l = 0; l < options_.layers; ++l) {
    int64_t layer_delta = 0;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t i = l * experts + e;
      const int64_t delta = counts[i] - last_counts_[i];
      if (delta == 0) continue;
      last_counts_[i] = counts[i];
      layer_delta += delta;
      if (options_.per_expert) {
        // Created on first use, so a rank exports only the experts it holds.
        if (expert_tokens_[i] == nullptr) {
          expert_tokens_[i] = &per_expert_registry_->GetCounter(
              "nextserve_expert_tokens_by_expert_total",
              "Tokens routed to one expert (opt-in: --metrics-per-expert)",
              {{"model_name", options_.model_name},
               {"rank", std::to_string(options_.rank)},
               {"layer", std::to_string(l)},
               {"expert", std::to_string(e)}});
        }
        expert_tokens_[i]->Add(static_cast<double>(delta));
      }
    }
    if (layer_delta > 0 && layer_tokens_[l] != nullptr)
      layer_tokens_[l]->Add(static_cast<double>(layer_delta));
  }
}

void RankMetrics::SetPreemptionsTotal(int64_t total) {
  if (total > last_preemptions_) preemptions.Add(static_cast<double>(total - last_preemptions_));
  last_preemptions_ = total;
}

void RankMetrics::SetPrefixCacheTotals(int64_t query_tokens, int64_t hit_tokens,
                                       int64_t snapshot_evictions, int64_t block_evictions) {
  const std::array<int64_t, 4> now = {query_tokens, hit_tokens, snapshot_evictions,
                                      block_evictions};
  const std::array<Counter*, 4> counters = {&prefix_cache_queries, &prefix_cache_hits,
                                            &prefix_snapshot_evictions, &prefix_block_evictions};
  for (size_t i = 0; i < now.size(); ++i) {
    if (now[i] > last_prefix_[i]) counters[i]->Add(static_cast<double>(now[i] - last_prefix_[i]));
    last_prefix_[i] = now[i];
  }
}

}  // namespace nextserve::metrics
