// Collectives between the ranks of one expert-parallel group: the counts exchange and payload of
// all-to-all-v (MoE dispatch and combine), all-reduce, broadcast and barrier. Implementations: MPI
// (host buffers) and NCCL (device buffers). Every call returns a status instead of hanging: a peer
// that died or stopped answering fails the call within the communicator's timeout, naming the rank.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nextserve::comm {

enum class ReduceOp { kSum, kMax, kMin };

// How long one collective may wait for its peers unless set_timeout() says otherwise.
inline constexpr std::chrono::milliseconds kDefaultTimeout{30000};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view name() const = 0;  // "mpi", "nccl", "single"

  // A collective that waits longer than this fails with DEADLINE_EXCEEDED; the communicator is then
  // poisoned: health() and every later call return that error at once (the group is lost).
  virtual void set_timeout(std::chrono::milliseconds timeout) {}
  virtual std::chrono::milliseconds timeout() const { return kDefaultTimeout; }
  virtual absl::Status health() const { return absl::OkStatus(); }

  // recv_counts[r] = the count rank r passes for this rank in its send_counts. Host arrays of
  // size().
  virtual absl::Status ExchangeCounts(std::span<const int64_t> send_counts,
                                      std::span<int64_t> recv_counts) = 0;
  // `send` holds send_counts[r] bytes for each rank r, in rank order; `recv` receives
  // recv_counts[r] bytes from each rank r, in rank order (so results never depend on arrival
  // order). Buffers are in the communicator's memory space (host for MPI, device for NCCL).
  virtual absl::Status AllToAllV(const void* send, std::span<const int64_t> send_counts, void* recv,
                                 std::span<const int64_t> recv_counts) = 0;
  // In place over n values, in the communicator's memory space.
  virtual absl::Status AllReduce(float* data, int64_t n, ReduceOp op) = 0;
  virtual absl::Status AllReduce(int64_t* data, int64_t n, ReduceOp op) = 0;
  virtual absl::Status Broadcast(void* data, int64_t bytes, int root) = 0;
  virtual absl::Status Barrier() = 0;
};

// The group of one process: every collective is a local copy.
std::unique_ptr<Communicator> MakeSingleProcessCommunicator();

}  // namespace nextserve::comm
