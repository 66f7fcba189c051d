#include "comm/mpi_communicator.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "comm/poll.h"

namespace nextserve::comm {
namespace {

std::atomic<bool> g_failed{false};
std::atomic<uint64_t> g_instances{0};

constexpr int kTagAllToAll = 7301;

std::string MpiErrorString(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return absl::StrCat("MPI error ", code);
  return std::string(buf, len);
}

absl::string_view OpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

MPI_Op ToMpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_SUM;
}

// Same-host peers publish how many collectives they have entered in a small shared-memory segment,
// so that a timed-out rank can say which of them never arrived (or exited). Diagnosis only.
enum class Op : uint32_t { kSetUp, kExchangeCounts, kAllToAllV, kAllReduce, kBroadcast, kBarrier };
constexpr const char* kOpNames[] = {"set-up",    "ExchangeCounts", "AllToAllV",
                                    "AllReduce", "Broadcast",      "Barrier"};

struct alignas(64) Slot {
  std::atomic<uint64_t> entered;
  std::atomic<uint32_t> op;
  std::atomic<int64_t> pid;
};

// What every rank tells the others when the communicator is made.
struct PeerInfo {
  char host[MPI_MAX_PROCESSOR_NAME];
  int64_t pid;
  uint64_t instance;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int size, const MpiOptions& options)
      : comm_(comm),
        rank_(rank),
        size_(size),
        timeout_(options.timeout),
        max_message_(std::clamp<int64_t>(options.max_message_bytes, 1, INT_MAX)) {}

  ~MpiCommunicator() override {
    if (slots_ != nullptr) munmap(slots_, SegmentBytes());
    int finalized = 0;
    MPI_Finalized(&finalized);
    // A poisoned communicator may have requests in flight: leave it to the process's end.
    if (!finalized && poison_.ok()) MPI_Comm_free(&comm_);
  }

  absl::Status Init();

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view name() const override { return "mpi"; }
  void set_timeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  absl::Status health() const override { return poison_; }

  absl::Status ExchangeCounts(std::span<const int64_t> send_counts,
                              std::span<int64_t> recv_counts) override;
  absl::Status AllToAllV(const void* send, std::span<const int64_t> send_counts, void* recv,
                         std::span<const int64_t> recv_counts) override;
  absl::Status AllReduce(float* data, int64_t n, ReduceOp op) override {
    return Reduce(data, n, op, MPI_FLOAT, "float");
  }
  absl::Status AllReduce(int64_t* data, int64_t n, ReduceOp op) override {
    return Reduce(data, n, op, MPI_INT64_T, "int64");
  }
  absl::Status Broadcast(void* data, int64_t bytes, int root) override;
  absl::Status Barrier() override;

 private:
  template <typename T>
  absl::Status Reduce(T* data, int64_t n, ReduceOp op, MPI_Datatype type, absl::string_view tname);
  // Marks the start of the next collective: its deadline, and its number and kind for same-host
  // peers.
  void Enter(Op op);
  // Waits for `requests` under the watchdog; an error or the deadline poisons the communicator.
  absl::Status Wait(std::span<MPI_Request> requests, absl::string_view op);
  absl::Status Check(int rc, absl::string_view op) {
    if (rc == MPI_SUCCESS) return absl::OkStatus();
    return Poison(absl::UnavailableError(absl::StrCat(Where(op), " failed: ", MpiErrorString(rc),
                                                      ". This communicator is now unusable.")));
  }
  absl::Status Invalid(absl::string_view op, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(Where(op), ": ", what));
  }
  absl::Status Poison(absl::Status s) {
    poison_ = s;
    g_failed = true;
    return s;
  }
  absl::Status CheckCounts(std::span<const int64_t> counts, absl::string_view what,
                           absl::string_view op) const;
  std::string Where(absl::string_view op) const {
    const std::string which =
        set_up_ == 0 ? "set-up" : absl::StrCat("collective #", entered_ - set_up_);
    return absl::StrCat("mpi ", op, " (", which, ") on rank ", rank_, " of ", size_);
  }
  std::string Laggards() const;
  size_t SegmentBytes() const { return sizeof(Slot) * size_; }

  MPI_Comm comm_;
  const int rank_, size_;
  std::chrono::milliseconds timeout_;
  const int64_t max_message_;
  absl::Status poison_;
  uint64_t entered_ = 0;  // collectives entered, set-up included
  uint64_t set_up_ = 0;   // how many of them were the set-up (0 while it runs)
  Op op_ = Op::kSetUp;
  Clock::time_point start_, deadline_;
  std::vector<int64_t> counts_send_, counts_recv_;  // staging for ExchangeCounts
  std::vector<int> scounts_, sdispls_, rcounts_, rdispls_;
  // Diagnosis: the shared slots and, per rank, its pid when it shares them (else 0).
  Slot* slots_ = nullptr;
  std::vector<int64_t> peer_pid_;
};

absl::Status MpiCommunicator::Init() {
  scounts_.resize(size_);
  sdispls_.resize(size_);
  rcounts_.resize(size_);
  rdispls_.resize(size_);
  counts_send_.resize(size_);
  counts_recv_.resize(size_);
  peer_pid_.assign(size_, 0);

  PeerInfo me{};
  int len = 0;
  MPI_Get_processor_name(me.host, &len);
  me.pid = getpid();
  me.instance = g_instances++;
  std::vector<PeerInfo> all(size_);
  Enter(Op::kSetUp);
  MPI_Request req;
  if (absl::Status s = Check(MPI_Iallgather(&me, sizeof(PeerInfo), MPI_BYTE, all.data(),
                                            sizeof(PeerInfo), MPI_BYTE, comm_, &req),
                             "init");
      !s.ok())
    return s;
  if (absl::Status s = Wait({&req, 1}, "init"); !s.ok()) return s;

  // The lowest rank on this host makes the segment; the others open it after a barrier.
  int leader = rank_;
  for (int r = 0; r < size_; ++r) {
    if (std::strncmp(all[r].host, me.host, sizeof(me.host)) == 0) {
      leader = r;
      break;
    }
  }
  const std::string name =
      absl::StrCat("/nextserve-comm-", all[leader].pid, "-", all[leader].instance);
  auto map = [&](int flags) -> Slot* {
    int fd = shm_open(name.c_str(), flags, 0600);
    if (fd < 0) return nullptr;
    void* p = MAP_FAILED;
    if ((flags & O_CREAT) == 0 || ftruncate(fd, SegmentBytes()) == 0) {
      p = mmap(nullptr, SegmentBytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    close(fd);
    return p == MAP_FAILED ? nullptr : static_cast<Slot*>(p);
  };
  if (leader == rank_) slots_ = map(O_CREAT | O_EXCL | O_RDWR);
  for (int round = 0; round < 2; ++round) {
    Enter(Op::kSetUp);
    if (absl::Status s = Check(MPI_Ibarrier(comm_, &req), "init"); !s.ok()) return s;
    if (absl::Status s = Wait({&req, 1}, "init"); !s.ok()) return s;
    if (round == 0 && leader != rank_) slots_ = map(O_RDWR);
    if (round == 1 && leader == rank_ && slots_ != nullptr) shm_unlink(name.c_str());
  }
  // Without the segment (another /dev/shm under the same host name, say) peers are "unknown".
  if (slots_ != nullptr) {
    slots_[rank_].op.store(static_cast<uint32_t>(Op::kSetUp), std::memory_order_relaxed);
    slots_[rank_].entered.store(entered_, std::memory_order_release);
    slots_[rank_].pid.store(me.pid, std::memory_order_release);
    for (int r = 0; r < size_; ++r) {
      if (std::strncmp(all[r].host, me.host, sizeof(me.host)) == 0) peer_pid_[r] = all[r].pid;
    }
  }
  set_up_ = entered_;
  return absl::OkStatus();
}

void MpiCommunicator::Enter(Op op) {
  ++entered_;
  op_ = op;
  if (slots_ != nullptr) {
    slots_[rank_].op.store(static_cast<uint32_t>(op), std::memory_order_relaxed);
    slots_[rank_].entered.store(entered_, std::memory_order_release);
  }
  start_ = Clock::now();
  deadline_ = start_ + timeout_;
}

absl::Status MpiCommunicator::Wait(std::span<MPI_Request> requests, absl::string_view op) {
  std::vector<MPI_Status> statuses(requests.size());
  absl::Status s = PollUntil(
      [&]() -> absl::StatusOr<bool> {
        int done = 0;
        int rc = MPI_Testall(requests.size(), requests.data(), &done, statuses.data());
        if (rc == MPI_ERR_IN_STATUS) {
          for (const MPI_Status& st : statuses) {
            if (st.MPI_ERROR != MPI_SUCCESS && st.MPI_ERROR != MPI_ERR_PENDING) {
              rc = st.MPI_ERROR;
              break;
            }
          }
        }
        if (rc != MPI_SUCCESS) return Check(rc, op);
        return done != 0;
      },
      deadline_);
  if (s.ok() || !poison_.ok()) return s;
  return Poison(absl::DeadlineExceededError(absl::StrCat(Where(op), ": no answer within ",
                                                         FormatSeconds(timeout_), "; ", Laggards(),
                                                         ". This communicator is now unusable.")));
}

std::string MpiCommunicator::Laggards() const {
  std::vector<int> exited, absent, unknown;
  std::vector<std::string> elsewhere;  // in another collective: called in a different order
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    const int64_t pid = peer_pid_[r];
    if (slots_ == nullptr || pid == 0 || slots_[r].pid.load(std::memory_order_acquire) != pid) {
      unknown.push_back(r);
      continue;
    }
    const uint64_t entered = slots_[r].entered.load(std::memory_order_acquire);
    const uint32_t op = slots_[r].op.load(std::memory_order_relaxed);
    if (kill(pid, 0) != 0 && errno == ESRCH) {
      exited.push_back(r);
    } else if (entered < entered_) {
      absent.push_back(r);
    } else if (entered == entered_ && op != static_cast<uint32_t>(op_) &&
               op < std::size(kOpNames)) {
      elsewhere.push_back(absl::StrCat(r, " (", kOpNames[op], ")"));
    }
  }
  auto ranks = [](const auto& v) {
    return absl::StrCat(v.size() == 1 ? "rank " : "ranks ", absl::StrJoin(v, ", "));
  };
  std::vector<std::string> parts;
  if (!exited.empty()) parts.push_back(absl::StrCat("exited: ", ranks(exited)));
  if (!absent.empty()) parts.push_back(absl::StrCat("not yet in this collective: ", ranks(absent)));
  if (!elsewhere.empty()) {
    parts.push_back(
        absl::StrCat("in a different collective (calls out of order): ", ranks(elsewhere)));
  }
  if (!unknown.empty()) {
    parts.push_back(absl::StrCat("on other hosts, state unknown: ", ranks(unknown)));
  }
  if (parts.empty())
    return "every peer on this host is in it or past it (one may have died inside it)";
  return absl::StrJoin(parts, "; ");
}

absl::Status MpiCommunicator::CheckCounts(std::span<const int64_t> counts, absl::string_view what,
                                          absl::string_view op) const {
  if (static_cast<int>(counts.size()) != size_) {
    return Invalid(op, absl::StrCat(what, " has ", counts.size(), " entries, want ", size_));
  }
  for (int r = 0; r < size_; ++r) {
    if (counts[r] < 0) return Invalid(op, absl::StrCat(what, "[", r, "] = ", counts[r]));
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::ExchangeCounts(std::span<const int64_t> send_counts,
                                             std::span<int64_t> recv_counts) {
  constexpr absl::string_view kOp = "ExchangeCounts";
  if (!poison_.ok()) return poison_;
  if (absl::Status s = CheckCounts(send_counts, "send_counts", kOp); !s.ok()) return s;
  if (static_cast<int>(recv_counts.size()) != size_) {
    return Invalid(kOp, absl::StrCat("recv_counts has ", recv_counts.size(), " entries"));
  }
  Enter(Op::kExchangeCounts);
  std::copy(send_counts.begin(), send_counts.end(), counts_send_.begin());
  MPI_Request req;
  if (absl::Status s = Check(MPI_Ialltoall(counts_send_.data(), 1, MPI_INT64_T, counts_recv_.data(),
                                           1, MPI_INT64_T, comm_, &req),
                             kOp);
      !s.ok())
    return s;
  if (absl::Status s = Wait({&req, 1}, kOp); !s.ok()) return s;
  std::copy(counts_recv_.begin(), counts_recv_.end(), recv_counts.begin());
  return absl::OkStatus();
}

absl::Status MpiCommunicator::AllToAllV(const void* send, std::span<const int64_t> send_counts,
                                        void* recv, std::span<const int64_t> recv_counts) {
  constexpr absl::string_view kOp = "AllToAllV";
  if (!poison_.ok()) return poison_;
  if (absl::Status s = CheckCounts(send_counts, "send_counts", kOp); !s.ok()) return s;
  if (absl::Status s = CheckCounts(recv_counts, "recv_counts", kOp); !s.ok()) return s;
  int64_t send_total = 0, recv_total = 0;
  for (int r = 0; r < size_; ++r) {
    send_total += send_counts[r];
    recv_total += recv_counts[r];
  }
  if ((send_total > 0 && send == nullptr) || (recv_total > 0 && recv == nullptr)) {
    return Invalid(kOp, "null buffer with a non-zero count");
  }
  if (send_counts[rank_] != recv_counts[rank_]) {
    return Invalid(kOp, absl::StrCat("sends ", send_counts[rank_], " bytes to itself but receives ",
                                     recv_counts[rank_]));
  }
  Enter(Op::kAllToAllV);
  // Two distinct placeholders: OpenMPI's Ialltoallv takes sendbuf == recvbuf as "in place", and a
  // rank that does so while its peers do not hangs the next collective.
  static char send_dummy[1], recv_dummy[1];
  const char* sbuf = send_total > 0 ? static_cast<const char*>(send) : send_dummy;
  char* rbuf = recv_total > 0 ? static_cast<char*>(recv) : recv_dummy;

  // Int-sized: one MPI_Ialltoallv. Otherwise point-to-point messages of at most max_message_.
  if (send_total <= max_message_ && recv_total <= max_message_) {
    int soff = 0, roff = 0;
    for (int r = 0; r < size_; ++r) {
      scounts_[r] = static_cast<int>(send_counts[r]);
      sdispls_[r] = soff;
      soff += scounts_[r];
      rcounts_[r] = static_cast<int>(recv_counts[r]);
      rdispls_[r] = roff;
      roff += rcounts_[r];
    }
    MPI_Request req;
    if (absl::Status s =
            Check(MPI_Ialltoallv(sbuf, scounts_.data(), sdispls_.data(), MPI_BYTE, rbuf,
                                 rcounts_.data(), rdispls_.data(), MPI_BYTE, comm_, &req),
                  kOp);
        !s.ok())
      return s;
    return Wait({&req, 1}, kOp);
  }

  std::vector<int64_t> soffs(size_ + 1, 0), roffs(size_ + 1, 0);
  for (int r = 0; r < size_; ++r) {
    soffs[r + 1] = soffs[r] + send_counts[r];
    roffs[r + 1] = roffs[r] + recv_counts[r];
  }
  std::vector<MPI_Request> reqs;
  for (int k = 1; k < size_; ++k) {  // receives first, then sends, starting at the next rank
    const int p = (rank_ + k) % size_;
    for (int64_t off = 0; off < recv_counts[p]; off += max_message_) {
      const int n = static_cast<int>(std::min(max_message_, recv_counts[p] - off));
      MPI_Request req;
      if (absl::Status s = Check(
              MPI_Irecv(rbuf + roffs[p] + off, n, MPI_BYTE, p, kTagAllToAll, comm_, &req), kOp);
          !s.ok())
        return s;
      reqs.push_back(req);
    }
  }
  for (int k = 1; k < size_; ++k) {
    const int p = (rank_ + k) % size_;
    for (int64_t off = 0; off < send_counts[p]; off += max_message_) {
      const int n = static_cast<int>(std::min(max_message_, send_counts[p] - off));
      MPI_Request req;
      if (absl::Status s = Check(
              MPI_Isend(sbuf + soffs[p] + off, n, MPI_BYTE, p, kTagAllToAll, comm_, &req), kOp);
          !s.ok())
        return s;
      reqs.push_back(req);
    }
  }
  if (send_counts[rank_] > 0) {
    std::memcpy(rbuf + roffs[rank_], sbuf + soffs[rank_], send_counts[rank_]);
  }
  return Wait(reqs, kOp);
}

template <typename T>
absl::Status MpiCommunicator::Reduce(T* data, int64_t n, ReduceOp op, MPI_Datatype type,
                                     absl::string_view tname) {
  const std::string op_name = absl::StrCat("AllReduce(", tname, ", ", OpName(op), ")");
  if (!poison_.ok()) return poison_;
  if (n < 0 || (n > 0 && data == nullptr)) {
    return Invalid(op_name, absl::StrCat("bad buffer of ", n, " values"));
  }
  Enter(Op::kAllReduce);
  const int64_t chunk = std::max<int64_t>(1, max_message_ / static_cast<int64_t>(sizeof(T)));
  int64_t off = 0;
  do {  // at least once, so that n == 0 still meets the peers
    const int count = static_cast<int>(std::min(chunk, n - off));
    MPI_Request req;
    if (absl::Status s = Check(
            MPI_Iallreduce(MPI_IN_PLACE, data + off, count, type, ToMpi(op), comm_, &req), op_name);
        !s.ok())
      return s;
    if (absl::Status s = Wait({&req, 1}, op_name); !s.ok()) return s;
    off += count;
  } while (off < n);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Broadcast(void* data, int64_t bytes, int root) {
  const std::string op_name = absl::StrCat("Broadcast(root ", root, ")");
  if (!poison_.ok()) return poison_;
  if (root < 0 || root >= size_) return Invalid(op_name, "root out of range");
  if (bytes < 0 || (bytes > 0 && data == nullptr)) {
    return Invalid(op_name, absl::StrCat("bad buffer of ", bytes, " bytes"));
  }
  Enter(Op::kBroadcast);
  char* p = static_cast<char*>(data);
  int64_t off = 0;
  do {
    const int count = static_cast<int>(std::min(max_message_, bytes - off));
    MPI_Request req;
    if (absl::Status s = Check(MPI_Ibcast(p + off, count, MPI_BYTE, root, comm_, &req), op_name);
        !s.ok())
      return s;
    if (absl::Status s = Wait({&req, 1}, op_name); !s.ok()) return s;
    off += count;
  } while (off < bytes);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Barrier() {
  if (!poison_.ok()) return poison_;
  Enter(Op::kBarrier);
  MPI_Request req;
  if (absl::Status s = Check(MPI_Ibarrier(comm_, &req), "Barrier"); !s.ok()) return s;
  return Wait({&req, 1}, "Barrier");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(
    MPI_Comm comm, std::chrono::milliseconds timeout) {
  return MakeMpiCommunicator(comm, MpiOptions{.timeout = timeout});
}

absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(MPI_Comm comm,
                                                                  const MpiOptions& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return absl::FailedPreconditionError("mpi: MPI is not initialized");
  int rank = 0, size = 0;
  if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS) {
    return absl::InvalidArgumentError("mpi: not a valid communicator");
  }
  // The duplicate: made non-blocking so that a missing peer cannot hang it.
  MPI_Comm dup = MPI_COMM_NULL;
  MPI_Request req;
  int rc = MPI_Comm_idup(comm, &dup, &req);
  if (rc != MPI_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("mpi: MPI_Comm_idup: ", MpiErrorString(rc)));
  }
  absl::Status s = PollUntil(
      [&]() -> absl::StatusOr<bool> {
        int done = 0;
        int rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
          return absl::UnavailableError(absl::StrCat("mpi: MPI_Comm_idup: ", MpiErrorString(rc)));
        }
        return done != 0;
      },
      Clock::now() + options.timeout);
  if (absl::IsDeadlineExceeded(s)) {
    g_failed = true;
    return absl::DeadlineExceededError(
        absl::StrCat("mpi: making the communicator of ", size, " ranks on rank ", rank,
                     ": a peer did not join within ", FormatSeconds(options.timeout)));
  }
  if (!s.ok()) return s;
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  auto c = std::make_unique<MpiCommunicator>(dup, rank, size, options);
  if (absl::Status s = c->Init(); !s.ok()) return s;
  return c;
}

bool AnyMpiCommunicatorFailed() {
  return g_failed.load();
}

}  // namespace nextserve::comm
