// Memory for sequences' caches, as two arenas the backend owns, handed out as indices:
//   KV    [attention layers][blocks][block size][kv heads x head dim], keys and values apart, in
//         the KV dtype (fp32, or bf16 to halve it);
//   state [linear layers][slots][conv window | recurrent state], fp32.
// A block is shared by all full-attention layers (the same index in each), a slot by all DeltaNet
// layers. Both arenas are sized for the limits at construction; on the CPU their pages are
// committed only when first written, so unused capacity costs address space, not memory.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "base/dtype.h"
#include "kernels/backend.h"
#include "model/config.h"

namespace nextserve {

struct CacheLimits {
  int64_t block_size = 64;  // tokens per KV block
  int64_t max_blocks = 4096;
  int64_t max_slots = 256;
  DType kv_dtype = DType::kF32;  // kF32 or kBF16 (the state stays fp32)
};

class CachePool {
 public:
  // InvalidArgument-style misuse (a KV dtype other than fp32/bf16) is caught by Validate first.
  CachePool(const ModelConfig& config, CacheLimits limits, kernels::Backend* backend);
  static absl::Status Validate(const CacheLimits& limits);

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
  kernels::KvLayer kv_layer(int64_t attention_index) const;
  kernels::StateLayer state_layer(int64_t linear_index) const;

  // Bytes one block (all attention layers, keys and values) and one slot (all DeltaNet layers).
  int64_t block_bytes() const { return block_bytes_; }
  int64_t slot_bytes() const { return slot_floats_ * static_cast<int64_t>(sizeof(float)); }

 private:
  CacheLimits limits_;
  kernels::Backend* backend_;
  int64_t kv_width_, attention_layers_, linear_layers_;
  int64_t layer_kv_bytes_;  // one attention layer's keys (or values) for every block
  int64_t block_bytes_, slot_floats_;
  std::unique_ptr<kernels::Buffer> keys_, values_, states_;
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
