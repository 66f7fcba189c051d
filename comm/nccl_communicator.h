// The NCCL communicator (device buffers): all-to-all-v as grouped ncclSend/ncclRecv, all-reduce,
// broadcast, barrier, on one CUDA stream; the unique id and the counts exchange go over MPI (host).
// Every call returns once its work on the stream is done, or fails when it is not done within the
// timeout (the NCCL communicator is then aborted and this one poisoned).
#pragma once

#include <mpi.h>

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "comm/mpi_session.h"

namespace nextserve::comm {

struct NcclOptions {
  int device = -1;  // CUDA device; -1: the rank on this host modulo the device count
  std::chrono::milliseconds timeout = kDefaultTimeout;
  // A cudaStream_t to run on, so that collectives follow the caller's kernels in order; null: an
  // own non-blocking stream (the caller then synchronizes its producers before each call).
  void* stream = nullptr;
};

// Collective over `bootstrap` (its ranks become the NCCL ranks, in order).
absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(MPI_Comm bootstrap,
                                                                   const NcclOptions& options);
// Over every rank of the session; without MPI (standalone), a group of one.
absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(const MpiSession& session,
                                                                   const NcclOptions& options);

// True when a CUDA device can be used; else `why` says why not (for test skips).
bool CudaDeviceAvailable(std::string* why);

}  // namespace nextserve::comm
