// Memory for sequences' caches: fixed-size KV blocks shared by all full-attention layers (paged,
// with a free list) and state slots shared by all DeltaNet layers (conv window + fp32 recurrent
// state). Storage for a block or slot is made on first use and reused after it is freed, up to the
// limits.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace nextserve {

struct CacheLimits {
  int64_t block_size = 64;  // tokens per KV block
  int64_t max_blocks = 1 << 20;
  int64_t max_slots = 1 << 16;
};

class CachePool {
 public:
  CachePool(const ModelConfig& config, CacheLimits limits);

  int64_t block_size() const { return limits_.block_size; }
  const CacheLimits& limits() const { return limits_; }
  // ResourceExhausted once max_blocks / max_slots are in use.
  absl::StatusOr<int32_t> AllocateBlock();
  void FreeBlock(int32_t block);
  absl::StatusOr<int32_t> AllocateSlot();  // zeroed: a new sequence's state
  void FreeSlot(int32_t slot);
  int64_t free_blocks() const { return limits_.max_blocks - used_blocks_; }
  int64_t free_slots() const { return limits_.max_slots - used_slots_; }

  // attention_index / linear_index count only layers of that kind (0 = the first such layer).
  // Block rows: [block_size, kv_heads * head_dim].
  float* Keys(int64_t attention_index, int32_t block);
  float* Values(int64_t attention_index, int32_t block);
  float* ConvWindow(int64_t linear_index, int32_t slot);  // [kernel - 1, conv_dim]
  float* Recurrent(int64_t linear_index, int32_t slot);   // [value_heads, key_dim, value_dim]

  int64_t block_bytes() const { return block_floats_ * sizeof(float); }
  int64_t slot_bytes() const { return slot_floats_ * sizeof(float); }

 private:
  CacheLimits limits_;
  int64_t kv_width_, conv_floats_, recurrent_floats_, linear_layers_;
  int64_t block_floats_, slot_floats_;
  std::vector<std::unique_ptr<float[]>> blocks_, slots_;
  std::vector<int32_t> free_block_ids_, free_slot_ids_;
  int64_t used_blocks_ = 0, used_slots_ = 0;
};

// One sequence's view of the pool: its block table, its state slot and how many tokens it holds.
// Gives everything back to the pool when destroyed or Reset (preemption by recompute).
class SequenceState {
 public:
  explicit SequenceState(CachePool* pool) : pool_(pool) {}
  ~SequenceState() { Reset(); }
  SequenceState(const SequenceState&) = delete;
  SequenceState& operator=(const SequenceState&) = delete;

  int64_t num_tokens() const { return num_tokens_; }
  const std::vector<int32_t>& blocks() const { return blocks_; }
  int32_t slot() const { return slot_; }
  // Blocks (and slot) that Reserve(more) would take from the pool.
  int64_t BlocksNeeded(int64_t more) const;
  bool NeedsSlot() const { return slot_ < 0; }
  // Makes room for `more` tokens. On failure nothing is held beyond what was held before.
  absl::Status Reserve(int64_t more);
  void Advance(int64_t tokens) { num_tokens_ += tokens; }
  void Reset();
  CachePool* pool() const { return pool_; }

 private:
  CachePool* pool_;
  std::vector<int32_t> blocks_;
  int32_t slot_ = -1;
  int64_t num_tokens_ = 0;
};

}  // namespace nextserve
