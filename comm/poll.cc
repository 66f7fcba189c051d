#include "comm/poll.h"

#include <sched.h>

#include <thread>

#include "absl/strings/str_format.h"

namespace nextserve::comm {

absl::Status PollUntil(absl::FunctionRef<absl::StatusOr<bool>()> poll, Clock::time_point deadline) {
  using std::chrono::microseconds;
  const Clock::time_point start = Clock::now();
  while (true) {
    absl::StatusOr<bool> done = poll();
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return absl::DeadlineExceededError("");
    const Clock::duration waited = now - start;
    if (waited < microseconds(50)) continue;
    if (waited < microseconds(1000)) {
      sched_yield();
    } else if (waited < microseconds(50000)) {
      std::this_thread::sleep_for(microseconds(100));
    } else {
      std::this_thread::sleep_for(microseconds(1000));
    }
  }
}

std::string FormatSeconds(Clock::duration d) {
  return absl::StrFormat("%.3g s", std::chrono::duration<double>(d).count());
}

}  // namespace nextserve::comm
