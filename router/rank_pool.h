// The ranks behind the router: one channel each, a load report polled every poll_interval, the
// health of each rank (healthy, suspect, down), the requests in flight on each, and the bounded
// FIFO admission queue in front of them.
//
// Health works on evidence. A rank is down (its streams are ended, its epoch changes) when its
// connection breaks (a stream or a probe fails with anything but a deadline), or when it has missed
// `fail_after_missed_probes` probes in a row over at least `fail_after`. One slow answer only makes
// it suspect: it gets no new work but keeps its streams, and rejoins when a probe answers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nextserve/internal/v1/rank.grpc.pb.h"

namespace nextserve::router {

struct RankPoolOptions {
  absl::Duration poll_interval = absl::Milliseconds(150);
  // A probe unanswered this long is a miss: the rank is suspect (no new work) until one answers.
  absl::Duration probe_timeout = absl::Milliseconds(1000);
  // A suspect rank is down (its streams end UNAVAILABLE) after this many misses in a row, and no
  // answer for at least `fail_after`: long enough to ride out a slow step on a loaded machine.
  int fail_after_missed_probes = 3;
  absl::Duration fail_after = absl::Seconds(5);
  // Requests waiting in the router for a rank; one more is RESOURCE_EXHAUSTED.
  int max_queue = 256;
  // Requests sent to a rank beyond its state slots (they wait in the rank's own queue);
  // -1: as many as it has state slots.
  int rank_queue_depth = -1;
  // Cache-aware routing: a request with a prefix affinity (a hash of its first prompt tokens) goes
  // to the rank that hash names, where its prefix is most likely cached, unless that rank's load
  // exceeds the least loaded rank's by more than this (then: the least loaded).
  int64_t affinity_max_extra_load = 2;
  // How the router connects to ranks (TLS for the internal port); null: insecure.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

class RankPool;

// A rank chosen for one request; releases its in-flight count when destroyed.
class RankLease {
 public:
  RankLease() = default;
  RankLease(RankPool* pool, int rank, uint64_t epoch) : pool_(pool), rank_(rank), epoch_(epoch) {}
  RankLease(RankLease&& o) noexcept { *this = std::move(o); }
  RankLease& operator=(RankLease&& o) noexcept;
  ~RankLease();

  int rank() const { return rank_; }
  // Changes when the rank goes down: a request dispatched in another epoch is lost.
  uint64_t epoch() const { return epoch_; }

 private:
  RankPool* pool_ = nullptr;
  int rank_ = -1;
  uint64_t epoch_ = 0;
};

class RankPool {
 public:
  enum class Health { kDown, kSuspect, kHealthy };

  RankPool(std::vector<std::string> addresses, RankPoolOptions options);
  ~RankPool();  // stops polling, waits for outstanding probes
  RankPool(const RankPool&) = delete;
  RankPool& operator=(const RankPool&) = delete;

  // Called (from gRPC's callback threads) whenever the number of ranks that are not down changes.
  // Once SetHealthCallback(nullptr) returns, the old callback is not running and will not run
  // again.
  void SetHealthCallback(std::function<void(int healthy)> callback);
  void Start();

  // Waits in FIFO order for a healthy rank with room, preferring the least loaded. Only the queue
  // head is woken, and only when room frees, a load report arrives or health changes. Errors:
  // ResourceExhausted (queue full), Unavailable (every rank down), DeadlineExceeded, Cancelled
  // (`cancelled` is checked when woken, by the poller every ~50 ms, and when the queue is full).
  // `avoid` (a rank that just failed) is used only if no other rank is healthy. `affinity` (0:
  // none): see RankPoolOptions::affinity_max_extra_load.
  absl::StatusOr<RankLease> Acquire(absl::Time deadline, const std::function<bool()>& cancelled,
                                    int avoid = -1, uint64_t affinity = 0);

  // A stream to this rank broke: evidence that it is down, acted on now.
  void ReportBroken(int rank, const std::string& why);

  internal::v1::Rank::Stub* stub(int rank) const { return ranks_[rank]->stub.get(); }
  const std::string& address(int rank) const { return ranks_[rank]->address; }
  int size() const { return static_cast<int>(ranks_.size()); }
  uint64_t epoch(int rank) const { return ranks_[rank]->epoch.load(); }
  Health health(int rank) const;
  // Ranks that are not down (healthy or suspect).
  int healthy_count() const;
  int queued() const;
  // The smallest max_context a rank that is not down reports (0 when none reports one).
  int64_t max_context() const;

 private:
  friend class RankLease;
  struct Rank {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<internal::v1::Rank::Stub> stub;
    Health health = Health::kDown;
    std::atomic<uint64_t> epoch{0};
    std::string last_error = "not probed yet";
    internal::v1::LoadReport load;
    int in_flight = 0;
    // Requests this router sent, ever, and as of the probe whose report `load` is: the difference
    // is what the report cannot include yet.
    uint64_t dispatched = 0;
    uint64_t dispatched_at_report = 0;
    int missed_probes = 0;
    absl::Time last_answer = absl::InfinitePast();
    bool probing = false;
  };
  struct Waiter {
    explicit Waiter(const std::function<bool()>* cancelled) : cancelled(cancelled) {}
    std::condition_variable cv;  // signalled when it is the head and room may have freed
    const std::function<bool()>* const cancelled;
  };

  void PollLoop();
  void Probe(int rank, uint64_t dispatched);
  void OnProbe(int rank, uint64_t dispatched, const grpc::Status& status,
               const internal::v1::LoadReport& load);
  void MarkDownLocked(int rank, const std::string& why);
  void NotifyHealth();
  void Release(int rank);
  RankLease DispatchLocked(int rank);
  int PickLocked(int avoid, uint64_t affinity) const;  // -1: none has room
  int CapacityLocked(const Rank& r) const;
  int64_t LoadLocked(const Rank& r) const;
  void WakeHeadLocked();
  void WakeAllLocked();
  void SweepCancelledLocked();  // wakes waiters whose client has gone
  std::string DescribeLocked() const;

  const RankPoolOptions options_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  mutable std::mutex mu_;
  std::condition_variable poller_cv_;  // stopping, or the last outstanding probe ended
  std::deque<Waiter*> queue_;          // waiting requests, head first
  int next_pick_ = 0;                  // round-robin start among equally loaded ranks
  int healthy_ = 0;                    // ranks not down
  int probes_outstanding_ = 0;
  bool stopping_ = false;
  std::mutex health_mu_;  // guards on_health_ and serialises its calls
  std::function<void(int)> on_health_;
  std::thread poller_;
};

}  // namespace nextserve::router
