#include "sampling/row_step.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "sampling/params.h"
#include "sampling/philox.h"

namespace nextserve::sampling {
namespace {

using internal::Cut;
using internal::kKeepFinite;
using internal::RowScratch;
using internal::RowStep;
using internal::ThreadScratch;

constexpr float kInf = std::numeric_limits<float>::infinity();

absl::Status Bad(absl::string_view field, absl::string_view rule, double value) {
  return absl::InvalidArgumentError(absl::StrCat("'", field, "' must be ", rule, ", got ", value));
}

// Ids in [0, vocab_size), each at most once (a repeated id would apply its transform twice).
// `marks` is a zeroed vocab_size buffer; it is zeroed again on return.
absl::Status CheckIds(absl::string_view field, std::span<const int32_t> ids, int64_t vocab_size,
                      std::vector<uint8_t>& marks) {
  absl::Status status;
  size_t i = 0;
  for (; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "'", field, "[", i, "]' = ", ids[i], " is not a token id in [0, ", vocab_size, ")"));
      break;
    }
    if (marks[ids[i]]) {
      status = absl::InvalidArgumentError(
          absl::StrCat("'", field, "[", i, "]' = ", ids[i], " is listed twice"));
      break;
    }
    marks[ids[i]] = 1;
  }
  for (size_t j = 0; j < i; ++j) marks[ids[j]] = 0;
  return status;
}

// Smallest float x with (x - m) / t >= log_min_p (evaluated in double, as the top-k path tests
// each token): min-p's logit threshold.
float MinPThreshold(float m, double t, double log_min_p) {
  auto keeps = [&](float x) { return (static_cast<double>(x) - m) / t >= log_min_p; };
  float x = static_cast<float>(m + log_min_p * t);
  while (!keeps(x)) x = std::nextafter(x, kInf);
  for (float y = std::nextafter(x, -kInf); keeps(y); y = std::nextafter(x, -kInf)) x = y;
  return x;
}

}  // namespace

absl::Status CheckRow(const kernels::SamplingRow& row, int64_t vocab_size) {
  if (vocab_size <= 0 || vocab_size > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size ", vocab_size, " must be in [1, 2^31)"));
  }
  // Written as !(in range) so that NaN fails too.
  if (!(row.temperature >= 0.0f) || std::isinf(row.temperature)) {
    return Bad("temperature", "finite and >= 0", row.temperature);
  }
  if (row.top_k < -1) return Bad("top_k", "-1 or 0 (disabled) or >= 1", row.top_k);
  if (!(row.top_p > 0.0f && row.top_p <= 1.0f)) return Bad("top_p", "in (0, 1]", row.top_p);
  if (!(row.min_p >= 0.0f && row.min_p <= 1.0f)) return Bad("min_p", "in [0, 1]", row.min_p);
  if (!(row.repetition_penalty > 0.0f) || std::isinf(row.repetition_penalty)) {
    return Bad("repetition_penalty", "finite and > 0", row.repetition_penalty);
  }
  if (!(row.presence_penalty >= -2.0f && row.presence_penalty <= 2.0f)) {
    return Bad("presence_penalty", "in [-2, 2]", row.presence_penalty);
  }
  if (!(row.frequency_penalty >= -2.0f && row.frequency_penalty <= 2.0f)) {
    return Bad("frequency_penalty", "in [-2, 2]", row.frequency_penalty);
  }
  if (row.output_counts.size() != row.output_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'output_counts' has ", row.output_counts.size(),
                                                   " entries, ", "'output_ids' ",
                                                   row.output_ids.size()));
  }
  for (size_t i = 0; i < row.output_counts.size(); ++i) {
    if (row.output_counts[i] < 1)
      return Bad(absl::StrCat("output_counts[", i, "]"), ">= 1", row.output_counts[i]);
  }
  if (row.bias_values.size() != row.bias_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'bias_values' has ", row.bias_values.size(),
                                                   " entries, 'bias_ids' ", row.bias_ids.size()));
  }
  for (size_t i = 0; i < row.bias_values.size(); ++i) {
    if (!(row.bias_values[i] >= -100.0f && row.bias_values[i] <= 100.0f)) {
      return Bad(absl::StrCat("bias_values[", i, "]"), "in [-100, 100]", row.bias_values[i]);
    }
  }
  std::vector<uint8_t>& marks = ThreadScratch().marks;
  if (static_cast<int64_t>(marks.size()) < vocab_size) marks.resize(vocab_size, 0);
  for (const auto& [field, ids] :
       {std::pair<absl::string_view, std::span<const int32_t>>{"seen", row.seen},
        {"output_ids", row.output_ids},
        {"banned", row.banned},
        {"bias_ids", row.bias_ids}}) {
    if (absl::Status s = CheckIds(field, ids, vocab_size, marks); !s.ok()) return s;
  }
  return absl::OkStatus();
}

namespace internal {

RowScratch& ThreadScratch() {
  thread_local RowScratch scratch;
  return scratch;
}

void ReserveThreadScratch(int64_t vocab_size) {
  RowScratch& s = ThreadScratch();
  const size_t n = static_cast<size_t>(vocab_size);
  if (s.marks.size() >= n) return;  // marks is resized last: the others are reserved already
  s.w.reserve(n);
  s.e.reserve(n);
  s.block_sums.reserve(static_cast<size_t>(NumBlocks(vocab_size)));
  s.kept.reserve(n);
  s.kept_e.reserve(n);
  s.by_id.reserve(n);
  s.top_k.seen.reserve(n);
  s.top_k.heap.reserve(n);
  s.marks.resize(n, 0);
}

double RowStep::Logprob(int64_t i) const {
  return (static_cast<double>(w[i]) - max) / t - std::log(total);
}

absl::StatusOr<RowStep> PrepareRow(std::span<const float> logits, const kernels::SamplingRow& p,
                                   bool want_logprobs) {
  RowScratch& s = ThreadScratch();
  const int64_t n = static_cast<int64_t>(logits.size());

  // Steps 1-4 touch only listed tokens: copy the row only when one applies.
  const bool mask = !p.banned.empty();
  const bool repeat = p.repetition_penalty != 1.0f && !p.seen.empty();
  const bool counted =
      (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) && !p.output_ids.empty();
  const float* w = logits.data();
  int64_t masked_bad = -1;  // a NaN/+inf that the min_tokens mask would hide
  if (mask || repeat || counted || !p.bias_ids.empty()) {
    s.w.assign(logits.begin(), logits.end());
    float* v = s.w.data();
    if (mask) {
      for (int32_t t : p.banned) {
        if (!(v[t] < kInf)) masked_bad = masked_bad < 0 ? t : std::min<int64_t>(masked_bad, t);
        v[t] = -kInf;
      }
    }
    for (size_t j = 0; j < p.bias_ids.size(); ++j) v[p.bias_ids[j]] += p.bias_values[j];
    if (repeat) {
      const float rp = p.repetition_penalty;
      for (int32_t t : p.seen) v[t] = v[t] > 0 ? v[t] / rp : v[t] * rp;
    }
    if (counted) {
      for (size_t j = 0; j < p.output_ids.size(); ++j) {
        const int32_t t = p.output_ids[j];
        v[t] -= p.frequency_penalty * static_cast<float>(p.output_counts[j]);
        v[t] -= p.presence_penalty;
      }
    }
    w = v;
  }

  const RowMax row = MaxAndCheck(w, n);
  if (row.first_bad >= 0 || masked_bad >= 0) {
    const int64_t bad = row.first_bad < 0 ? masked_bad
                        : masked_bad < 0  ? row.first_bad
                                          : std::min(row.first_bad, masked_bad);
    return absl::InvalidArgumentError(
        absl::StrCat("logits[", bad, "] is ", logits[bad], "; NaN and +inf are not allowed"));
  }
  if (row.max == -kInf) {
    return absl::InvalidArgumentError(
        absl::StrCat("every token is masked (-inf) at step ", p.draw));
  }
  RowStep st;
  st.w = w;
  st.n = n;
  st.max = row.max;
  const float m = row.max;

  if (p.temperature < kGreedyTemperature) {
    st.argmax = FirstEqual(w, n, m);
    if (!want_logprobs) return st;
    // Logprobs of the untruncated distribution at temperature 1.
    s.e.resize(n);
    s.block_sums.resize(NumBlocks(n));
    st.total = ExpAndBlockSums(w, n, m, 1.0f, s.e.data(), s.block_sums.data());
    return st;
  }

  const float inv_t = 1.0f / p.temperature;
  st.t = p.temperature;
  const double log_min_p = p.min_p > 0 ? std::log(static_cast<double>(p.min_p)) : 0.0;

  if (p.top_k >= 1 && p.top_k < n) {
    // Top-k path: everything after happens on the (small) survivor list, in order.
    s.kept.clear();
    TopKWithTies(w, n, p.top_k, &s.kept, &s.top_k);
    SortInOrder(w, s.kept);
    s.kept_e.resize(s.kept.size());
    for (size_t j = 0; j < s.kept.size(); ++j) {
      s.kept_e[j] = ExpNonPositive((w[s.kept[j]] - m) * inv_t);
    }
    size_t k = s.kept.size();
    if (p.top_p < 1.0f) {
      const double mass = p.top_p * std::accumulate(s.kept_e.begin(), s.kept_e.end(), 0.0);
      double cum = 0;
      for (size_t j = 0; j < k; ++j) {
        cum += s.kept_e[j];
        if (cum >= mass) {
          k = j + 1;
          break;
        }
      }
    }
    if (p.min_p > 0) {
      for (size_t j = 1; j < k; ++j) {  // the first is the max: always kept
        if (!((static_cast<double>(w[s.kept[j]]) - m) / st.t >= log_min_p)) {
          k = j;
          break;
        }
      }
    }
    s.kept.resize(k);
    s.kept_e.resize(k);
    s.by_id.resize(k);
    std::iota(s.by_id.begin(), s.by_id.end(), 0);
    std::sort(s.by_id.begin(), s.by_id.end(),
              [&](int32_t a, int32_t b) { return s.kept[a] < s.kept[b]; });
    st.total = 0;
    for (int32_t j : s.by_id) st.total += s.kept_e[j];
    st.listed = true;
    return st;
  }

  // Whole-row path: weights for every token, then the kept set as a cut.
  s.e.resize(n);
  s.block_sums.resize(NumBlocks(n));
  const double z = ExpAndBlockSums(w, n, m, inv_t, s.e.data(), s.block_sums.data());
  Cut cut = kKeepFinite;
  if (p.top_p < 1.0f) {
    // Bisect on the logit for a band [lo, hi) that holds the boundary: the tokens >= hi hold
    // less than top_p of the mass (all kept), those >= lo at least top_p (all below lo are
    // dropped). Each probe is one vectorised pass; stop once the band is small, then find the
    // exact boundary inside it with a weighted quickselect.
    const double mass = p.top_p * z;
    float lo = -kInf, hi = kInf;
    Mass at_hi{0, 0};
    Mass at_lo{z, n};
    if (const Mass top = MassAtLeast(w, s.e.data(), n, m); top.weight >= mass) {
      lo = m;  // the max (and its ties) already reach top_p
      at_lo = top;
    } else {
      hi = m;
      at_hi = top;
      // Below max - 87 T every weight is 0: that floor already holds all the mass.
      const float floor = static_cast<float>(m - 87.0 * st.t);
      if (const Mass f = MassAtLeast(w, s.e.data(), n, floor); f.weight >= mass) {
        lo = floor;
        at_lo = f;
      }
      // A probe (one vectorised pass over n) costs about what quickselect spends on n / 64
      // band entries (indirect compares): stop there.
      const int64_t small_band = std::max<int64_t>(256, n / 64);
      for (int probe = 0; probe < 48 && lo > -kInf && at_lo.count - at_hi.count > small_band;
           ++probe) {
        const float mid = lo + (hi - lo) * 0.5f;
        if (!(mid > lo && mid < hi)) break;  // float resolution: the band is all ties
        const Mass at_mid = MassAtLeast(w, s.e.data(), n, mid);
        if (at_mid.weight >= mass) {
          lo = mid;
          at_lo = at_mid;
        } else {
          hi = mid;
          at_hi = at_mid;
        }
      }
    }
    CollectBand(w, n, lo, hi, &s.kept);
    const size_t k = PrefixReaching(w, s.e.data(), s.kept, mass - at_hi.weight);
    const int32_t last = s.kept[k - 1];
    cut = {w[last], last};
  }
  if (p.min_p > 0) {
    const float threshold = MinPThreshold(m, st.t, log_min_p);
    if (threshold > cut.x) cut = {threshold, n - 1};
  }
  st.cut = cut;
  st.total = cut.x == -kInf ? z : CutBlockSums(w, s.e.data(), n, cut, s.block_sums.data());
  return st;
}

int64_t PickToken(const RowStep& st, double u) {
  if (st.argmax >= 0) return st.argmax;
  const RowScratch& s = ThreadScratch();
  if (st.listed) {
    const double target = u * st.total;
    double cum = 0;
    int64_t token = -1;
    for (int32_t j : s.by_id) {
      if (s.kept_e[j] <= 0) continue;
      cum += s.kept_e[j];
      token = s.kept[j];
      if (cum > target) break;  // else: rounding fallback keeps the last positive one
    }
    return token;
  }
  return PickInCut(st.w, s.e.data(), st.n, st.cut, s.block_sums.data(), u * st.total);
}

}  // namespace internal

absl::StatusOr<int32_t> SampleRow(std::span<const float> logits, const kernels::SamplingRow& row) {
  absl::StatusOr<RowStep> step = internal::PrepareRow(logits, row, /*want_logprobs=*/false);
  if (!step.ok()) return step.status();
  // One draw per step, greedy or not: draw t depends only on (seed, t).
  return static_cast<int32_t>(internal::PickToken(*step, PhiloxUniform(row.seed, row.draw)));
}

}  // namespace nextserve::sampling
