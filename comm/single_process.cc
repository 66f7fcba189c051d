// The group of one process: every collective is a local copy (or nothing).
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "comm/communicator.h"

namespace nextserve::comm {
namespace {

absl::Status CheckOne(std::span<const int64_t> counts, absl::string_view what) {
  if (counts.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("single: ", what, " has ", counts.size(), " entries, want 1"));
  }
  if (counts[0] < 0) {
    return absl::InvalidArgumentError(absl::StrCat("single: ", what, "[0] = ", counts[0]));
  }
  return absl::OkStatus();
}

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string_view name() const override { return "single"; }

  absl::Status ExchangeCounts(std::span<const int64_t> send_counts,
                              std::span<int64_t> recv_counts) override {
    if (absl::Status s = CheckOne(send_counts, "send_counts"); !s.ok()) return s;
    if (recv_counts.size() != 1) return CheckOne(recv_counts, "recv_counts");
    recv_counts[0] = send_counts[0];
    return absl::OkStatus();
  }

  absl::Status AllToAllV(const void* send, std::span<const int64_t> send_counts, void* recv,
                         std::span<const int64_t> recv_counts) override {
    if (absl::Status s = CheckOne(send_counts, "send_counts"); !s.ok()) return s;
    if (absl::Status s = CheckOne(recv_counts, "recv_counts"); !s.ok()) return s;
    if (send_counts[0] != recv_counts[0]) {
      return absl::InvalidArgumentError(absl::StrCat("single: AllToAllV sends ", send_counts[0],
                                                     " bytes to itself but receives ",
                                                     recv_counts[0]));
    }
    if (send_counts[0] > 0 && send != recv) std::memmove(recv, send, send_counts[0]);
    return absl::OkStatus();
  }

  absl::Status AllReduce(float*, int64_t, ReduceOp) override { return absl::OkStatus(); }
  absl::Status AllReduce(int64_t*, int64_t, ReduceOp) override { return absl::OkStatus(); }

  absl::Status Broadcast(void*, int64_t, int root) override {
    if (root != 0) return absl::InvalidArgumentError(absl::StrCat("single: root ", root));
    return absl::OkStatus();
  }

  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace

std::unique_ptr<Communicator> MakeSingleProcessCommunicator() {
  return std::make_unique<SingleProcessCommunicator>();
}

}  // namespace nextserve::comm
