#include "tokenizer/bpe.h"

#include <algorithm>
#include <queue>

#include "absl/strings/str_cat.h"

namespace nextserve::tokenizer {
namespace {

// Above this many symbols the O(n log n) heap beats the O(n^2) rescans of tiny arrays.
constexpr size_t kScanMaxSymbols = 48;

}  // namespace

absl::StatusOr<BpeModel> BpeModel::Create(const std::vector<std::string>& token_bytes,
                                          const std::vector<Merge>& merges, bool ignore_merges,
                                          int32_t unk_id) {
  BpeModel m;
  std::fill(std::begin(m.byte_ids_), std::end(m.byte_ids_), -1);
  for (size_t id = 0; id < token_bytes.size(); ++id) {
    const std::string& t = token_bytes[id];
    if (t.size() == 1) m.byte_ids_[static_cast<unsigned char>(t[0])] = static_cast<int32_t>(id);
    if (ignore_merges && !t.empty()) m.whole_tokens_.emplace(t, static_cast<int32_t>(id));
  }
  m.merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Merge& mg = merges[rank];
    // HF keeps the first rank of a pair listed twice.
    m.merges_.try_emplace(PairKey(mg.left, mg.right),
                          RankedMerge{static_cast<int32_t>(rank), mg.result});
  }
  m.unk_id_ = unk_id;
  m.ignore_merges_ = ignore_merges;
  return m;
}

void BpeModel::InitialSymbols(std::string_view piece, std::vector<int32_t>* ids) const {
  ids->clear();
  ids->reserve(piece.size());
  for (unsigned char b : piece) {
    const int32_t id = byte_ids_[b];
    // A byte with no token becomes unk, or is dropped when there is none (HF's behaviour).
    if (id >= 0) {
      ids->push_back(id);
    } else if (unk_id_ >= 0) {
      ids->push_back(unk_id_);
    }
  }
}

void BpeModel::Encode(std::string_view piece, std::vector<int32_t>* out,
                      Algorithm algorithm) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (auto it = whole_tokens_.find(absl::string_view(piece.data(), piece.size()));
        it != whole_tokens_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  thread_local std::vector<int32_t> ids;
  InitialSymbols(piece, &ids);
  const bool heap = algorithm == Algorithm::kHeap ||
                    (algorithm == Algorithm::kAuto && ids.size() > kScanMaxSymbols);
  if (heap) {
    MergeHeap(&ids);
  } else {
    MergeScan(&ids);
  }
  out->insert(out->end(), ids.begin(), ids.end());
}

void BpeModel::MergeScan(std::vector<int32_t>* ids_ptr) const {
  std::vector<int32_t>& ids = *ids_ptr;
  if (ids.size() < 2) return;
  constexpr int32_t kNone = INT32_MAX;
  // ranks[i], results[i]: the merge of ids[i], ids[i+1], if any.
  thread_local std::vector<int32_t> ranks, results;
  ranks.resize(ids.size() - 1);
  results.resize(ids.size() - 1);
  auto rate = [&](size_t i) {
    const RankedMerge* m = FindMerge(ids[i], ids[i + 1]);
    ranks[i] = m ? m->rank : kNone;
    results[i] = m ? m->result : -1;
  };
  for (size_t i = 0; i + 1 < ids.size(); ++i) rate(i);
  while (ids.size() > 1) {
    size_t best = 0;
    for (size_t i = 1; i < ranks.size(); ++i) {
      if (ranks[i] < ranks[best]) best = i;  // strict: the leftmost of equal ranks wins
    }
    if (ranks[best] == kNone) break;
    ids[best] = results[best];
    ids.erase(ids.begin() + best + 1);
    ranks.erase(ranks.begin() + best);
    results.erase(results.begin() + best);
    if (best > 0) rate(best - 1);
    if (best < ranks.size()) rate(best);
  }
}

void BpeModel::MergeHeap(std::vector<int32_t>* ids_ptr) const {
  std::vector<int32_t>& ids = *ids_ptr;
  const int32_t n = static_cast<int32_t>(ids.size());
  if (n < 2) return;
  // A doubly linked list over the original positions; merged-away symbols get alive = false.
  std::vector<int32_t> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank, pos, result;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const RankedMerge* m = FindMerge(ids[pos], ids[next[pos]]))
      heap.push({m->rank, pos, m->result});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    // Stale entries: the symbol was merged away, or its right neighbour changed since.
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    const RankedMerge* m = FindMerge(ids[c.pos], ids[next[c.pos]]);
    if (m == nullptr || m->result != c.result || m->rank != c.rank) continue;
    const int32_t right = next[c.pos];
    ids[c.pos] = c.result;
    alive[right] = 0;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  int32_t w = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (alive[i]) ids[w++] = ids[i];
  }
  ids.resize(w);
}

}  // namespace nextserve::tokenizer
