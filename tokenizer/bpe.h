// Byte-level BPE: the merges of one pre-token, exactly as HF tokenizers' BPE model applies them
// (lowest merge rank first, leftmost first among equal ranks).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace nextserve::tokenizer {

class BpeModel {
 public:
  // `token_bytes[id]` are the raw bytes of token `id` (empty for ids the model does not own);
  // merges are pairs of token ids, in rank order, with the id of their concatenation.
  struct Merge {
    int32_t left, right, result;
  };
  static absl::StatusOr<BpeModel> Create(const std::vector<std::string>& token_bytes,
                                         const std::vector<Merge>& merges, bool ignore_merges,
                                         int32_t unk_id);

  enum class Algorithm { kAuto, kScan, kHeap };
  // Appends the ids of one pre-token (raw bytes). kScan and kHeap give the same ids; kAuto picks
  // the faster one for the length (they are both public so that tests can compare them).
  void Encode(std::string_view piece, std::vector<int32_t>* out,
              Algorithm algorithm = Algorithm::kAuto) const;

 private:
  struct RankedMerge {
    int32_t rank, result;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const RankedMerge* FindMerge(int32_t a, int32_t b) const {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }
  void InitialSymbols(std::string_view piece, std::vector<int32_t>* ids) const;
  void MergeScan(std::vector<int32_t>* ids) const;
  void MergeHeap(std::vector<int32_t>* ids) const;

  absl::flat_hash_map<uint64_t, RankedMerge> merges_;
  absl::flat_hash_map<std::string, int32_t> whole_tokens_;  // only with ignore_merges
  int32_t byte_ids_[256];
  int32_t unk_id_ = -1;
  bool ignore_merges_ = false;
};

}  // namespace nextserve::tokenizer
