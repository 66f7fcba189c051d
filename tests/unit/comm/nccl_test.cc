// The NCCL communicator on one GPU (a group of one: all-to-all-v is a self copy, all-reduce the
// identity) plus its watchdog (a stream stuck behind a host callback). Skips without a GPU.
// Unexercised with one GPU: ncclSend/ncclRecv between ranks, reductions over several ranks, the
// MPI bootstrap of the unique id with R > 1, and aborting on a lost peer.
#include <cuda_runtime.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "comm/mpi_session.h"
#include "comm/nccl_communicator.h"
#include "gtest/gtest.h"

namespace nextserve::comm {
namespace {

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!CudaDeviceAvailable(&why)) GTEST_SKIP() << "no GPU: " << why;
    absl::StatusOr<std::unique_ptr<MpiSession>> s = MpiSession::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = *std::move(s);
    absl::StatusOr<std::unique_ptr<Communicator>> c =
        MakeNcclCommunicator(*session_, NcclOptions{.timeout = std::chrono::seconds(20)});
    ASSERT_TRUE(c.ok()) << c.status();
    comm_ = *std::move(c);
  }
  template <typename T>
  T* Device(const std::vector<T>& host) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, host.size() * sizeof(T) + 16), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
    buffers_.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  std::vector<T> Host(const T* device, size_t n) {
    std::vector<T> out(n);
    EXPECT_EQ(cudaMemcpy(out.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
  void TearDown() override {
    comm_.reset();
    for (void* p : buffers_) cudaFree(p);
  }

  std::unique_ptr<MpiSession> session_;
  std::unique_ptr<Communicator> comm_;
  std::vector<void*> buffers_;
};

TEST_F(NcclTest, GroupOfOne) {
  EXPECT_EQ(comm_->name(), "nccl");
  EXPECT_EQ(comm_->size(), session_->size());
  ASSERT_EQ(comm_->size(), 1) << "run standalone (R = 1)";
  std::vector<int64_t> counts{4096}, recv_counts{0};
  ASSERT_TRUE(comm_->ExchangeCounts(counts, recv_counts).ok());
  EXPECT_EQ(recv_counts[0], 4096);

  std::vector<uint8_t> bytes(4096);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 13 + 1);
  uint8_t* send = Device(bytes);
  uint8_t* recv = Device(std::vector<uint8_t>(4096, 0));
  absl::Status s = comm_->AllToAllV(send, counts, recv, counts);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(Host(recv, 4096), bytes);
  std::vector<int64_t> zero{0};
  ASSERT_TRUE(comm_->AllToAllV(nullptr, zero, nullptr, zero).ok());

  std::vector<float> f{1.5f, -2.f, 3.25f};
  float* df = Device(f);
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
    ASSERT_TRUE(comm_->AllReduce(df, 3, op).ok());
    EXPECT_EQ(Host(df, 3), f);
  }
  std::vector<int64_t> v{int64_t{1} << 40, -7};
  int64_t* dv = Device(v);
  ASSERT_TRUE(comm_->AllReduce(dv, 2, ReduceOp::kSum).ok());
  EXPECT_EQ(Host(dv, 2), v);
  ASSERT_TRUE(comm_->Broadcast(send, 4096, 0).ok());
  EXPECT_EQ(Host(send, 4096), bytes);
  EXPECT_TRUE(absl::IsInvalidArgument(comm_->Broadcast(send, 4096, 1)));
  ASSERT_TRUE(comm_->Barrier().ok());
  EXPECT_TRUE(comm_->health().ok());
}

// A stream blocked by a 3 s host callback: the barrier times out at 1 s, the communicator is
// aborted and poisoned, and the next call fails at once.
TEST_F(NcclTest, WatchdogOnAStuckStream) {
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  comm_.reset();
  absl::StatusOr<std::unique_ptr<Communicator>> c = MakeNcclCommunicator(
      *session_, NcclOptions{.timeout = std::chrono::seconds(1), .stream = stream});
  ASSERT_TRUE(c.ok()) << c.status();
  comm_ = *std::move(c);
  ASSERT_EQ(cudaLaunchHostFunc(
                stream, [](void*) { sleep(3); }, nullptr),
            cudaSuccess);
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = comm_->Barrier();
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_GE(waited, std::chrono::milliseconds(900));
  EXPECT_LT(waited, std::chrono::milliseconds(3500)) << "the abort waited for the stream";
  const auto again_start = std::chrono::steady_clock::now();
  EXPECT_EQ(comm_->Barrier(), s);
  EXPECT_LT(std::chrono::steady_clock::now() - again_start, std::chrono::milliseconds(50));
  comm_.reset();
  cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace nextserve::comm
