#include "worker/scheduler.h"

#include <algorithm>

namespace nextserve::worker {

std::unique_ptr<Request> Scheduler::Remove(const std::string& id, bool finished) {
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if ((*it)->id == id) {
      std::unique_ptr<Request> r = std::move(*it);
      running_.erase(it);
      // The next turn of a conversation starts where this one ended (all but the last sampled
      // token, which was never fed).
      if (finished && r->state && !limits_.snapshot_aligned_only) r->state->Snapshot(r->tokens);
      r->state.reset();
      return r;
    }
  }
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if ((*it)->id == id) {
      std::unique_ptr<Request> r = std::move(*it);
      waiting_.erase(it);
      return r;
    }
  }
  return nullptr;
}

void Scheduler::Preempt(std::list<std::unique_ptr<Request>>::iterator it) {
  std::unique_ptr<Request> r = std::move(*it);
  running_.erase(it);
  // Recomputation resumes from here.
  if (r->state && !limits_.snapshot_aligned_only) r->state->Snapshot(r->tokens);
  r->state.reset();  // blocks and slot back to the pool (full blocks stay cached)
  r->computed = 0;   // prompt + generated tokens are recomputed on readmission
  waiting_.push_front(std::move(r));
  ++preemptions_;
}

int64_t Scheduler::ChunkLength(const Request& r, int64_t budget, const CachePool& pool) const {
  const int64_t remaining = static_cast<int64_t>(r.tokens.size()) - r.computed;
  int64_t n = std::min(remaining, budget);
  const int64_t every = limits_.snapshot_every;
  if (pool.prefix_cache() && every > 0 &&
      (r.computed < r.prompt_len || limits_.snapshot_aligned_only)) {
    const int64_t next = (r.computed / every + 1) * every;
    const int64_t end =
        limits_.snapshot_aligned_only ? static_cast<int64_t>(r.tokens.size()) : r.prompt_len;
    if (next < end) n = std::min(n, next - r.computed);
  }
  if (r.divergence > r.computed) n = std::min(n, r.divergence - r.computed);
  return n;
}

std::vector<ScheduledWork> Scheduler::Schedule(CachePool& pool,
                                               std::vector<std::unique_ptr<Request>>* unservable) {
  std::vector<ScheduledWork> work;
  int64_t budget = limits_.max_batch_tokens;
  // Decodes first (one token each), then prefill chunks, each group oldest first.
  for (int pass = 0; pass < 2 && budget > 0; ++pass) {
    for (auto it = running_.begin(); it != running_.end() && budget > 0;) {
      Request& r = **it;
      const int64_t remaining = static_cast<int64_t>(r.tokens.size()) - r.computed;
      const bool decode = remaining == 1;
      if (remaining <= 0 || decode != (pass == 0)) {
        ++it;
        continue;
      }
      const int64_t n = ChunkLength(r, budget, pool);
      // Make room by preempting the newest running requests that are not yet in this step.
      bool room = true;
      while (r.state->BlocksNeeded(n) > pool.free_blocks()) {
        auto victim = std::prev(running_.end());
        const bool scheduled = std::any_of(work.begin(), work.end(), [&](const ScheduledWork& w) {
          return w.request == victim->get();
        });
        if (victim == it || scheduled) {
          room = false;
          break;
        }
        Preempt(victim);
      }
      if (!room) {
        if (work.empty() && running_.size() == 1) {
          // Alone and still too big: it can never run on this rank.
          unservable->push_back(std::move(*it));
          it = running_.erase(it);
          continue;
        }
        ++it;
        continue;
      }
      (void)r.state->Reserve(n);  // cannot fail: checked above
      work.push_back({&r, r.computed, n, r.computed + n == static_cast<int64_t>(r.tokens.size())});
      budget -= n;
      ++it;
    }
  }
  // Admit waiting requests while there is budget, a slot and blocks for their first chunk.
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < limits_.max_running) {
    Request& r = *waiting_.front();
    auto state = new_state_();
    // Cached tokens are free compute: only what follows them costs budget.
    int64_t cached_kv = 0;
    r.computed = state->AttachPrefix(r.tokens, &cached_kv);
    r.divergence =
        cached_kv > r.computed && !limits_.snapshot_aligned_only && cached_kv < r.prompt_len
            ? cached_kv
            : 0;
    const int64_t n = ChunkLength(r, budget, pool);
    if (state->BlocksNeeded(n) > pool.free_blocks() ||
        (state->NeedsSlot() && pool.free_slots() < 1)) {
      state.reset();  // a shared prefix goes back to the cache
      r.computed = 0;
      if (running_.empty() && work.empty()) {  // nothing will ever free memory for it
        unservable->push_back(std::move(waiting_.front()));
        waiting_.pop_front();
        continue;
      }
      break;
    }
    (void)state->Reserve(n);
    if (pool.prefix_cache()) pool.CountQuery(static_cast<int64_t>(r.tokens.size()), r.computed);
    r.state = std::move(state);
    work.push_back({&r, r.computed, n, r.computed + n == static_cast<int64_t>(r.tokens.size())});
    budget -= n;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  return work;
}

void Scheduler::Commit(const std::vector<ScheduledWork>& work) {
  for (const ScheduledWork& w : work) {
    Request& r = *w.request;
    r.computed += w.count;
    if (!r.state->pool()->prefix_cache()) continue;
    const int64_t every = limits_.snapshot_every;
    // Snapshots at the end of the prompt and at the snapshot points inside it.
    const bool point = every > 0 && r.computed % every == 0;
    if (limits_.snapshot_aligned_only ? point
                                      : r.computed == r.prompt_len || r.computed == r.divergence ||
                                            (r.computed < r.prompt_len && point)) {
      r.state->Snapshot(r.tokens);
    } else {
      r.state->Publish(r.tokens);
    }
  }
}

}  // namespace nextserve::worker
