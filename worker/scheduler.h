// Who runs this step: continuous batching with chunked prefill under a token budget, admission by
// free KV blocks and state slots, preemption by recompute when decoding runs out of blocks.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "model/cache_pool.h"
#include "worker/request.h"

namespace nextserve::worker {

struct SchedulerLimits {
  int64_t max_batch_tokens = 512;  // tokens per step (decodes + prefill chunks)
  int64_t max_running = 64;        // sequences per step
  // With the pool's prefix cache: prompt chunks end at multiples of this many tokens inside a
  // prompt, and the DeltaNet state is snapshotted there (0: only at prompt and request ends).
  int64_t snapshot_every = 512;
  // Emulates block-aligned caching (vLLM's "align" mode, for benchmarks): states are saved only at
  // multiples of snapshot_every, prompt or output, never at prompt / response ends.
  bool snapshot_aligned_only = false;
};

// A slice of one request's tokens to run this step: tokens[begin, begin + count).
struct ScheduledWork {
  Request* request;
  int64_t begin;
  int64_t count;
  bool samples;  // the slice reaches the end of the request's tokens: sample the next one
};

class Scheduler {
 public:
  Scheduler(SchedulerLimits limits, std::function<std::unique_ptr<SequenceState>()> new_state)
      : limits_(limits), new_state_(std::move(new_state)) {}

  void Add(std::unique_ptr<Request> request) { waiting_.push_back(std::move(request)); }
  // Removes a request wherever it is and frees its cache; null if unknown. `finished`: it ended
  // normally, so (with the prefix cache) its state is snapshotted for a follow-up turn first.
  std::unique_ptr<Request> Remove(const std::string& id, bool finished = false);
  // Builds this step. With the prefix cache, an admitted request first reuses the longest cached
  // prefix (its tokens cost no budget). Running requests go first (decodes, then unfinished
  // prefills), oldest first; then waiting ones are admitted while the budget and memory allow. A
  // running request that cannot get a block preempts the newest running ones (their caches are
  // dropped; they wait at the front of the queue and recompute later). `unservable` receives
  // requests that can never fit.
  std::vector<ScheduledWork> Schedule(CachePool& pool,
                                      std::vector<std::unique_ptr<Request>>* unservable);
  // After the step: advance the scheduled requests' `computed`.
  void Commit(const std::vector<ScheduledWork>& work);

  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t preemptions() const { return preemptions_; }
  bool idle() const { return running_.empty() && waiting_.empty(); }

 private:
  void Preempt(std::list<std::unique_ptr<Request>>::iterator it);
  // Tokens of r to run next, at most `budget`: prompt chunks stop at snapshot points.
  int64_t ChunkLength(const Request& r, int64_t budget, const CachePool& pool) const;

  SchedulerLimits limits_;
  std::function<std::unique_ptr<SequenceState>()> new_state_;
  std::list<std::unique_ptr<Request>> running_;  // admission order
  std::deque<std::unique_ptr<Request>> waiting_;
  int64_t preemptions_ = 0;
};

}  // namespace nextserve::worker
