// The collectives with real values, on every rank of the job: standalone (the single-process
// group) or under `mpirun -np R` (the MPI communicator). Every rank runs the same tests in order.
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_session.h"
#include "gtest/gtest.h"

namespace nextserve::comm {
namespace {

MpiSession* g_session = nullptr;
Communicator* g_comm = nullptr;

class CommEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<MpiSession>> s = MpiSession::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = *std::move(s);
    // Short, so that a rank that fails an assertion and skips a collective cannot hang the rest.
    absl::StatusOr<std::unique_ptr<Communicator>> c =
        session_->WorldCommunicator(std::chrono::seconds(10));
    ASSERT_TRUE(c.ok()) << c.status();
    comm_ = *std::move(c);
    g_session = session_.get();
    g_comm = comm_.get();
  }
  void TearDown() override {
    comm_.reset();
    session_.reset();
  }

 private:
  std::unique_ptr<MpiSession> session_;
  std::unique_ptr<Communicator> comm_;
};

const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new CommEnvironment);

// Bytes rank s sends rank d: uneven, zero for some pairs, and nothing at all from the last rank.
int64_t PairBytes(int s, int d, int size) {
  if (size > 1 && s == size - 1) return 0;
  return ((s + 2 * d) % 4) * 37 + (s == d ? 5 : 0);
}
uint8_t PairByte(int s, int d, int64_t i) {
  return static_cast<uint8_t>((s * 31 + d * 7 + i) % 251);
}

TEST(Collectives, RankAndSize) {
  EXPECT_EQ(g_comm->size(), g_session->size());
  EXPECT_EQ(g_comm->rank(), g_session->rank());
  EXPECT_EQ(g_comm->name(), g_session->uses_mpi() ? "mpi" : "single");
  EXPECT_GE(g_session->local_rank(), 0);
  EXPECT_LT(g_session->local_rank(), g_session->local_size());
  EXPECT_TRUE(g_comm->health().ok());
}

// Under tests/integration/netns/two_hosts_test.sh: one rank per namespace, each its own host.
TEST(Collectives, TwoHostsAreTwoMachines) {
  if (std::getenv("NEXTSERVE_TWO_HOSTS") == nullptr) GTEST_SKIP() << "not the two-hosts run";
  ASSERT_EQ(g_comm->size(), 2);
  EXPECT_EQ(g_session->local_size(), 1);
  std::vector<char> host(256, 0), root_host(256, 0);
  std::copy(g_session->host().begin(), g_session->host().end(), host.begin());
  root_host = host;
  ASSERT_TRUE(g_comm->Broadcast(root_host.data(), root_host.size(), 0).ok());
  if (g_comm->rank() == 1) {
    EXPECT_NE(std::string(root_host.data()), std::string(host.data()));
  }
}

TEST(Collectives, ExchangeCounts) {
  const int R = g_comm->size(), me = g_comm->rank();
  std::vector<int64_t> send(R), recv(R, -1);
  for (int d = 0; d < R; ++d) send[d] = (int64_t{me} << 33) + 100 * d + me;
  ASSERT_TRUE(g_comm->ExchangeCounts(send, recv).ok());
  for (int s = 0; s < R; ++s) EXPECT_EQ(recv[s], (int64_t{s} << 33) + 100 * me + s) << "from " << s;
}

// One all-to-all-v with the counts exchange, checked byte by byte, with a guard after the buffer.
void CheckAllToAllV(Communicator& comm) {
  const int R = comm.size(), me = comm.rank();
  std::vector<int64_t> send_counts(R), recv_counts(R);
  for (int d = 0; d < R; ++d) send_counts[d] = PairBytes(me, d, R);
  ASSERT_TRUE(comm.ExchangeCounts(send_counts, recv_counts).ok());
  for (int s = 0; s < R; ++s) ASSERT_EQ(recv_counts[s], PairBytes(s, me, R));
  std::vector<uint8_t> send;
  for (int d = 0; d < R; ++d) {
    for (int64_t i = 0; i < send_counts[d]; ++i) send.push_back(PairByte(me, d, i));
  }
  const int64_t total = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  std::vector<uint8_t> recv(total + 16, 0xEE);
  absl::Status st = comm.AllToAllV(send.data(), send_counts, recv.data(), recv_counts);
  ASSERT_TRUE(st.ok()) << st;
  int64_t off = 0;
  for (int s = 0; s < R; ++s) {  // in rank order
    for (int64_t i = 0; i < recv_counts[s]; ++i) {
      ASSERT_EQ(recv[off + i], PairByte(s, me, i)) << "from rank " << s << " byte " << i;
    }
    off += recv_counts[s];
  }
  for (int64_t i = total; i < total + 16; ++i) ASSERT_EQ(recv[i], 0xEE) << "overrun";
}

TEST(Collectives, AllToAllVUnevenAndZeroCounts) {
  CheckAllToAllV(*g_comm);
}

TEST(Collectives, AllToAllVNothingAtAll) {  // an idle step: every rank sends nothing
  const int R = g_comm->size();
  std::vector<int64_t> zeros(R, 0), recv(R, -1);
  ASSERT_TRUE(g_comm->ExchangeCounts(zeros, recv).ok());
  EXPECT_EQ(recv, zeros);
  ASSERT_TRUE(g_comm->AllToAllV(nullptr, zeros, nullptr, zeros).ok());
}

// Rank 0 sends only to itself while every other rank sends nothing, several times in a row, then
// another collective: OpenMPI's Ialltoallv once took the idle ranks' (aliased) placeholder buffers
// for "in place" and the next collective hung (the MoE decode step of one sequence does this).
TEST(Collectives, AllToAllVSelfOnlyNextToIdleRanks) {
  const int R = g_comm->size(), me = g_comm->rank();
  for (int round = 0; round < 5; ++round) {
    std::vector<int64_t> send(R, 0), recv(R, -1);
    if (me == 0) send[0] = 64 + round;
    ASSERT_TRUE(g_comm->ExchangeCounts(send, recv).ok());
    std::vector<uint8_t> out(send[0] + 1, static_cast<uint8_t>(round)), in(recv[me] + 1, 0);
    ASSERT_TRUE(g_comm->AllToAllV(out.data(), send, in.data(), recv).ok());
    if (me == 0) EXPECT_EQ(in[0], round);
    int64_t flag = 1;
    ASSERT_TRUE(g_comm->AllReduce(&flag, 1, ReduceOp::kSum).ok());
    EXPECT_EQ(flag, R);
  }
}

TEST(Collectives, AllToAllVRows) {  // token rows of 8 KiB (hidden 2048 fp32), a few MB in all
  const int R = g_comm->size(), me = g_comm->rank();
  constexpr int64_t kRow = 2048 * sizeof(float);
  auto rows = [&](int s, int d) -> int64_t { return (s * 13 + d * 5) % 7 * 16; };
  std::vector<int64_t> sc(R), rc(R);
  for (int d = 0; d < R; ++d) sc[d] = rows(me, d) * kRow;
  for (int s = 0; s < R; ++s) rc[s] = rows(s, me) * kRow;
  std::vector<float> send, recv(std::accumulate(rc.begin(), rc.end(), int64_t{0}) / 4, -1.f);
  for (int d = 0; d < R; ++d) {
    for (int64_t i = 0; i < sc[d] / 4; ++i) send.push_back(me * 1e6f + d * 1e4f + i % 8192);
  }
  ASSERT_TRUE(g_comm->AllToAllV(send.data(), sc, recv.data(), rc).ok());
  int64_t off = 0;
  for (int s = 0; s < R; ++s) {
    for (int64_t i = 0; i < rc[s] / 4; ++i) {
      ASSERT_EQ(recv[off + i], s * 1e6f + me * 1e4f + i % 8192) << "from " << s << " at " << i;
    }
    off += rc[s] / 4;
  }
}

TEST(Collectives, AllToAllVInChunks) {  // the path for payloads over INT_MAX bytes, at 7 bytes
  if (!g_session->uses_mpi()) GTEST_SKIP() << "needs MPI (run under mpirun)";
  absl::StatusOr<std::unique_ptr<Communicator>> c = MakeMpiCommunicator(
      MPI_COMM_WORLD, MpiOptions{.timeout = std::chrono::seconds(10), .max_message_bytes = 7});
  ASSERT_TRUE(c.ok()) << c.status();
  CheckAllToAllV(**c);
  CheckAllToAllV(**c);
}

TEST(Collectives, AllReduceFloat) {
  const int R = g_comm->size(), me = g_comm->rank();
  constexpr int kN = 1000;
  auto value = [](int r, int i) { return (r - 1.5f) * (i % 17 + 1) + 0.25f * i; };
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
    std::vector<float> v(kN);
    for (int i = 0; i < kN; ++i) v[i] = value(me, i);
    ASSERT_TRUE(g_comm->AllReduce(v.data(), kN, op).ok());
    for (int i = 0; i < kN; ++i) {
      float want = op == ReduceOp::kSum ? 0.f : value(0, i);
      for (int r = 0; r < R; ++r) {
        if (op == ReduceOp::kSum) want += value(r, i);
        if (op == ReduceOp::kMax) want = std::max(want, value(r, i));
        if (op == ReduceOp::kMin) want = std::min(want, value(r, i));
      }
      ASSERT_FLOAT_EQ(v[i], want) << "op " << static_cast<int>(op) << " at " << i;
    }
  }
}

TEST(Collectives, AllReduceInt64) {
  const int R = g_comm->size(), me = g_comm->rank();
  auto value = [](int r, int i) -> int64_t { return ((int64_t{r} - 2) << 40) + 7 * i - r; };
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
    std::vector<int64_t> v(100);
    for (int i = 0; i < 100; ++i) v[i] = value(me, i);
    ASSERT_TRUE(g_comm->AllReduce(v.data(), 100, op).ok());
    for (int i = 0; i < 100; ++i) {
      int64_t want = op == ReduceOp::kSum ? 0 : value(0, i);
      for (int r = 0; r < R; ++r) {
        if (op == ReduceOp::kSum) want += value(r, i);
        if (op == ReduceOp::kMax) want = std::max(want, value(r, i));
        if (op == ReduceOp::kMin) want = std::min(want, value(r, i));
      }
      ASSERT_EQ(v[i], want) << "op " << static_cast<int>(op) << " at " << i;
    }
  }
  ASSERT_TRUE(g_comm->AllReduce(static_cast<int64_t*>(nullptr), 0, ReduceOp::kSum).ok());
}

TEST(Collectives, BroadcastFromNonZeroRoot) {
  const int R = g_comm->size(), me = g_comm->rank();
  for (int root : {R - 1, R / 2}) {
    std::vector<uint8_t> buf(100000, 0);
    if (me == root) {
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 7 + root);
    }
    ASSERT_TRUE(g_comm->Broadcast(buf.data(), buf.size(), root).ok());
    for (size_t i = 0; i < buf.size(); ++i) {
      ASSERT_EQ(buf[i], static_cast<uint8_t>(i * 7 + root)) << "root " << root << " at " << i;
    }
  }
}

TEST(Collectives, BarrierWaitsForTheLastRank) {
  const int last = g_comm->size() - 1;
  constexpr auto kDelay = std::chrono::milliseconds(300);
  if (g_comm->rank() == last) std::this_thread::sleep_for(kDelay);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(g_comm->Barrier().ok());
  const auto waited = std::chrono::steady_clock::now() - start;
  if (g_comm->rank() != last) {
    EXPECT_GE(waited, kDelay - std::chrono::milliseconds(100));
  }
}

TEST(Collectives, BadArgumentsFailWithoutPoisoning) {
  const int R = g_comm->size();
  std::vector<int64_t> wrong(R + 1, 0), recv(R + 1, 0), ok(R, 0);
  EXPECT_TRUE(absl::IsInvalidArgument(g_comm->ExchangeCounts(wrong, recv)));
  std::vector<int64_t> negative(R, 0);
  negative[0] = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(g_comm->AllToAllV(nullptr, negative, nullptr, ok)));
  EXPECT_TRUE(absl::IsInvalidArgument(g_comm->Broadcast(nullptr, 0, R)));
  EXPECT_TRUE(g_comm->health().ok());
  EXPECT_TRUE(g_comm->Barrier().ok());
}

TEST(Collectives, TimeoutSetter) {
  if (!g_session->uses_mpi()) GTEST_SKIP() << "the single-process group never waits";
  const std::chrono::milliseconds before = g_comm->timeout();
  g_comm->set_timeout(std::chrono::milliseconds(1234));
  EXPECT_EQ(g_comm->timeout(), std::chrono::milliseconds(1234));
  g_comm->set_timeout(before);
}

}  // namespace
}  // namespace nextserve::comm
