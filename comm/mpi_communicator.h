// The MPI communicator (host buffers): non-blocking MPI collectives polled under a watchdog.
// Collective calls: every rank of the group makes the same calls in the same order, from one thread
// at a time. Buffers passed to a call that timed out may still be written by MPI later: after a
// failure, end the process (MpiSession then skips MPI_Finalize so that mpirun ends the job).
#pragma once

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace nextserve::comm {

struct MpiOptions {
  std::chrono::milliseconds timeout = kDefaultTimeout;
  // Largest single MPI message (MPI counts are int): bigger payloads travel in chunks.
  int64_t max_message_bytes = INT_MAX;
};

// A communicator over a duplicate of `comm` (its traffic never mixes with other users of `comm`)
// with MPI_ERRORS_RETURN. Collective over `comm`, and itself bounded by the timeout.
absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(
    MPI_Comm comm, std::chrono::milliseconds timeout = kDefaultTimeout);
absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(MPI_Comm comm,
                                                                  const MpiOptions& options);

// True once a collective of any MPI communicator of this process failed or timed out.
bool AnyMpiCommunicatorFailed();

}  // namespace nextserve::comm
