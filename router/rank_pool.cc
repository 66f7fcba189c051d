#include "router/rank_pool.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace nextserve::router {
namespace {

// How often a waiting request re-checks its deadline and its client.
constexpr absl::Duration kWaitTick = absl::Milliseconds(5);

std::shared_ptr<grpc::Channel> RankChannel(const std::string& address) {
  grpc::ChannelArguments args;
  // Re-probe a rank that went away within about a second of it coming back.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // One connection per rank even when several pools in a process talk to it (tests, bench).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
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
    rank->channel = RankChannel(rank->address);
    rank->stub = internal::v1::Rank::NewStub(rank->channel);
    ranks_.push_back(std::move(rank));
  }
}

RankPool::~RankPool() {
  std::unique_lock lock(mu_);
  stopping_ = true;
  cv_.notify_all();
  lock.unlock();
  if (poller_.joinable()) poller_.join();
  lock.lock();
  // Probes end by their deadline at the latest.
  cv_.wait(lock, [this] { return probes_outstanding_ == 0; });
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
  while (!stopping_) {
    std::vector<int> due;
    for (int r = 0; r < size(); ++r) {
      if (ranks_[r]->probing) continue;  // still within its deadline
      ranks_[r]->probing = true;
      ++probes_outstanding_;
      due.push_back(r);
    }
    lock.unlock();  // a probe's callback may run on this thread
    for (int r : due) Probe(r);
    lock.lock();
    cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.poll_interval),
                 [this] { return stopping_; });
  }
}

void RankPool::Probe(int r) {
  struct Call {
    grpc::ClientContext ctx;
    internal::v1::LoadRequest request;
    internal::v1::LoadReport report;
  };
  auto* call = new Call;
  call->ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.probe_timeout));
  ranks_[r]->stub->async()->GetLoad(&call->ctx, &call->request, &call->report,
                                    [this, r, call](grpc::Status status) {
                                      const internal::v1::LoadReport report = call->report;
                                      delete call;
                                      OnProbe(r, status, report);
                                    });
}

void RankPool::OnProbe(int r, const grpc::Status& status, const internal::v1::LoadReport& load) {
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    Rank& rank = *ranks_[r];
    rank.probing = false;
    --probes_outstanding_;
    const int before = healthy_;
    if (status.ok()) {
      rank.load = load;
      if (!rank.healthy) {
        rank.healthy = true;
        ++healthy_;
        std::fprintf(stderr,
                     "nextserve-router: rank %s is healthy (%lld state slots, %lld KV blocks)\n",
                     rank.address.c_str(), static_cast<long long>(load.total_state_slots()),
                     static_cast<long long>(load.total_kv_blocks()));
      }
    } else if (!stopping_) {
      MarkUnhealthyLocked(
          r, absl::StrCat("load probe failed: ", grpc::StatusCode(status.error_code()), " ",
                          status.error_message()));
    }
    changed = healthy_ != before;
    cv_.notify_all();
  }
  if (changed) NotifyHealth();
}

void RankPool::ReportBroken(int r, const std::string& why) {
  bool changed = false;
  {
    std::lock_guard lock(mu_);
    const int before = healthy_;
    MarkUnhealthyLocked(r, why);
    changed = healthy_ != before;
    cv_.notify_all();
  }
  if (changed) NotifyHealth();
}

void RankPool::MarkUnhealthyLocked(int r, const std::string& why) {
  Rank& rank = *ranks_[r];
  rank.last_error = why;
  if (!rank.healthy) return;
  rank.healthy = false;
  --healthy_;
  rank.epoch.fetch_add(1);  // requests dispatched before this are lost
  std::fprintf(stderr, "nextserve-router: rank %s is unhealthy: %s\n", rank.address.c_str(),
               why.c_str());
}

void RankPool::Release(int r) {
  std::lock_guard lock(mu_);
  --ranks_[r]->in_flight;
  cv_.notify_all();
}

int RankPool::CapacityLocked(const Rank& r) const {
  const int slots = static_cast<int>(std::max<int64_t>(r.load.total_state_slots(), 1));
  const int depth = options_.rank_queue_depth < 0 ? slots : options_.rank_queue_depth;
  return slots + depth;
}

int RankPool::PickLocked(int avoid) const {
  int best = -1;
  int64_t best_load = 0;
  double best_free = 0;
  for (int pass = 0; pass < 2 && best < 0; ++pass) {
    for (int k = 0; k < size(); ++k) {
      const int r = (next_pick_ + k) % size();
      const Rank& rank = *ranks_[r];
      if (!rank.healthy || rank.load.draining() || rank.in_flight >= CapacityLocked(rank)) continue;
      if (pass == 0 && r == avoid) continue;
      // The rank's own count includes other routers' requests; ours is more recent.
      const int64_t load =
          std::max<int64_t>(rank.in_flight, rank.load.running() + rank.load.waiting());
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
  return best;
}

std::string RankPool::DescribeLocked() const {
  std::vector<std::string> parts;
  for (const auto& r : ranks_) parts.push_back(absl::StrCat(r->address, ": ", r->last_error));
  return absl::StrJoin(parts, "; ");
}

absl::StatusOr<RankLease> RankPool::Acquire(absl::Time deadline,
                                            const std::function<bool()>& cancelled, int avoid) {
  std::unique_lock lock(mu_);
  if (healthy_ == 0)
    return absl::UnavailableError(absl::StrCat("no healthy rank (", DescribeLocked(), ")"));
  if (queue_.empty()) {
    if (int r = PickLocked(avoid); r >= 0) {
      ++ranks_[r]->in_flight;
      next_pick_ = (r + 1) % size();
      return RankLease(this, r, ranks_[r]->epoch.load());
    }
  }
  if (static_cast<int>(queue_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("admission queue is full (", queue_.size(), " requests waiting for a rank)"));
  }
  const uint64_t ticket = next_ticket_++;
  queue_.push_back(ticket);
  auto leave = [&](absl::Status status) {
    queue_.erase(std::find(queue_.begin(), queue_.end(), ticket));
    cv_.notify_all();
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
    if (queue_.front() == ticket) {
      if (int r = PickLocked(avoid); r >= 0) {
        queue_.pop_front();
        ++ranks_[r]->in_flight;
        next_pick_ = (r + 1) % size();
        cv_.notify_all();
        return RankLease(this, r, ranks_[r]->epoch.load());
      }
    }
    cv_.wait_for(lock, absl::ToChronoMilliseconds(std::min(
                           kWaitTick, std::max(deadline - absl::Now(), absl::ZeroDuration()))));
  }
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
    if (r->healthy && r->load.max_context() > 0) {
      out = out == 0 ? r->load.max_context() : std::min(out, r->load.max_context());
    }
  }
  return out;
}

}  // namespace nextserve::router
