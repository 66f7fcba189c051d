#include "comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "comm/mpi_communicator.h"
#include "comm/poll.h"

namespace nextserve::comm {
namespace {

ncclRedOp_t ToNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> host, int device,
                   std::chrono::milliseconds timeout)
      : host_(std::move(host)),
        rank_(host_->rank()),
        size_(host_->size()),
        device_(device),
        timeout_(timeout) {}

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (comm_ != nullptr) {  // healthy: finalize (bounded; a lost peer turns it into an abort)
      deadline_ = Clock::now() + timeout_;
      if (Check(ncclCommFinalize(comm_), "destroy").ok()) (void)Settle("destroy");
      if (comm_ != nullptr) ncclCommDestroy(comm_);
    }
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (own_stream_ && stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init(void* stream);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view name() const override { return "nccl"; }
  void set_timeout(std::chrono::milliseconds timeout) override {
    timeout_ = timeout;
    host_->set_timeout(timeout);
  }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  absl::Status health() const override { return poison_; }

  absl::Status ExchangeCounts(std::span<const int64_t> send_counts,
                              std::span<int64_t> recv_counts) override {
    if (!poison_.ok()) return poison_;
    absl::Status s = host_->ExchangeCounts(send_counts, recv_counts);
    if (!s.ok() && !absl::IsInvalidArgument(s)) poison_ = s;
    return s;
  }

  absl::Status AllToAllV(const void* send, std::span<const int64_t> send_counts, void* recv,
                         std::span<const int64_t> recv_counts) override;
  absl::Status AllReduce(float* data, int64_t n, ReduceOp op) override {
    return Reduce(data, n, ncclFloat32, op, "AllReduce(float)");
  }
  absl::Status AllReduce(int64_t* data, int64_t n, ReduceOp op) override {
    return Reduce(data, n, ncclInt64, op, "AllReduce(int64)");
  }
  absl::Status Broadcast(void* data, int64_t bytes, int root) override;
  absl::Status Barrier() override;

 private:
  absl::Status Reduce(void* data, int64_t n, ncclDataType_t type, ReduceOp op,
                      absl::string_view op_name);
  std::string Where(absl::string_view op) const {
    return absl::StrCat("nccl ", op, " on rank ", rank_, " of ", size_, " (device ", device_, ")");
  }
  // Starts a call: fails fast when poisoned, selects the device, sets the deadline.
  absl::Status Begin() {
    if (!poison_.ok()) return poison_;
    if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
      return absl::UnavailableError(
          absl::StrCat("nccl: cudaSetDevice(", device_, "): ", cudaGetErrorString(e)));
    }
    deadline_ = Clock::now() + timeout_;
    return absl::OkStatus();
  }
  absl::Status Check(ncclResult_t r, absl::string_view op) {
    if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
    const char* last = comm_ != nullptr ? ncclGetLastError(comm_) : "";
    return Fail(absl::UnavailableError(absl::StrCat(Where(op), " failed: ", ncclGetErrorString(r),
                                                    last && *last ? ": " : "", last ? last : "")));
  }
  absl::Status CheckCuda(cudaError_t e, absl::string_view op) {
    if (e == cudaSuccess) return absl::OkStatus();
    return Fail(absl::UnavailableError(absl::StrCat(Where(op), ": ", cudaGetErrorString(e))));
  }
  // Poisons, and aborts the NCCL communicator so that its kernels stop waiting for peers.
  absl::Status Fail(absl::Status s) {
    poison_ = s;
    if (comm_ != nullptr) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    return s;
  }
  // Waits until NCCL has enqueued everything (non-blocking mode) and, with `stream`, until the
  // stream has run it; under the watchdog.
  absl::Status Settle(absl::string_view op, bool stream = false);

  std::unique_ptr<Communicator> host_;  // MPI (or single) for the id and the counts
  const int rank_, size_, device_;
  std::chrono::milliseconds timeout_;
  Clock::time_point deadline_;
  absl::Status poison_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool own_stream_ = false;
  float* scratch_ = nullptr;  // one value, for Barrier
};

absl::Status NcclCommunicator::Init(void* stream) {
  if (absl::Status s = Begin(); !s.ok()) return s;
  if (stream != nullptr) {
    stream_ = static_cast<cudaStream_t>(stream);
  } else {
    if (absl::Status s =
            CheckCuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "init (stream)");
        !s.ok())
      return s;
    own_stream_ = true;
  }
  if (absl::Status s = CheckCuda(cudaMalloc(&scratch_, sizeof(float)), "init (scratch)"); !s.ok()) {
    return s;
  }
  ncclUniqueId id{};
  if (rank_ == 0) {
    if (absl::Status s = Check(ncclGetUniqueId(&id), "init (ncclGetUniqueId)"); !s.ok()) return s;
  }
  if (absl::Status s = host_->Broadcast(&id, sizeof(id), 0); !s.ok()) return Fail(s);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once; Settle() polls under the watchdog
  if (absl::Status s = Check(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config),
                             "init (ncclCommInitRankConfig)");
      !s.ok())
    return s;
  return Settle("init");
}

absl::Status NcclCommunicator::Settle(absl::string_view op, bool stream) {
  absl::Status s = PollUntil(
      [&]() -> absl::StatusOr<bool> {
        ncclResult_t state = ncclSuccess;
        if (absl::Status s = Check(ncclCommGetAsyncError(comm_, &state), op); !s.ok()) return s;
        if (absl::Status s = Check(state, op); !s.ok()) return s;
        if (state == ncclInProgress) return false;
        if (!stream) return true;
        cudaError_t e = cudaStreamQuery(stream_);
        if (e == cudaErrorNotReady) return false;
        if (absl::Status s = CheckCuda(e, op); !s.ok()) return s;
        return true;
      },
      deadline_);
  if (s.ok() || !poison_.ok()) return s;
  return Fail(absl::DeadlineExceededError(
      absl::StrCat(Where(op), ": not done within ", FormatSeconds(timeout_),
                   " (a peer did not answer, or the stream is stuck behind other work); the NCCL "
                   "communicator was aborted and this one is now unusable")));
}

absl::Status NcclCommunicator::AllToAllV(const void* send, std::span<const int64_t> send_counts,
                                         void* recv, std::span<const int64_t> recv_counts) {
  constexpr absl::string_view kOp = "AllToAllV";
  if (absl::Status s = Begin(); !s.ok()) return s;
  if (static_cast<int>(send_counts.size()) != size_ ||
      static_cast<int>(recv_counts.size()) != size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(kOp), ": counts need ", size_, " entries"));
  }
  int64_t soff = 0, roff = 0;
  std::vector<int64_t> sdispl(size_), rdispl(size_);
  for (int r = 0; r < size_; ++r) {
    if (send_counts[r] < 0 || recv_counts[r] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(Where(kOp), ": negative count for rank ", r));
    }
    sdispl[r] = soff;
    rdispl[r] = roff;
    soff += send_counts[r];
    roff += recv_counts[r];
  }
  if (send_counts[rank_] != recv_counts[rank_]) {
    return absl::InvalidArgumentError(absl::StrCat(Where(kOp), ": sends ", send_counts[rank_],
                                                   " bytes to itself but receives ",
                                                   recv_counts[rank_]));
  }
  const char* sbuf = static_cast<const char*>(send);
  char* rbuf = static_cast<char*>(recv);
  if (send_counts[rank_] > 0) {
    if (absl::Status s =
            CheckCuda(cudaMemcpyAsync(rbuf + rdispl[rank_], sbuf + sdispl[rank_],
                                      send_counts[rank_], cudaMemcpyDeviceToDevice, stream_),
                      kOp);
        !s.ok())
      return s;
  }
  if (size_ > 1) {
    if (absl::Status s = Check(ncclGroupStart(), kOp); !s.ok()) return s;
    for (int k = 1; k < size_; ++k) {
      const int p = (rank_ + k) % size_;
      if (send_counts[p] > 0) {
        if (absl::Status s = Check(
                ncclSend(sbuf + sdispl[p], send_counts[p], ncclUint8, p, comm_, stream_), kOp);
            !s.ok())
          return s;
      }
      if (recv_counts[p] > 0) {
        if (absl::Status s = Check(
                ncclRecv(rbuf + rdispl[p], recv_counts[p], ncclUint8, p, comm_, stream_), kOp);
            !s.ok())
          return s;
      }
    }
    if (absl::Status s = Check(ncclGroupEnd(), kOp); !s.ok()) return s;
  }
  return Settle(kOp, /*stream=*/true);
}

absl::Status NcclCommunicator::Reduce(void* data, int64_t n, ncclDataType_t type, ReduceOp op,
                                      absl::string_view op_name) {
  if (absl::Status s = Begin(); !s.ok()) return s;
  if (n < 0 || (n > 0 && data == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(Where(op_name), ": bad buffer of ", n));
  }
  if (absl::Status s =
          Check(ncclAllReduce(data, data, n, type, ToNccl(op), comm_, stream_), op_name);
      !s.ok())
    return s;
  return Settle(op_name, /*stream=*/true);
}

absl::Status NcclCommunicator::Broadcast(void* data, int64_t bytes, int root) {
  const std::string op_name = absl::StrCat("Broadcast(root ", root, ")");
  if (absl::Status s = Begin(); !s.ok()) return s;
  if (root < 0 || root >= size_ || bytes < 0 || (bytes > 0 && data == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(Where(op_name), ": bad root or buffer"));
  }
  if (absl::Status s =
          Check(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), op_name);
      !s.ok())
    return s;
  return Settle(op_name, /*stream=*/true);
}

absl::Status NcclCommunicator::Barrier() {
  if (absl::Status s = Begin(); !s.ok()) return s;
  if (absl::Status s = Check(
          ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_), "Barrier");
      !s.ok())
    return s;
  return Settle("Barrier", /*stream=*/true);
}

absl::StatusOr<std::unique_ptr<Communicator>> Make(std::unique_ptr<Communicator> host,
                                                   int local_rank, const NcclOptions& options) {
  int device = options.device;
  if (device < 0) {
    int count = 0;
    if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
      return absl::UnavailableError(absl::StrCat(
          "nccl: no CUDA device: ", e != cudaSuccess ? cudaGetErrorString(e) : "count is 0"));
    }
    device = local_rank % count;
  }
  auto c = std::make_unique<NcclCommunicator>(std::move(host), device, options.timeout);
  if (absl::Status s = c->Init(options.stream); !s.ok()) return s;
  return c;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(MPI_Comm bootstrap,
                                                                   const NcclOptions& options) {
  absl::StatusOr<std::unique_ptr<Communicator>> host =
      MakeMpiCommunicator(bootstrap, options.timeout);
  if (!host.ok()) return host.status();
  int local_rank = 0;
  if (options.device < 0) {
    MPI_Comm node;
    if (MPI_Comm_split_type(bootstrap, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS) {
      return absl::UnavailableError("nccl: MPI_Comm_split_type failed");
    }
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
  }
  return Make(*std::move(host), local_rank, options);
}

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(const MpiSession& session,
                                                                   const NcclOptions& options) {
  absl::StatusOr<std::unique_ptr<Communicator>> host = session.WorldCommunicator(options.timeout);
  if (!host.ok()) return host.status();
  return Make(*std::move(host), session.local_rank(), options);
}

bool CudaDeviceAvailable(std::string* why) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    if (why != nullptr) *why = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device";
    return false;
  }
  return true;
}

}  // namespace nextserve::comm
