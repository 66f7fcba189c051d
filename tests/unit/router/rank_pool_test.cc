// RankPool against in-process test-double ranks (ScriptedLoadRank: GetLoad answers a set report,
// optionally slowly; Submit is not used): FIFO admission woken by released room, cancellation and
// deadlines while queued, the router's own dispatches counted on top of a stale load report, and
// health on evidence (slow answers make a rank suspect, a long silence or a broken connection
// makes it down).
#include "router/rank_pool.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace nextserve::router {
namespace {

namespace pb = nextserve::internal::v1;

// A test double of a rank: only GetLoad, answering `report` after `delay_ms`.
class ScriptedLoadRank final : public pb::Rank::Service {
 public:
  explicit ScriptedLoadRank(pb::LoadReport report) : report_(std::move(report)) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~ScriptedLoadRank() override { Stop(); }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  void set_delay_ms(int ms) { delay_ms_ = ms; }
  void Stop() {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
  }

  grpc::Status GetLoad(grpc::ServerContext*, const pb::LoadRequest*,
                       pb::LoadReport* response) override {
    if (const int ms = delay_ms_.load(); ms > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    *response = report_;
    return grpc::Status::OK;
  }

 private:
  const pb::LoadReport report_;
  std::atomic<int> delay_ms_{0};
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

pb::LoadReport Report(int slots, int running, int free_blocks) {
  pb::LoadReport r;
  r.set_total_state_slots(slots);
  r.set_free_state_slots(slots - running);
  r.set_running(running);
  r.set_total_kv_blocks(100);
  r.set_free_kv_blocks(free_blocks);
  r.set_max_context(1024);
  return r;
}

// Waits (bounded) until `done` holds; the tests then check values, not times.
template <typename F>
bool WaitFor(F done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time until = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

const std::function<bool()> kNeverCancelled = [] { return false; };

absl::Time In(absl::Duration d) {
  return absl::Now() + d;
}

TEST(RankPoolAdmission, QueuedRequestsAreAdmittedInArrivalOrderAsRoomFrees) {
  ScriptedLoadRank rank(Report(/*slots=*/1, 0, 100));
  RankPool pool({rank.address()}, {.poll_interval = absl::Hours(1), .rank_queue_depth = 0});
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return pool.healthy_count() == 1; }));

  auto first = pool.Acquire(In(absl::Seconds(30)), kNeverCancelled);
  ASSERT_TRUE(first.ok()) << first.status();
  constexpr int kWaiters = 6;
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&, i] {
      auto lease = pool.Acquire(In(absl::Seconds(30)), kNeverCancelled);
      ASSERT_TRUE(lease.ok()) << lease.status();
      std::lock_guard lock(mu);
      order.push_back(i);
      // The lease is released here, which admits the next one.
    });
    ASSERT_TRUE(WaitFor([&] { return pool.queued() == i + 1; }));  // queued in this order
  }
  {
    std::lock_guard lock(mu);
    EXPECT_TRUE(order.empty());  // no room until the first lease goes
  }
  *first = RankLease();
  for (auto& t : waiters) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(pool.queued(), 0);
}

TEST(RankPoolAdmission, CancelledAndExpiredWaitersLeaveWithoutBlockingTheOthers) {
  ScriptedLoadRank rank(Report(/*slots=*/1, 0, 100));
  RankPool pool({rank.address()},
                {.poll_interval = absl::Hours(1), .max_queue = 2, .rank_queue_depth = 0});
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return pool.healthy_count() == 1; }));
  auto held = pool.Acquire(In(absl::Seconds(30)), kNeverCancelled);
  ASSERT_TRUE(held.ok());

  // The head is cancelled by its client; the poller's sweep (or the full queue) notices.
  std::atomic<bool> head_cancelled{false};
  const std::function<bool()> head_cancel = [&] { return head_cancelled.load(); };
  absl::Status head_status;
  std::thread head(
      [&] { head_status = pool.Acquire(In(absl::Seconds(30)), head_cancel).status(); });
  ASSERT_TRUE(WaitFor([&] { return pool.queued() == 1; }));
  absl::StatusOr<RankLease> second_lease;
  std::thread second([&] { second_lease = pool.Acquire(In(absl::Seconds(30)), kNeverCancelled); });
  ASSERT_TRUE(WaitFor([&] { return pool.queued() == 2; }));

  // Queue full: refused, with the number waiting.
  auto refused = pool.Acquire(In(absl::Seconds(30)), kNeverCancelled);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();

  head_cancelled = true;
  head.join();
  EXPECT_EQ(head_status.code(), absl::StatusCode::kCancelled) << head_status;
  // A waiter whose deadline passes while queued leaves with DeadlineExceeded.
  auto expired = pool.Acquire(In(absl::Milliseconds(50)), kNeverCancelled);
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kDeadlineExceeded) << expired.status();

  *held = RankLease();  // room: the waiter behind the cancelled head gets it
  second.join();
  ASSERT_TRUE(second_lease.ok()) << second_lease.status();
  EXPECT_EQ(second_lease->rank(), 0);
}

TEST(RankPoolBalancing, OwnDispatchesSinceTheLastReportCount) {
  // Both ranks report load from other routers: A 2 running (more free blocks), B 3 running.
  ScriptedLoadRank a(Report(/*slots=*/8, 2, 90));
  ScriptedLoadRank b(Report(/*slots=*/8, 3, 50));
  RankPool pool({a.address(), b.address()}, {.poll_interval = absl::Hours(1)});
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return pool.healthy_count() == 2; }));
  // No new report arrives: only the router's own dispatches can move the balance. Trusting the
  // report alone would send all three to A (2 < 3); counting them gives A, A (tie, more free), B.
  std::vector<RankLease> leases;
  std::vector<int> picked;
  for (int i = 0; i < 3; ++i) {
    auto lease = pool.Acquire(In(absl::Seconds(5)), kNeverCancelled);
    ASSERT_TRUE(lease.ok()) << lease.status();
    picked.push_back(lease->rank());
    leases.push_back(*std::move(lease));
  }
  EXPECT_EQ(picked, (std::vector<int>{0, 0, 1}));
}

TEST(RankPoolBalancing, PrefixAffinityPicksItsRankUntilTheLoadsDifferTooMuch) {
  ScriptedLoadRank a(Report(/*slots=*/8, 0, 90));
  ScriptedLoadRank b(Report(/*slots=*/8, 0, 90));
  RankPool pool({a.address(), b.address()},
                {.poll_interval = absl::Hours(1), .affinity_max_extra_load = 2});
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return pool.healthy_count() == 2; }));
  // Affinity 3 names rank 1 (3 % 2). It keeps it while its load is at most the other's + 2: loads
  // (A, B) before each pick: (0,0) (0,1) (0,2) -> B, B, B; then (0,3) is 3 more -> A.
  std::vector<RankLease> leases;
  std::vector<int> picked;
  for (int i = 0; i < 4; ++i) {
    auto lease = pool.Acquire(In(absl::Seconds(5)), kNeverCancelled, -1, /*affinity=*/3);
    ASSERT_TRUE(lease.ok()) << lease.status();
    picked.push_back(lease->rank());
    leases.push_back(*std::move(lease));
  }
  EXPECT_EQ(picked, (std::vector<int>{1, 1, 1, 0}));
  // A rank that just failed is not preferred.
  auto lease = pool.Acquire(In(absl::Seconds(5)), kNeverCancelled, /*avoid=*/1, 3);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(lease->rank(), 0);
}

TEST(RankPoolHealth, SlowRankIsSuspectKeepsItsEpochAndRejoinsWhenItAnswers) {
  ScriptedLoadRank slow(Report(/*slots=*/8, 0, 100));
  ScriptedLoadRank other(Report(/*slots=*/8, 5, 10));  // busier: would lose any fair choice
  RankPool pool({slow.address(), other.address()}, {.poll_interval = absl::Milliseconds(20),
                                                    .probe_timeout = absl::Milliseconds(100),
                                                    .fail_after_missed_probes = 3,
                                                    .fail_after = absl::Hours(1)});
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return pool.healthy_count() == 2; }));
  const uint64_t epoch = pool.epoch(0);
  auto on_slow = pool.Acquire(In(absl::Seconds(5)), kNeverCancelled);
  ASSERT_TRUE(on_slow.ok());
  EXPECT_EQ(on_slow->rank(), 0);

  slow.set_delay_ms(300);  // every probe now misses its deadline
  ASSERT_TRUE(WaitFor([&] { return pool.health(0) == RankPool::Health::kSuspect; }));
  // Several misses later it is still only suspect: streams (its epoch) kept, no new work.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(pool.health(0), RankPool::Health::kSuspect);
  EXPECT_EQ(pool.epoch(0), epoch);
  EXPECT_EQ(pool.healthy_count(), 2);
  for (int i = 0; i < 3; ++i) {
    auto lease = pool.Acquire(In(absl::Seconds(5)), kNeverCancelled);
    ASSERT_TRUE(lease.ok());
    EXPECT_EQ(lease->rank(), 1);
  }

  slow.set_delay_ms(0);
  ASSERT_TRUE(WaitFor([&] { return pool.health(0) == RankPool::Health::kHealthy; }));
  EXPECT_EQ(pool.epoch(0), epoch);
  auto back = pool.Acquire(In(absl::Seconds(5)), kNeverCancelled);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->rank(), 0);
}

TEST(RankPoolHealth, LongSilenceOrBrokenConnectionIsDown) {
  ScriptedLoadRank silent(Report(/*slots=*/8, 0, 100));
  ScriptedLoadRank gone(Report(/*slots=*/8, 0, 100));
  RankPool pool({silent.address(), gone.address()}, {.poll_interval = absl::Milliseconds(20),
                                                     .probe_timeout = absl::Milliseconds(100),
                                                     .fail_after_missed_probes = 3,
                                                     .fail_after = absl::Milliseconds(400)});
  std::atomic<int> last_healthy{-1};
  pool.SetHealthCallback([&](int healthy) { last_healthy = healthy; });
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return pool.healthy_count() == 2; }));
  const uint64_t silent_epoch = pool.epoch(0), gone_epoch = pool.epoch(1);

  silent.set_delay_ms(1000);
  const absl::Time silenced = absl::Now();
  ASSERT_TRUE(WaitFor([&] { return pool.health(0) == RankPool::Health::kDown; }));
  // Down only once the stated window has passed without an answer (the last answer may have come
  // up to one poll before `silenced`).
  EXPECT_GE(absl::Now() - silenced, absl::Milliseconds(400 - 20 - 10));
  EXPECT_EQ(pool.epoch(0), silent_epoch + 1);

  gone.Stop();  // refused connections: down at the next probe, not after the window
  ASSERT_TRUE(WaitFor([&] { return pool.health(1) == RankPool::Health::kDown; }));
  EXPECT_EQ(pool.epoch(1), gone_epoch + 1);
  EXPECT_EQ(pool.healthy_count(), 0);
  EXPECT_TRUE(WaitFor([&] { return last_healthy.load() == 0; }));
  auto none = pool.Acquire(In(absl::Seconds(5)), kNeverCancelled);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable) << none.status();
  pool.SetHealthCallback(nullptr);
}

}  // namespace
}  // namespace nextserve::router
