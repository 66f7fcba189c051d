// Chi-square goodness of fit for the sampling tests.
#pragma once

#include <cmath>
#include <vector>

namespace nextserve::sampling::testing {

// Upper critical value of the chi-square distribution with `dof` degrees of freedom at
// alpha = 1e-6 (z = 4.7534), by the Wilson-Hilferty approximation (relative error < 1% for
// dof >= 3, and conservative enough that a fixed-seed test is never flaky).
inline double ChiSquareCritical1e6(int dof) {
  const double z = 4.7534, a = 2.0 / (9.0 * dof);
  return dof * std::pow(1.0 - a + z * std::sqrt(a), 3);
}

// Pearson's statistic over the categories with expected probability > 0, categories expected
// fewer than 5 times pooled into one (dropped if even the pool is expected < 5 times). Observed
// counts in categories of probability 0 are the caller's to check (they must be zero).
inline double ChiSquare(const std::vector<int64_t>& observed, const std::vector<double>& probs,
                        int64_t draws, int* dof) {
  double chi2 = 0, pooled_expected = 0;
  int64_t pooled_observed = 0;
  int categories = 0;
  auto add = [&](double obs, double expected) {
    chi2 += (obs - expected) * (obs - expected) / expected;
    ++categories;
  };
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0) continue;
    const double expected = probs[i] * static_cast<double>(draws);
    if (expected < 5) {
      pooled_expected += expected;
      pooled_observed += observed[i];
    } else {
      add(static_cast<double>(observed[i]), expected);
    }
  }
  if (pooled_expected >= 5) add(static_cast<double>(pooled_observed), pooled_expected);
  *dof = categories - 1;
  return chi2;
}

}  // namespace nextserve::sampling::testing
