// One request on a rank: its tokens, sampler, cache and the channel its results go out on.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "model/cache_pool.h"
#include "sampling/sampler.h"

namespace nextserve::worker {

enum class Finish { kNone, kStopToken, kLength, kAborted, kError };

// What the engine hands back for a request after a step: new tokens, or the end.
struct RankOutput {
  std::vector<int32_t> tokens;
  std::vector<sampling::SampleResult> samples;  // with logprobs when the request asked
  Finish finish = Finish::kNone;
  std::string error;         // kError: what went wrong
  bool unavailable = false;  // kError because the rank or its group cannot serve (retry elsewhere)
  double queue_time_s = -1;  // set once: arrival to first scheduled step
};

// Engine thread -> stream thread. The stream side waits with a timeout so that it can notice a
// cancelled client.
class OutputChannel {
 public:
  void Push(RankOutput out) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(out));
    }
    cv_.notify_one();
  }
  // False on timeout.
  bool Pop(RankOutput* out, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !queue_.empty(); })) return false;
    *out = std::move(queue_.front());
    queue_.pop_front();
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RankOutput> queue_;
};

struct Request {
  std::string id;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int64_t prompt_len = 0;
  int64_t max_tokens = 0;
  sampling::Sampler sampler;
  bool want_logprobs = false;
  std::shared_ptr<OutputChannel> out;
  std::chrono::steady_clock::time_point arrival;
  bool scheduled_once = false;

  // Cache: null while waiting. `computed` tokens of `tokens` are in it.
  std::unique_ptr<SequenceState> state;
  int64_t computed = 0;
  // Prefix cache: where the prompt left the cached KV (past its snapshot), snapshotted there so
  // that the next prompt sharing that prefix resumes from it (0: none).
  int64_t divergence = 0;

  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
};

}  // namespace nextserve::worker
