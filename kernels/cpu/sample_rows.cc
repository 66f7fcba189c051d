#include "kernels/cpu/sample_rows.h"

#include <atomic>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "sampling/row_step.h"

namespace nextserve::kernels::cpu {
namespace {

absl::Status SampleOne(const float* logits, int64_t vocab, const SamplingRow& row, int32_t* token) {
  if (absl::Status s = sampling::CheckRow(row, vocab); !s.ok()) return s;
  absl::StatusOr<int32_t> t =
      sampling::SampleRow(std::span<const float>(logits, static_cast<size_t>(vocab)), row);
  if (!t.ok()) return t.status();
  *token = *t;
  return absl::OkStatus();
}

}  // namespace

absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                        std::span<const SamplingRow> settings, int32_t* tokens) {
  if (rows < 0 || static_cast<int64_t>(settings.size()) != rows) {
    return absl::InvalidArgumentError(absl::StrCat("SampleRows: ", rows, " logit rows but ",
                                                   settings.size(), " rows of settings"));
  }
  if (vocab <= 0 || vocab > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleRows: vocab ", vocab, " must be in [1, 2^31)"));
  }
  if (rows == 0) return absl::OkStatus();
  if (logits == nullptr || tokens == nullptr) {
    return absl::InvalidArgumentError("SampleRows: logits or tokens is null");
  }
  // The loop only notes the lowest failing row (no Status crosses threads); that row is run
  // again below for its message, which is deterministic.
  std::atomic<int64_t> first_failed{rows};
  // One row (a batch-1 decode step) runs on the calling thread: waking the team costs more than
  // it could share.
#pragma omp parallel if (rows > 1)
  {
    // Every thread of the team, whether or not it gets a row this time, so that no later call
    // allocates on any of them (rows go to threads dynamically, as they finish).
    sampling::internal::ReserveThreadScratch(vocab);
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; ++r) {
      if (!SampleOne(logits + r * vocab, vocab, settings[r], &tokens[r]).ok()) {
        int64_t seen = first_failed.load(std::memory_order_relaxed);
        while (r < seen &&
               !first_failed.compare_exchange_weak(seen, r, std::memory_order_relaxed)) {
        }
      }
    }
  }
  const int64_t r = first_failed.load();
  if (r == rows) return absl::OkStatus();
  int32_t unused;
  const absl::Status s = SampleOne(logits + r * vocab, vocab, settings[r], &unused);
  return absl::Status(s.code(), absl::StrCat("SampleRows: row ", r, ": ", s.message()));
}

}  // namespace nextserve::kernels::cpu
