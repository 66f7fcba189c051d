#include "model/cache_pool.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace nextserve {

CachePool::CachePool(const ModelConfig& c, CacheLimits limits) : limits_(limits) {
  int64_t attention_layers = 0;
  linear_layers_ = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    (c.is_full_attention(l) ? attention_layers : linear_layers_) += 1;
  }
  kv_width_ = c.num_key_value_heads * c.head_dim;
  conv_floats_ = (c.linear_conv_kernel_dim - 1) * c.linear_conv_dim();
  recurrent_floats_ = c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim;
  block_floats_ = attention_layers * 2 * limits.block_size * kv_width_;
  slot_floats_ = linear_layers_ * (conv_floats_ + recurrent_floats_);
}

absl::StatusOr<int32_t> CachePool::AllocateBlock() {
  if (used_blocks_ >= limits_.max_blocks) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", limits_.max_blocks, " KV blocks are in use"));
  }
  ++used_blocks_;
  if (!free_block_ids_.empty()) {
    const int32_t id = free_block_ids_.back();
    free_block_ids_.pop_back();
    return id;
  }
  blocks_.push_back(std::make_unique<float[]>(std::max<int64_t>(block_floats_, 1)));
  return static_cast<int32_t>(blocks_.size() - 1);
}

void CachePool::FreeBlock(int32_t block) {
  free_block_ids_.push_back(block);
  --used_blocks_;
}

absl::StatusOr<int32_t> CachePool::AllocateSlot() {
  if (used_slots_ >= limits_.max_slots) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", limits_.max_slots, " state slots are in use"));
  }
  ++used_slots_;
  int32_t id;
  if (!free_slot_ids_.empty()) {
    id = free_slot_ids_.back();
    free_slot_ids_.pop_back();
    std::fill_n(slots_[id].get(), slot_floats_, 0.0f);
  } else {
    slots_.push_back(std::make_unique<float[]>(std::max<int64_t>(slot_floats_, 1)));  // zeroed
    id = static_cast<int32_t>(slots_.size() - 1);
  }
  return id;
}

void CachePool::FreeSlot(int32_t slot) {
  free_slot_ids_.push_back(slot);
  --used_slots_;
}

float* CachePool::Keys(int64_t attention_index, int32_t block) {
  return blocks_[block].get() + attention_index * 2 * limits_.block_size * kv_width_;
}
float* CachePool::Values(int64_t attention_index, int32_t block) {
  return Keys(attention_index, block) + limits_.block_size * kv_width_;
}
float* CachePool::ConvWindow(int64_t linear_index, int32_t slot) {
  return slots_[slot].get() + linear_index * (conv_floats_ + recurrent_floats_);
}
float* CachePool::Recurrent(int64_t linear_index, int32_t slot) {
  return ConvWindow(linear_index, slot) + conv_floats_;
}

int64_t SequenceState::BlocksNeeded(int64_t more) const {
  const int64_t bs = pool_->block_size();
  const int64_t want = (num_tokens_ + more + bs - 1) / bs;
  return std::max<int64_t>(0, want - static_cast<int64_t>(blocks_.size()));
}

absl::Status SequenceState::Reserve(int64_t more) {
  const int64_t need = BlocksNeeded(more);
  const bool need_slot = slot_ < 0;
  if (need > pool_->free_blocks() || (need_slot && pool_->free_slots() < 1)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cache full: need ", need, " KV blocks", need_slot ? " and a state slot" : "", ", ",
        pool_->free_blocks(), " blocks and ", pool_->free_slots(), " slots free"));
  }
  if (need_slot) slot_ = *pool_->AllocateSlot();
  for (int64_t i = 0; i < need; ++i) blocks_.push_back(*pool_->AllocateBlock());
  return absl::OkStatus();
}

void SequenceState::Reset() {
  for (int32_t b : blocks_) pool_->FreeBlock(b);
  blocks_.clear();
  if (slot_ >= 0) pool_->FreeSlot(slot_);
  slot_ = -1;
  num_tokens_ = 0;
}

}  // namespace nextserve
