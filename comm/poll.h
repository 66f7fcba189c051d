// The wait loop of every collective: polls until done, an error, or a deadline (collectives have no
// timeout of their own, so this is the watchdog).
#pragma once

#include <chrono>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nextserve::comm {

using Clock = std::chrono::steady_clock;

// Calls `poll` until it returns true (then OK), an error (returned as is) or `deadline` passes
// (then DEADLINE_EXCEEDED with an empty message, for the caller to word). Between polls it spins
// for 50 us, then yields until 1 ms, then sleeps 100 us until 50 ms, then 1 ms: a wait for a peer a
// few microseconds behind costs no latency, and an idle wait costs almost no CPU.
absl::Status PollUntil(absl::FunctionRef<absl::StatusOr<bool>()> poll, Clock::time_point deadline);

// "1.5 s", for messages.
std::string FormatSeconds(Clock::duration d);

}  // namespace nextserve::comm
