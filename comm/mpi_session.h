// The process's MPI lifetime (MPI_Init_thread ... MPI_Finalize) and its place in the job: rank,
// size and rank on this host, so that one executable runs both under mpirun and standalone.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace nextserve::comm {

class MpiSession {
 public:
  // Starts MPI (MPI_THREAD_MULTIPLE) when the process was launched by mpirun (OMPI_COMM_WORLD_SIZE
  // or PMIX_RANK is set) or NEXTSERVE_MPI=1 (a singleton MPI job); NEXTSERVE_MPI=0 never starts
  // it. Without MPI the session is rank 0 of 1. One session per process.
  static absl::StatusOr<std::unique_ptr<MpiSession>> Start();
  // MPI_Finalize, unless a collective failed: then it is skipped (it would wait for the lost peer)
  // and mpirun ends the job when this process exits.
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  bool uses_mpi() const { return uses_mpi_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // among the ranks on this host: picks the GPU
  int local_size() const { return local_size_; }
  const std::string& host() const { return host_; }

  // The group of every rank: MPI when uses_mpi(), else the single-process communicator.
  // Collective over the job.
  absl::StatusOr<std::unique_ptr<Communicator>> WorldCommunicator(
      std::chrono::milliseconds timeout = kDefaultTimeout) const;

 private:
  MpiSession() = default;
  bool uses_mpi_ = false;
  bool owns_mpi_ = false;  // we called MPI_Init_thread, so we finalize
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  std::string host_;
};

}  // namespace nextserve::comm
