// MoE dispatch + combine all-to-all over MPI, against a memcpy of the same bytes in the same run.
//   mpirun --allow-run-as-root --oversubscribe -np R build/bin/alltoall_bench [--max-tokens N]
// Per token and destination rank, dispatch sends the hidden state (2048 fp32) plus its top-10
// expert ids (int32) and weights (fp32); combine returns 2048 fp32. Experts (512, top-10, random
// routing) are placed contiguously, so a token goes once to each rank owning one of its experts.
// Figures: the slowest rank's median per step (barrier before each step, all ranks at once).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_session.h"

namespace {

using nextserve::comm::Communicator;
using nextserve::comm::ReduceOp;
using Clock = std::chrono::steady_clock;

constexpr int kHidden = 2048, kExperts = 512, kTopK = 10;
constexpr int64_t kDispatchRow = kHidden * 4 + kTopK * 4 + kTopK * 4;  // 8272 bytes
constexpr int64_t kCombineRow = kHidden * 4;

void Check(const absl::Status& s) {
  if (s.ok()) return;
  std::fprintf(stderr, "alltoall_bench: %s\n", s.ToString().c_str());
  std::exit(1);
}

struct Step {
  std::vector<int64_t> dispatch_send, dispatch_recv, combine_send, combine_recv;  // bytes per rank
  std::vector<char> dsend, drecv, csend, crecv;
};

Step MakeStep(Communicator& comm, int tokens) {
  const int R = comm.size();
  std::mt19937 rng(1234 + comm.rank());
  std::vector<int> experts(kExperts);
  std::iota(experts.begin(), experts.end(), 0);
  Step s;
  s.dispatch_send.assign(R, 0);
  for (int t = 0; t < tokens; ++t) {
    std::shuffle(experts.begin(), experts.end(), rng);  // top-10 of a random routing
    std::vector<bool> to(R, false);
    for (int k = 0; k < kTopK; ++k) to[static_cast<int64_t>(experts[k]) * R / kExperts] = true;
    for (int r = 0; r < R; ++r) s.dispatch_send[r] += to[r] ? kDispatchRow : 0;
  }
  s.dispatch_recv.assign(R, 0);
  Check(comm.ExchangeCounts(s.dispatch_send, s.dispatch_recv));
  // Combine returns one hidden row per row received, to its owner.
  for (int r = 0; r < R; ++r) {
    s.combine_send.push_back(s.dispatch_recv[r] / kDispatchRow * kCombineRow);
    s.combine_recv.push_back(s.dispatch_send[r] / kDispatchRow * kCombineRow);
  }
  auto total = [](const std::vector<int64_t>& v) {
    return std::accumulate(v.begin(), v.end(), int64_t{0});
  };
  s.dsend.assign(total(s.dispatch_send), 1);
  s.drecv.assign(total(s.dispatch_recv), 0);
  s.csend.assign(total(s.combine_send), 2);
  s.crecv.assign(total(s.combine_recv), 0);
  return s;
}

// The slowest rank's median over `iters` runs of `body`.
template <typename F>
double MedianSeconds(Communicator& comm, int iters, F body) {
  std::vector<float> times;
  for (int i = 0; i < iters + 2; ++i) {  // two warm-up runs
    Check(comm.Barrier());
    const Clock::time_point t0 = Clock::now();
    body();
    const float dt = std::chrono::duration<float>(Clock::now() - t0).count();
    if (i >= 2) times.push_back(dt);
  }
  Check(comm.AllReduce(times.data(), times.size(), ReduceOp::kMax));
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int max_tokens = 4096;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--max-tokens") max_tokens = std::atoi(argv[i + 1]);
  }
  auto session = nextserve::comm::MpiSession::Start();
  if (!session.ok()) return 1;
  auto comm_or = (*session)->WorldCommunicator(std::chrono::seconds(20));
  if (!comm_or.ok()) {
    std::fprintf(stderr, "%s\n", comm_or.status().ToString().c_str());
    return 1;
  }
  Communicator& comm = **comm_or;
  const bool print = comm.rank() == 0;
  if (print) {
    std::printf("alltoall_bench: %s, R = %d, hidden %d, top-%d of %d experts; per step and rank:\n",
                std::string(comm.name()).c_str(), comm.size(), kHidden, kTopK, kExperts);
    std::printf("%8s %12s %12s %12s %12s %12s %8s\n", "tokens", "bytes/step", "a2a_us", "a2a_GB/s",
                "memcpy_us", "memcpy_GB/s", "a2a/copy");
  }
  for (int tokens = 1; tokens <= max_tokens; tokens *= 4) {
    Step s = MakeStep(comm, tokens);
    const int64_t bytes = s.dsend.size() + s.csend.size();  // sent by this rank per step
    // Bytes: the largest per-rank volume (ranks differ a little under random routing); it also
    // sets the number of runs, which every rank must agree on.
    int64_t max_bytes = bytes;
    Check(comm.AllReduce(&max_bytes, 1, ReduceOp::kMax));
    const int iters =
        static_cast<int>(std::clamp<int64_t>((int64_t{1} << 28) / (max_bytes + 1), 10, 500));
    std::vector<int64_t> recv_counts(comm.size());
    const double a2a = MedianSeconds(comm, iters, [&] {
      Check(comm.ExchangeCounts(s.dispatch_send, recv_counts));
      Check(comm.AllToAllV(s.dsend.data(), s.dispatch_send, s.drecv.data(), s.dispatch_recv));
      Check(comm.AllToAllV(s.csend.data(), s.combine_send, s.crecv.data(), s.combine_recv));
    });
    std::vector<char> dcopy(s.dsend.size()), ccopy(s.csend.size());
    const double copy = MedianSeconds(comm, iters, [&] {
      std::memcpy(dcopy.data(), s.dsend.data(), s.dsend.size());
      std::memcpy(ccopy.data(), s.csend.data(), s.csend.size());
    });
    if (print) {
      std::printf("%8d %12lld %12.1f %12.3f %12.1f %12.3f %8.3f\n", tokens,
                  static_cast<long long>(max_bytes), a2a * 1e6, max_bytes / a2a / 1e9, copy * 1e6,
                  max_bytes / copy / 1e9, copy / a2a);
      std::fflush(stdout);
    }
  }
  return 0;
}
