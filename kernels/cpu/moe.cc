// Mixture-of-experts ops over a whole step on the CPU: router top-k, the expert-parallel dispatch
// records, grouping by expert, the grouped expert MLPs, the weighted sum and the combine. Every
// sum runs in a fixed order (ascending expert id, then rank order), so results do not depend on the
// thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/moe_plan.h"

namespace nextserve::kernels::cpu {
namespace {

// The id and weight slots of a record (after its hidden row, 4-byte aligned).
struct RecordView {
  char* base;
  const RecordFormat& f;
  int32_t* ids() const { return reinterpret_cast<int32_t*>(base + (f.hidden_bytes() + 3) / 4 * 4); }
  float* weights() const { return reinterpret_cast<float*>(ids() + f.top_k); }
};

RecordView Record(const void* records, const RecordFormat& f, int64_t i) {
  return {const_cast<char*>(static_cast<const char*>(records)) + i * f.bytes(), f};
}

}  // namespace

void RouterTopK(const float* logits, int64_t n, int64_t experts, int64_t top_k, bool renormalise,
                int32_t* ids, float* weights) {
  // Each logit costs an exp and a share of the partial sort: about 8 elementwise ops' worth.
#pragma omp parallel if (n > 1 && WorthThreads(8 * n * experts))
  {
    std::vector<int32_t> order(static_cast<size_t>(experts));
    std::vector<float> prob(static_cast<size_t>(experts));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* lg = logits + i * experts;
      const float mx = *std::max_element(lg, lg + experts);
      float sum = 0;
      for (int64_t e = 0; e < experts; ++e) sum += prob[e] = std::exp(lg[e] - mx);
      for (int64_t e = 0; e < experts; ++e) prob[e] /= sum;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(
          order.begin(), order.begin() + top_k, order.end(),
          [&](int32_t a, int32_t b) { return prob[a] > prob[b] || (prob[a] == prob[b] && a < b); });
      float top_sum = 0;
      for (int64_t j = 0; j < top_k; ++j) top_sum += prob[order[j]];
      // Slots sorted by expert id: the summation order of the reference.
      std::sort(order.begin(), order.begin() + top_k);
      for (int64_t j = 0; j < top_k; ++j) {
        const int32_t e = order[j];
        ids[i * top_k + j] = e;
        weights[i * top_k + j] = renormalise ? prob[e] / top_sum : prob[e];
      }
    }
  }
}

void MoeDispatch(const float* h, int64_t n, const int32_t* ids, const float* weights,
                 const int32_t* owner, int ranks, const RecordFormat& f, void* records,
                 int32_t* token_of, DispatchCounts& counts) {
  const int64_t k = f.top_k;
  // Which ranks each token goes to (a token visits a rank once, whatever its expert count there).
  static thread_local std::vector<uint8_t> goes;
  goes.assign(static_cast<size_t>(n * ranks), 0);
  for (int64_t i = 0; i < n * k; ++i) goes[(i / k) * ranks + owner[ids[i]]] = 1;
  std::fill(counts.records_to.begin(), counts.records_to.end(), 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int r = 0; r < ranks; ++r) counts.records_to[r] += goes[i * ranks + r];
  }
  // Record index of every (rank, token) pair: grouped by rank, tokens in order.
  static thread_local std::vector<int64_t> cursor;
  cursor.assign(static_cast<size_t>(ranks), 0);
  for (int r = 1; r < ranks; ++r) cursor[r] = cursor[r - 1] + counts.records_to[r - 1];
  counts.total = ranks > 0 ? cursor[ranks - 1] + counts.records_to[ranks - 1] : 0;
  static thread_local std::vector<int32_t> rank_of;
  rank_of.resize(static_cast<size_t>(counts.total));
  for (int r = 0; r < ranks; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      if (!goes[i * ranks + r]) continue;
      rank_of[cursor[r]] = r;
      token_of[cursor[r]++] = static_cast<int32_t>(i);
    }
  }
  // thread_local storage is per thread: the parallel loop reads the caller's through a pointer.
  const int32_t* rank_of_record = rank_of.data();
#pragma omp parallel for schedule(static) if (counts.total > 1 && \
                                              WorthThreads(counts.total * f.hidden))
  for (int64_t rec = 0; rec < counts.total; ++rec) {
    const int64_t i = token_of[rec];
    const int r = rank_of_record[rec];
    RecordView view = Record(records, f, rec);
    if (f.hidden_dtype == DType::kBF16) {
      uint16_t* dst = reinterpret_cast<uint16_t*>(view.base);
      for (int64_t e = 0; e < f.hidden; ++e) dst[e] = F32ToBf16(h[i * f.hidden + e]);
    } else {
      std::memcpy(view.base, h + i * f.hidden, f.hidden * sizeof(float));
    }
    int32_t* slot_ids = view.ids();
    float* slot_weights = view.weights();
    int64_t slot = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = ids[i * k + j];
      if (owner[e] != r) continue;
      slot_ids[slot] = e;
      slot_weights[slot++] = weights[i * k + j];
    }
    for (; slot < k; ++slot) slot_ids[slot] = -1, slot_weights[slot] = 0.0f;
  }
}

absl::Status MoeGroupByExpert(const void* records, int64_t count, const RecordFormat& f,
                              int64_t experts, const bool* held, float* xs, int32_t* pair_of,
                              int64_t* expert_offsets) {
  const int64_t k = f.top_k;
  // The records' slot ids side by side, for the shared map (kernels/moe_plan.h).
  static thread_local std::vector<int32_t> slot_ids;
  slot_ids.resize(static_cast<size_t>(count * k));
  for (int64_t r = 0; r < count; ++r) {
    const int32_t* ids = Record(records, f, r).ids();
    std::copy(ids, ids + k, slot_ids.begin() + r * k);
  }
  if (absl::Status s = PlanGroupByExpert(slot_ids, count, k, experts, held,
                                         std::span<int32_t>(pair_of, slot_ids.size()),
                                         std::span<int64_t>(expert_offsets, experts + 1));
      !s.ok()) {
    return s;
  }
#pragma omp parallel for schedule(static) if (count > 1 && WorthThreads(count * k * f.hidden))
  for (int64_t r = 0; r < count; ++r) {
    const RecordView view = Record(records, f, r);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t pair = pair_of[r * k + j];
      if (pair < 0) continue;
      float* dst = xs + int64_t{pair} * f.hidden;
      if (f.hidden_dtype == DType::kBF16) {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(view.base);
        for (int64_t e = 0; e < f.hidden; ++e) dst[e] = Bf16ToF32(src[e]);
      } else {
        std::memcpy(dst, view.base, f.hidden * sizeof(float));
      }
    }
  }
  return absl::OkStatus();
}

void GroupedExpertMlp(const float* xs, const int64_t* expert_offsets, int64_t experts,
                      const ExpertMatrices* weights, float* scratch, float* ys) {
  static thread_local std::vector<int32_t> active;
  active.clear();
  int64_t max_inter = 0;
  for (int64_t e = 0; e < experts; ++e) {
    if (expert_offsets[e + 1] > expert_offsets[e]) {
      active.push_back(static_cast<int32_t>(e));
      max_inter = std::max(max_inter, weights[e].gate.rows);
    }
  }
  // The experts run side by side, one thread each (few rows per expert: parallelising inside each
  // small product costs more in synchronisation than it gains).
  const int64_t num_active = static_cast<int64_t>(active.size());
  const int32_t* active_experts = active.data();  // the caller's thread_local, for every thread
#pragma omp parallel for schedule(dynamic, 1) if (num_active > 1)
  for (int64_t a = 0; a < num_active; ++a) {
    const int64_t e = active_experts[a], first = expert_offsets[e],
                  m = expert_offsets[e + 1] - first;
    const ExpertMatrices& w = weights[e];
    const int64_t inter = w.gate.rows, hidden = w.down.rows;
    float* gate = scratch + 2 * first * max_inter;
    float* up = gate + m * inter;
    Linear(xs + first * w.gate.cols, m, w.gate, gate, false);
    Linear(xs + first * w.up.cols, m, w.up, up, false);
    for (int64_t i = 0; i < m * inter; ++i) gate[i] = Silu(gate[i]) * up[i];
    Linear(gate, m, w.down, ys + first * hidden, false);
  }
}

void MoeWeightedSum(const float* ys, const void* records, int64_t count, const RecordFormat& f,
                    const int32_t* pair_of, float* partial) {
  const int64_t k = f.top_k, hidden = f.hidden;
#pragma omp parallel for schedule(static) if (count > 1 && WorthThreads(count * k * hidden))
  for (int64_t r = 0; r < count; ++r) {
    const float* w = Record(records, f, r).weights();
    float* p = partial + r * hidden;
    std::fill(p, p + hidden, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t pair = pair_of[r * k + j];
      if (pair < 0) continue;
      const float* y = ys + int64_t{pair} * hidden;
      for (int64_t e = 0; e < hidden; ++e) p[e] += w[j] * y[e];
    }
  }
}

void MoeCombine(const float* combined, const int32_t* token_of, int64_t records, int64_t n,
                int64_t hidden, float* routed) {
  std::fill(routed, routed + n * hidden, 0.0f);
  for (int64_t r = 0; r < records; ++r) {
    float* dst = routed + int64_t{token_of[r]} * hidden;
    const float* src = combined + r * hidden;
    for (int64_t e = 0; e < hidden; ++e) dst[e] += src[e];
  }
}

}  // namespace nextserve::kernels::cpu
