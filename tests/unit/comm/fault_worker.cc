// One rank of a fault scenario, run by fault_test under mpirun. Rank 1 misbehaves after a first
// good collective; every other rank reports what its next collective returned:
//   RESULT rank=R code=CODE elapsed_ms=T again_ms=T2 again_same=0|1 msg=...
// Scenarios: skip (rank 1 never enters the collective and stays alive), exit (_exit(0) without
// MPI_Finalize), kill (SIGKILL).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_session.h"

using nextserve::comm::Communicator;
using nextserve::comm::MpiSession;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s skip|exit|kill TIMEOUT_MS\n", argv[0]);
    return 2;
  }
  const std::string scenario = argv[1];
  const std::chrono::milliseconds timeout(std::atoi(argv[2]));
  absl::StatusOr<std::unique_ptr<MpiSession>> session = MpiSession::Start();
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", session.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> comm = (*session)->WorldCommunicator(timeout);
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 1;
  }
  Communicator& c = **comm;
  const int R = c.size();
  std::vector<int64_t> counts(R, 64);
  std::vector<char> send(64 * R, 'x'), recv(64 * R);
  if (absl::Status s = c.AllToAllV(send.data(), counts, recv.data(), counts); !s.ok()) {
    std::fprintf(stderr, "first collective failed: %s\n", s.ToString().c_str());
    return 1;
  }
  if (c.rank() == 1) {
    if (scenario == "exit") _exit(0);
    if (scenario == "kill") raise(SIGKILL);
    std::this_thread::sleep_for(timeout * 3);  // "skip": alive, but never enters
    return 0;
  }
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::duration d) {
    return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  Clock::time_point t0 = Clock::now();
  absl::Status first = c.AllToAllV(send.data(), counts, recv.data(), counts);
  Clock::time_point t1 = Clock::now();
  absl::Status again = c.Barrier();  // poisoned: fails at once with the same error
  Clock::time_point t2 = Clock::now();
  std::printf("RESULT rank=%d code=%s elapsed_ms=%ld again_ms=%ld again_same=%d msg=%s\n", c.rank(),
              absl::StatusCodeToString(first.code()).c_str(), ms(t1 - t0), ms(t2 - t1),
              again == first ? 1 : 0, std::string(first.message()).c_str());
  std::fflush(stdout);
  // Give the other survivors time to report before mpirun ends the job on this exit.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  return first.ok() ? 0 : 3;
}
