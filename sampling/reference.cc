#include "sampling/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>

namespace nextserve::sampling {

std::vector<double> ReferenceProbabilities(std::span<const float> logits, const SamplingParams& p,
                                           std::span<const int32_t> prompt,
                                           std::span<const int32_t> output,
                                           std::span<const int32_t> eos_token_ids) {
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t n = static_cast<int64_t>(logits.size());
  std::vector<float> w(logits.begin(), logits.end());

  // 1. min_tokens.
  if (static_cast<int64_t>(output.size()) < p.min_tokens) {
    for (int32_t t : p.stop_token_ids) w[t] = -inf;
    if (!p.ignore_eos) {
      for (int32_t t : eos_token_ids) w[t] = -inf;
    }
  }
  // 2. logit_bias.
  for (const auto& [t, bias] : p.logit_bias) w[t] += bias;
  // 3. repetition_penalty over prompt + output.
  std::set<int32_t> seen(prompt.begin(), prompt.end());
  seen.insert(output.begin(), output.end());
  if (p.repetition_penalty != 1.0f) {
    for (int32_t t : seen) {
      w[t] = w[t] > 0 ? w[t] / p.repetition_penalty : w[t] * p.repetition_penalty;
    }
  }
  // 4. frequency and presence over output.
  std::map<int32_t, int32_t> counts;
  for (int32_t t : output) ++counts[t];
  for (const auto& [t, count] : counts) {
    w[t] -= p.frequency_penalty * static_cast<float>(count);
    w[t] -= p.presence_penalty;
  }

  std::vector<double> probs(n, 0.0);
  // 5. greedy.
  if (p.greedy()) {
    probs[std::max_element(w.begin(), w.end()) - w.begin()] = 1.0;  // first of the maxima
    return probs;
  }
  // 6. temperature, relative to the max.
  const double max = *std::max_element(w.begin(), w.end());
  std::vector<double> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = (w[i] - max) / static_cast<double>(p.temperature);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  std::vector<bool> keep(n);
  for (int64_t i = 0; i < n; ++i) keep[i] = w[i] > -inf;
  // 7. top_k, ties with the k-th kept.
  if (p.top_k >= 1 && p.top_k < n) {
    const float kth = w[order[p.top_k - 1]];
    for (int64_t i = 0; i < n; ++i) keep[i] = keep[i] && w[i] >= kth;
  }
  // 8. top_p over the survivors: keep while the probability before a token is < top_p.
  if (p.top_p < 1.0f) {
    double z = 0;
    for (int64_t i = 0; i < n; ++i) z += keep[i] ? std::exp(x[i]) : 0.0;
    double before = 0;
    for (int32_t i : order) {
      if (!keep[i]) continue;
      if (before >= p.top_p * z) keep[i] = false;
      before += std::exp(x[i]);
    }
  }
  // 9. min_p: p >= min_p * p_max.
  if (p.min_p > 0) {
    for (int64_t i = 0; i < n; ++i) keep[i] = keep[i] && x[i] >= std::log(double{p.min_p});
  }
  double z = 0;
  for (int64_t i = 0; i < n; ++i) z += keep[i] ? std::exp(x[i]) : 0.0;
  for (int64_t i = 0; i < n; ++i) probs[i] = keep[i] ? std::exp(x[i]) / z : 0.0;
  return probs;
}

}  // namespace nextserve::sampling
