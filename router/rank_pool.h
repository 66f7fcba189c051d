// The ranks behind the router: one channel each, a load report polled every poll_interval, health
// (a rank that fails a probe or breaks a stream is unhealthy until a probe answers again), the
// requests in flight on each, and the bounded FIFO admission queue in front of them.
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
  // A probe unanswered this long marks the rank unhealthy (and ends its streams).
  absl::Duration probe_timeout = absl::Milliseconds(1000);
  // Requests waiting in the router for a rank; one more is RESOURCE_EXHAUSTED.
  int max_queue = 256;
  // Requests sent to a rank beyond its state slots (they wait in the rank's own queue);
  // -1: as many as it has state slots.
  int rank_queue_depth = -1;
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
  // Changes when the rank is marked unhealthy: a request dispatched in another epoch is lost.
  uint64_t epoch() const { return epoch_; }

 private:
  RankPool* pool_ = nullptr;
  int rank_ = -1;
  uint64_t epoch_ = 0;
};

class RankPool {
 public:
  RankPool(std::vector<std::string> addresses, RankPoolOptions options);
  ~RankPool();  // stops polling, waits for outstanding probes
  RankPool(const RankPool&) = delete;
  RankPool& operator=(const RankPool&) = delete;

  // Called (from gRPC's callback threads) whenever the number of healthy ranks changes. Once
  // SetHealthCallback(nullptr) returns, the old callback is not running and will not run again.
  void SetHealthCallback(std::function<void(int healthy)> callback);
  void Start();

  // Waits in FIFO order for a healthy rank with room, preferring the least loaded. Errors:
  // ResourceExhausted (queue full), Unavailable (no healthy rank), DeadlineExceeded, Cancelled
  // (`cancelled` is polled while waiting). `avoid` (a rank that just failed) is used only if no
  // other rank is healthy.
  absl::StatusOr<RankLease> Acquire(absl::Time deadline, const std::function<bool()>& cancelled,
                                    int avoid = -1);

  // A stream to this rank broke: mark it unhealthy now rather than at the next probe.
  void ReportBroken(int rank, const std::string& why);

  internal::v1::Rank::Stub* stub(int rank) const { return ranks_[rank]->stub.get(); }
  const std::string& address(int rank) const { return ranks_[rank]->address; }
  int size() const { return static_cast<int>(ranks_.size()); }
  uint64_t epoch(int rank) const { return ranks_[rank]->epoch.load(); }
  int healthy_count() const;
  int queued() const;
  // The smallest max_context a healthy rank reports (0 when none reports one).
  int64_t max_context() const;

 private:
  friend class RankLease;
  struct Rank {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<internal::v1::Rank::Stub> stub;
    bool healthy = false;
    std::atomic<uint64_t> epoch{0};
    std::string last_error = "not probed yet";
    internal::v1::LoadReport load;
    int in_flight = 0;
    bool probing = false;
  };

  void PollLoop();
  void Probe(int rank);
  void OnProbe(int rank, const grpc::Status& status, const internal::v1::LoadReport& load);
  void MarkUnhealthyLocked(int rank, const std::string& why);
  void NotifyHealth();
  void Release(int rank);
  int PickLocked(int avoid) const;  // -1: none has room
  int CapacityLocked(const Rank& r) const;
  std::string DescribeLocked() const;

  const RankPoolOptions options_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // rank room or health changed, queue head moved
  std::deque<uint64_t> queue_;  // tickets of waiting requests
  uint64_t next_ticket_ = 0;
  int next_pick_ = 0;  // round-robin start among equally loaded ranks
  int healthy_ = 0;
  int probes_outstanding_ = 0;
  bool stopping_ = false;
  std::mutex health_mu_;  // guards on_health_ and serialises its calls
  std::function<void(int)> on_health_;
  std::thread poller_;
};

}  // namespace nextserve::router
