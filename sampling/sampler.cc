#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "sampling/philox.h"
#include "sampling/row_ops.h"

namespace nextserve::sampling {
namespace {

using internal::Cut;
using internal::kKeepFinite;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Per-thread buffers, reused across steps and requests (a Sampler itself stays small).
struct Scratch {
  std::vector<float> w;            // processed logits, when steps 1-4 change anything
  std::vector<float> e;            // weights exp((w - max) / T) over the row
  std::vector<double> block_sums;  // sums of kept weights per internal::kBlock tokens
  std::vector<int32_t> kept;       // top-k path: kept ids in order; top-p path: candidates
  std::vector<float> kept_e;       // top-k path: their weights
  std::vector<int32_t> by_id;      // top-k path: positions in `kept`, by increasing token id
  std::vector<int32_t> top;        // top logprobs candidates
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
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

// One step: the processed row (steps 1-4) and, for sampling or logprobs, the kept set with its
// weights e = exp((w - max) / T), either listed (top-k path) or as a cut over the row.
struct Sampler::Step {
  const float* w = nullptr;
  int64_t n = 0;
  float max = 0;
  int64_t argmax = -1;  // greedy only
  double t = 1;         // temperature (1 for greedy logprobs)
  double total = 0;     // sum of kept weights
  bool listed = false;
  Cut cut = kKeepFinite;  // !listed: kept tokens; weights in scratch e

  double Logprob(int64_t i) const {
    return (static_cast<double>(w[i]) - max) / t - std::log(total);
  }
};

absl::StatusOr<Sampler> Sampler::Create(const SamplingParams& params, int64_t vocab_size,
                                        std::span<const int32_t> prompt_tokens,
                                        std::span<const int32_t> eos_token_ids,
                                        int64_t already_generated) {
  if (absl::Status s = params.Validate(vocab_size); !s.ok()) return s;
  if (already_generated < 0 || already_generated > static_cast<int64_t>(prompt_tokens.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampler: already_generated = ", already_generated, " is not in [0, ",
                     prompt_tokens.size(), "] (the prompt's size)"));
  }
  auto check_ids = [&](absl::string_view what, std::span<const int32_t> ids) -> absl::Status {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sampler: ", what, "[", i, "] = ", ids[i],
                                                       " is not a token id in [0, ", vocab_size,
                                                       ")"));
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status s = check_ids("prompt_tokens", prompt_tokens); !s.ok()) return s;
  if (absl::Status s = check_ids("eos_token_ids", eos_token_ids); !s.ok()) return s;

  Sampler r;
  r.params_ = params;
  r.vocab_size_ = vocab_size;
  if (params.seed.has_value()) {
    r.seed_ = *params.seed;
  } else {
    std::random_device device;
    r.seed_ = (uint64_t{device()} << 32) ^ device();
  }
  r.stop_ids_ = params.stop_token_ids;
  if (!params.ignore_eos)
    r.stop_ids_.insert(r.stop_ids_.end(), eos_token_ids.begin(), eos_token_ids.end());
  std::sort(r.stop_ids_.begin(), r.stop_ids_.end());
  r.stop_ids_.erase(std::unique(r.stop_ids_.begin(), r.stop_ids_.end()), r.stop_ids_.end());
  if (params.repetition_penalty != 1.0f) r.seen_.insert(prompt_tokens.begin(), prompt_tokens.end());
  // A resumed request's output so far: the same bookkeeping as if Sample had produced it.
  r.num_generated_ = already_generated;
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    for (int32_t t : prompt_tokens.last(static_cast<size_t>(already_generated))) ++r.counts_[t];
  }
  return r;
}

bool Sampler::IsStop(int32_t token) const {
  return std::binary_search(stop_ids_.begin(), stop_ids_.end(), token);
}

absl::StatusOr<Sampler::Step> Sampler::Prepare(std::span<const float> logits,
                                               bool want_logprobs) const {
  if (static_cast<int64_t>(logits.size()) != vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat("sampler: logits row has ", logits.size(),
                                                   " entries, vocabulary has ", vocab_size_));
  }
  Scratch& s = ThreadScratch();
  const SamplingParams& p = params_;
  const int64_t n = vocab_size_;

  // Steps 1-4 touch only listed tokens: copy the row only when one applies.
  const bool mask = num_generated_ < p.min_tokens && !stop_ids_.empty();
  const bool repeat = p.repetition_penalty != 1.0f && !seen_.empty();
  const bool counted =
      (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) && !counts_.empty();
  const float* w = logits.data();
  int64_t masked_bad = -1;  // a NaN/+inf that the min_tokens mask would hide
  if (mask || repeat || counted || !p.logit_bias.empty()) {
    s.w.assign(logits.begin(), logits.end());
    float* v = s.w.data();
    if (mask) {
      for (int32_t t : stop_ids_) {
        if (!(v[t] < kInf)) masked_bad = masked_bad < 0 ? t : std::min<int64_t>(masked_bad, t);
        v[t] = -kInf;
      }
    }
    for (const auto& [t, bias] : p.logit_bias) v[t] += bias;
    if (repeat) {
      const float rp = p.repetition_penalty;
      for (int32_t t : seen_) v[t] = v[t] > 0 ? v[t] / rp : v[t] * rp;
    }
    if (counted) {
      for (const auto& [t, count] : counts_) {
        v[t] -= p.frequency_penalty * static_cast<float>(count);
        v[t] -= p.presence_penalty;
      }
    }
    w = v;
  }

  const internal::RowMax row = internal::MaxAndCheck(w, n);
  if (row.first_bad >= 0 || masked_bad >= 0) {
    const int64_t bad = row.first_bad < 0 ? masked_bad
                        : masked_bad < 0  ? row.first_bad
                                          : std::min(row.first_bad, masked_bad);
    return absl::InvalidArgumentError(absl::StrCat("sampler: logits[", bad, "] is ", logits[bad],
                                                   "; NaN and +inf are not allowed"));
  }
  if (row.max == -kInf) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampler: every token is masked (-inf) at step ", num_generated_));
  }
  Step st;
  st.w = w;
  st.n = n;
  st.max = row.max;
  const float m = row.max;

  if (p.greedy()) {
    st.argmax = internal::FirstEqual(w, n, m);
    if (!want_logprobs) return st;
    // Logprobs of the untruncated distribution at temperature 1.
    s.e.resize(n);
    s.block_sums.resize(internal::NumBlocks(n));
    st.total = internal::ExpAndBlockSums(w, n, m, 1.0f, s.e.data(), s.block_sums.data());
    return st;
  }

  const float inv_t = 1.0f / p.temperature;
  st.t = p.temperature;
  const double log_min_p = p.min_p > 0 ? std::log(static_cast<double>(p.min_p)) : 0.0;

  if (p.top_k >= 1 && p.top_k < n) {
    // Top-k path: everything after happens on the (small) survivor list, in order.
    s.kept.clear();
    internal::TopKWithTies(w, n, p.top_k, &s.kept);
    internal::SortInOrder(w, s.kept);
    s.kept_e.resize(s.kept.size());
    for (size_t j = 0; j < s.kept.size(); ++j) {
      s.kept_e[j] = internal::ExpNonPositive((w[s.kept[j]] - m) * inv_t);
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
  s.block_sums.resize(internal::NumBlocks(n));
  const double z = internal::ExpAndBlockSums(w, n, m, inv_t, s.e.data(), s.block_sums.data());
  Cut cut = kKeepFinite;
  if (p.top_p < 1.0f) {
    // Bisect on the logit for a band [lo, hi) that holds the boundary: the tokens >= hi hold
    // less than top_p of the mass (all kept), those >= lo at least top_p (all below lo are
    // dropped). Each probe is one vectorised pass; stop once the band is small, then find the
    // exact boundary inside it with a weighted quickselect.
    const double mass = p.top_p * z;
    using internal::MassAtLeast;
    float lo = -kInf, hi = kInf;
    internal::Mass at_hi{0, 0};
    internal::Mass at_lo{z, n};
    if (const internal::Mass top = MassAtLeast(w, s.e.data(), n, m); top.weight >= mass) {
      lo = m;  // the max (and its ties) already reach top_p
      at_lo = top;
    } else {
      hi = m;
      at_hi = top;
      // Below max - 87 T every weight is 0: that floor already holds all the mass.
      const float floor = static_cast<float>(m - 87.0 * st.t);
      if (const internal::Mass f = MassAtLeast(w, s.e.data(), n, floor); f.weight >= mass) {
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
        const internal::Mass at_mid = MassAtLeast(w, s.e.data(), n, mid);
        if (at_mid.weight >= mass) {
          lo = mid;
          at_lo = at_mid;
        } else {
          hi = mid;
          at_hi = at_mid;
        }
      }
    }
    internal::CollectBand(w, n, lo, hi, &s.kept);
    const size_t k = internal::PrefixReaching(w, s.e.data(), s.kept, mass - at_hi.weight);
    const int32_t last = s.kept[k - 1];
    cut = {w[last], last};
  }
  if (p.min_p > 0) {
    const float threshold = MinPThreshold(m, st.t, log_min_p);
    if (threshold > cut.x) cut = {threshold, n - 1};
  }
  st.cut = cut;
  st.total =
      cut.x == -kInf ? z : internal::CutBlockSums(w, s.e.data(), n, cut, s.block_sums.data());
  return st;
}

absl::StatusOr<SampleResult> Sampler::Sample(std::span<const float> logits) {
  const bool want_logprobs = params_.logprobs >= 0;
  absl::StatusOr<Step> prepared = Prepare(logits, want_logprobs);
  if (!prepared.ok()) return prepared.status();
  const Step& st = *prepared;
  const Scratch& s = ThreadScratch();

  // One draw per step, greedy or not: draw t depends only on (seed, t).
  const double u = PhiloxUniform(seed_, static_cast<uint64_t>(num_generated_));
  int64_t token = -1;
  if (st.argmax >= 0) {
    token = st.argmax;
  } else if (st.listed) {
    const double target = u * st.total;
    double cum = 0;
    for (int32_t j : s.by_id) {
      if (s.kept_e[j] <= 0) continue;
      cum += s.kept_e[j];
      token = s.kept[j];
      if (cum > target) break;  // else: rounding fallback keeps the last positive one
    }
  } else {
    token = internal::PickInCut(st.w, s.e.data(), st.n, st.cut, s.block_sums.data(), u * st.total);
  }

  SampleResult result;
  result.token = static_cast<int32_t>(token);
  result.stop = IsStop(result.token);
  if (want_logprobs) {
    const float wt = st.w[token];
    result.logprob = static_cast<float>(st.Logprob(token));
    const size_t n_top = static_cast<size_t>(params_.logprobs);
    if (st.listed) {
      result.rank = static_cast<int32_t>(
          std::count_if(s.kept.begin(), s.kept.end(), [&](int32_t i) { return st.w[i] >= wt; }));
      for (size_t j = 0; j < std::min(n_top, s.kept.size()); ++j) {
        result.top_logprobs.push_back({s.kept[j], static_cast<float>(st.Logprob(s.kept[j]))});
      }
    } else {
      result.rank = static_cast<int32_t>(internal::CountKeptAtLeast(st.w, st.n, st.cut, wt));
      if (n_top > 0) {
        std::vector<int32_t>& top = ThreadScratch().top;
        top.clear();
        internal::TopKWithTies(st.w, st.n, static_cast<int64_t>(n_top), &top);
        internal::SortInOrder(st.w, top);
        for (int32_t i : top) {
          if (result.top_logprobs.size() == n_top) break;
          if (st.cut.Keeps(st.w[i], i)) {
            result.top_logprobs.push_back({i, static_cast<float>(st.Logprob(i))});
          }
        }
      }
    }
  }

  ++num_generated_;
  if (params_.repetition_penalty != 1.0f) seen_.insert(result.token);
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    ++counts_[result.token];
  }
  return result;
}

absl::StatusOr<std::vector<float>> Sampler::Probabilities(std::span<const float> logits) const {
  absl::StatusOr<Step> prepared = Prepare(logits, /*want_logprobs=*/false);
  if (!prepared.ok()) return prepared.status();
  const Step& st = *prepared;
  const Scratch& s = ThreadScratch();
  std::vector<float> probs(st.n, 0.0f);
  if (st.argmax >= 0) {
    probs[st.argmax] = 1.0f;
  } else if (st.listed) {
    for (size_t j = 0; j < s.kept.size(); ++j) probs[s.kept[j]] = s.kept_e[j] / st.total;
  } else {
    for (int64_t i = 0; i < st.n; ++i) {
      if (st.cut.Keeps(st.w[i], i)) probs[i] = static_cast<float>(s.e[i] / st.total);
    }
  }
  return probs;
}

}  // namespace nextserve::sampling
