#include "router/rank_pool.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace nextserve::router {
namespace {

// How often the poller looks for queued requests whose client has gone. Only a cancelled
// request's own reply waits on this: it never holds up the requests behind it (the head is woken
// by room, and a woken head checks its client first).
constexpr absl::Duration kCancelSweep = absl::Milliseconds(50);

std::shared_ptr<grpc::Channel> RankChannel(const std::string& address,
                                           std::shared_ptr<grpc::ChannelCredentials> credentials) {
  grpc::ChannelArguments args;
  // Re-probe a rank that went away within about a second of it coming back.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // One connection per rank even when several pools in a process talk to it (tests, bench).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(
      address, credentials ? std::move(credentials) : grpc::InsecureChannelCredentials(), args);
}

}  // namespace

RankLease& RankLease::operator=(RankLease&& o) noexcept {
  if (this != &o) {
    if (pool_ != nullptr) pool_->Release(rank_);
    pool_ = std::exchange(o.pool_, nullptr);
    rank_ = std::exchange(o.rank_, -1);
    epoch_ = o.epoch_;
  }
  return *this;
}

RankLease::~RankLease() {
  if (pool_ != nullptr) pool_->Release(rank_);
}

RankPool::RankPool(std::vector<std::string> addresses, RankPoolOptions options)
    : options_(options) {
  for (std::string& address : addresses) {
    auto rank = std::make_unique<Rank>();
    rank->address = std::move(address);
    rank->channel = RankChannel(rank->address, options_.credentials);
    rank->stub = internal::v1::Rank::NewStub(rank->channel);
    ranks_.push_back(std::move(rank));
  }
}

RankPool::~RankPool() {
  std::unique_lock lock(mu_);
  stopping_ = true;
  poller_cv_.notify_all();
  WakeAllLocked();
  lock.unlock();
  if (poller_.joinable()) poller_.join();
  lock.lock();
  // Probes end by their deadline at the latest.
  poller_cv_.wait(lock, [this] { return probes_outstanding_ == 0; });
}

void RankPool::SetHealthCallback(std::function<void(int)> callback) {
  std::lock_guard lock(health_mu_);
  on_health_ = std::move(callback);
}

void RankPool::NotifyHealth() {
  // Serialised, and with the count as it is now: deliveries cannot arrive stale or out of order.
  std::lock_guard lock(health_mu_);  // SetHealthCallback waits for a call in progress
  if (on_health_) on_health_(healthy_count());
}

void RankPool::Start() {
  poller_ = std::thread([this] { PollLoop(); });
}

void RankPool::PollLoop() {
  std::unique_lock lock(mu_);
  absl::Time next_poll = absl::Now();
  while (!stopping_) {
    if (absl::Now() >= next_poll) {
      std::vector<std::pair<int, uint64_t>> due;  // rank, its dispatch count as the probe leaves
      for (int r = 0; r < size(); ++r) {
        if (ranks_[r]->probing) continue;  // still within its deadline
        ranks_[r]->probing = true;
        ++probes_outstanding_;
        due.emplace_back(r, ranks_[r]->dispatched);
      }
      lock.unlock();  // a probe's callback may run on this thread
      for (auto [r, dispatched] : due) Probe(r, dispatched);
      lock.lock();
      next_poll = absl::Now() + options_.poll_interval;
    }
    SweepCancelledLocked();
    const absl::Time wake =
        queue_.empty() ? next_poll : std::min(next_poll, absl::Now() + kCancelSweep);
    poller_cv_.wait_until(lock, absl::ToChronoTime(wake));  // or a first waiter, or stopping
  }
}

void RankPool::Probe(int r, uint64_t dispatched) {
  struct Call {
    grpc::ClientContext ctx;
    internal::v1::LoadRequest request;
    internal::v1::LoadReport report;
  };
  auto* call = new Call;
  call->ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.probe_timeout));
  ranks_[r]->stub->async()->GetLoad(&call->ctx, &call->request, &call->report,
                                    [this, r, dispatched, call](grpc::Status status) {
                                      const internal::v1::LoadReport report = call->report;
                                      delete call;
                                      OnProbe(r, dispatched, status, report);
                                    });
}

void RankPool::OnProbe(int r, uint64_t dispatched, const grpc::Status& status,
                       const internal::v1::LoadReport& load) {
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    Rank& rank = *ranks_[r];
    rank.probing = false;
    --probes_outstanding_;
    const int before = healthy_;
    const absl::Time now = absl::Now();
    if (stopping_) {
      // The destructor waits for the last probe.
    } else if (status.ok() && !load.broken().empty()) {
      // It answers, but its group is gone: as good as dead until the group restarts.
      MarkDownLocked(r, absl::StrCat("its group is broken: ", load.broken()));
    } else if (status.ok()) {
      rank.load = load;
      rank.dispatched_at_report = dispatched;
      rank.missed_probes = 0;
      rank.last_answer = now;
      if (rank.health != Health::kHealthy) {
        if (rank.health == Health::kDown) ++healthy_;
        std::fprintf(stderr, "nextserve-router: rank %s is %s (%lld state slots, %lld KV blocks)\n",
                     rank.address.c_str(),
                     rank.health == Health::kDown ? "healthy" : "answering again",
                     static_cast<long long>(load.total_state_slots()),
                     static_cast<long long>(load.total_kv_blocks()));
        rank.health = Health::kHealthy;
      }
    } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
               rank.health != Health::kDown) {
      // Slow is not dead: no new work until it answers, down only after a long silence.
      ++rank.missed_probes;
      const absl::Duration silent = now - rank.last_answer;
      rank.last_error =
          absl::StrCat("no answer to ", rank.missed_probes, " load probes in ",
                       absl::FormatDuration(absl::Trunc(silent, absl::Milliseconds(1))));
      if (rank.missed_probes >= options_.fail_after_missed_probes &&
          silent >= options_.fail_after) {
        MarkDownLocked(r, rank.last_error);
      } else if (rank.health == Health::kHealthy) {
        rank.health = Health::kSuspect;
        std::fprintf(stderr, "nextserve-router: rank %s is suspect (no new work): %s\n",
                     rank.address.c_str(), rank.last_error.c_str());
      }
    } else {
      // Refused, reset or otherwise broken: the connection itself says the rank is gone.
      MarkDownLocked(r, absl::StrCat("load probe failed: ", grpc::StatusCode(status.error_code()),
                                     " ", status.error_message()));
    }
    changed = healthy_ != before;
    if (stopping_ && probes_outstanding_ == 0) poller_cv_.notify_all();
    WakeHeadLocked();  // room or health may have changed
  }
  if (changed) NotifyHealth();
}

void RankPool::ReportBroken(int r, const std::string& why) {
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    const int before = healthy_;
    MarkDownLocked(r, why);
    changed = healthy_ != before;
  }
  if (changed) NotifyHealth();
}

void RankPool::MarkDownLocked(int r, const std::string& why) {
  Rank& rank = *ranks_[r];
  rank.last_error = why;
  if (rank.health == Health::kDown) return;
  rank.health = Health::kDown;
  --healthy_;
  rank.epoch.fetch_add(1);  // requests dispatched before this are lost
  std::fprintf(stderr, "nextserve-router: rank %s is down: %s\n", rank.address.c_str(),
               why.c_str());
  if (healthy_ == 0) {
    WakeAllLocked();  // every waiter fails now
  } else {
    WakeHeadLocked();  // the head may have been waiting for this rank only
  }
}

void RankPool::Release(int r) {
  std::lock_guard lock(mu_);
  --ranks_[r]->in_flight;
  WakeHeadLocked();
}

void RankPool::WakeHeadLocked() {
  if (!queue_.empty()) queue_.front()->cv.notify_one();
}

void RankPool::WakeAllLocked() {
  for (Waiter* w : queue_) w->cv.notify_one();
}

void RankPool::SweepCancelledLocked() {
  for (Waiter* w : queue_) {
    if (*w->cancelled && (*w->cancelled)()) w->cv.notify_one();
  }
}

int RankPool::CapacityLocked(const Rank& r) const {
  const int slots = static_cast<int>(std::max<int64_t>(r.load.total_state_slots(), 1));
  const int depth = options_.rank_queue_depth < 0 ? slots : options_.rank_queue_depth;
  return slots + depth;
}

int64_t RankPool::LoadLocked(const Rank& r) const {
  // The report counts other routers' requests too, but not ours sent after its probe left.
  const int64_t reported = r.load.running() + r.load.waiting() +
                           static_cast<int64_t>(r.dispatched - r.dispatched_at_report);
  return std::max<int64_t>(r.in_flight, reported);
}

int RankPool::PickLocked(int avoid, uint64_t affinity) const {
  int best = -1;
  int64_t best_load = 0;
  double best_free = 0;
  auto eligible = [&](int r) {
    const Rank& rank = *ranks_[r];
    return rank.health == Health::kHealthy && !rank.load.draining() &&
           rank.in_flight < CapacityLocked(rank);
  };
  for (int pass = 0; pass < 2 && best < 0; ++pass) {
    for (int k = 0; k < size(); ++k) {
      const int r = (next_pick_ + k) % size();
      const Rank& rank = *ranks_[r];
      if (!eligible(r)) continue;
      if (pass == 0 && r == avoid) continue;
      const int64_t load = LoadLocked(rank);
      const double free = rank.load.total_kv_blocks() > 0 ? double(rank.load.free_kv_blocks()) /
                                                                double(rank.load.total_kv_blocks())
                                                          : 0.0;
      if (best < 0 || load < best_load || (load == best_load && free > best_free)) {
        best = r;
        best_load = load;
        best_free = free;
      }
    }
  }
  if (affinity != 0 && best >= 0) {
    const int preferred = static_cast<int>(affinity % static_cast<uint64_t>(size()));
    if (preferred != avoid && eligible(preferred) &&
        LoadLocked(*ranks_[preferred]) <= best_load + options_.affinity_max_extra_load) {
      return preferred;
    }
  }
  return best;
}

RankLease RankPool::DispatchLocked(int r) {
  Rank& rank = *ranks_[r];
  ++rank.in_flight;
  ++rank.dispatched;
  next_pick_ = (r + 1) % size();
  return RankLease(this, r, rank.epoch.load());
}

std::string RankPool::DescribeLocked() const {
  std::vector<std::string> parts;
  for (const auto& r : ranks_) parts.push_back(absl::StrCat(r->address, ": ", r->last_error));
  return absl::StrJoin(parts, "; ");
}

absl::StatusOr<RankLease> RankPool::Acquire(absl::Time deadline,
                                            const std::function<bool()>& cancelled, int avoid,
                                            uint64_t affinity) {
  std::unique_lock lock(mu_);
  if (healthy_ == 0)
    return absl::UnavailableError(absl::StrCat("no healthy rank (", DescribeLocked(), ")"));
  if (queue_.empty()) {
    if (int r = PickLocked(avoid, affinity); r >= 0) return DispatchLocked(r);
  }
  if (static_cast<int>(queue_.size()) >= options_.max_queue) {
    // Waiters whose client left may not have noticed yet; they must not count against the limit.
    SweepCancelledLocked();
    const int live = static_cast<int>(std::count_if(queue_.begin(), queue_.end(), [](Waiter* w) {
      return !(*w->cancelled && (*w->cancelled)());
    }));
    if (live >= options_.max_queue) {
      return absl::ResourceExhaustedError(
          absl::StrCat("admission queue is full (", live, " requests waiting for a rank)"));
    }
  }
  Waiter self(&cancelled);
  if (queue_.empty()) poller_cv_.notify_one();  // start sweeping for cancelled waiters
  queue_.push_back(&self);
  auto leave = [&](absl::Status status) {
    const bool was_head = queue_.front() == &self;
    queue_.erase(std::find(queue_.begin(), queue_.end(), &self));
    if (was_head) WakeHeadLocked();  // the next one may fit where this one was waiting
    return status;
  };
  for (;;) {
    if (stopping_) return leave(absl::UnavailableError("the router is shutting down"));
    if (cancelled && cancelled()) return leave(absl::CancelledError("cancelled while queued"));
    if (absl::Now() >= deadline)
      return leave(absl::DeadlineExceededError("deadline passed while queued for a rank"));
    if (healthy_ == 0)
      return leave(
          absl::UnavailableError(absl::StrCat("no healthy rank (", DescribeLocked(), ")")));
    if (queue_.front() == &self) {
      if (int r = PickLocked(avoid, affinity); r >= 0) {
        queue_.pop_front();
        WakeHeadLocked();  // there may be room for the next one too
        return DispatchLocked(r);
      }
    }
    if (deadline == absl::InfiniteFuture()) {
      self.cv.wait(lock);
    } else {
      self.cv.wait_until(lock, absl::ToChronoTime(deadline));
    }
  }
}

RankPool::Health RankPool::health(int rank) const {
  std::lock_guard lock(mu_);
  return ranks_[rank]->health;
}

int RankPool::healthy_count() const {
  std::lock_guard lock(mu_);
  return healthy_;
}

int RankPool::queued() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(queue_.size());
}

int64_t RankPool::max_context() const {
  std::lock_guard lock(mu_);
  int64_t out = 0;
  for (const auto& r : ranks_) {
    if (r->health != Health::kDown && r->load.max_context() > 0) {
      out = out == 0 ? r->load.max_context() : std::min(out, r->load.max_context());
    }
  }
  return out;
}

}  // namespace nextserve::router
