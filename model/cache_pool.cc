#include "model/cache_pool.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace nextserve {

absl::Status CachePool::Validate(const CacheLimits& limits) {
  if (limits.kv_dtype != DType::kF32 && limits.kv_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache dtype ",
                                                   std::string(DTypeName(limits.kv_dtype)),
                                                   " is not supported (F32 or BF16)"));
  }
  if (limits.block_size < 1 || limits.max_blocks < 1 || limits.max_slots < 1) {
    return absl::InvalidArgumentError("KV block size, block count and slot count must be >= 1");
  }
  return absl::OkStatus();
}

CachePool::CachePool(const ModelConfig& c, CacheLimits limits, kernels::Backend* backend)
    : limits_(limits), backend_(backend) {
  attention_layers_ = 0;
  linear_layers_ = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    (c.is_full_attention(l) ? attention_layers_ : linear_layers_) += 1;
  }
  kv_width_ = c.num_key_value_heads * c.head_dim;
  const int64_t elem = static_cast<int64_t>(DTypeSize(limits.kv_dtype));
  layer_kv_bytes_ = limits.max_blocks * limits.block_size * kv_width_ * elem;
  block_bytes_ = attention_layers_ * 2 * limits.block_size * kv_width_ * elem;
  slot_floats_ = (c.linear_conv_kernel_dim - 1) * c.linear_conv_dim() +
                 c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim;
  keys_ = backend_->Allocate(
      static_cast<size_t>(std::max<int64_t>(1, attention_layers_ * layer_kv_bytes_)));
  values_ = backend_->Allocate(
      static_cast<size_t>(std::max<int64_t>(1, attention_layers_ * layer_kv_bytes_)));
  states_ = backend_->Allocate(static_cast<size_t>(
      std::max<int64_t>(1, linear_layers_ * limits.max_slots * slot_floats_) * sizeof(float)));
  // Free lists popped from the back: ids are handed out lowest first.
  for (int64_t i = limits.max_blocks - 1; i >= 0; --i)
    free_block_ids_.push_back(static_cast<int32_t>(i));
  for (int64_t i = limits.max_slots - 1; i >= 0; --i)
    free_slot_ids_.push_back(static_cast<int32_t>(i));
}

absl::StatusOr<int32_t> CachePool::AllocateBlock() {
  if (free_block_ids_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", limits_.max_blocks, " KV blocks are in use"));
  }
  ++used_blocks_;
  const int32_t id = free_block_ids_.back();
  free_block_ids_.pop_back();
  return id;
}

void CachePool::FreeBlock(int32_t block) {
  free_block_ids_.push_back(block);
  --used_blocks_;
}

absl::StatusOr<int32_t> CachePool::AllocateSlot() {
  if (free_slot_ids_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", limits_.max_slots, " state slots are in use"));
  }
  ++used_slots_;
  const int32_t id = free_slot_ids_.back();
  free_slot_ids_.pop_back();
  // A new sequence starts from zero state in every DeltaNet layer.
  for (int64_t l = 0; l < linear_layers_; ++l) {
    backend_->Fill(state_layer(l).conv(id), 0.0f, slot_floats_);
  }
  return id;
}

void CachePool::FreeSlot(int32_t slot) {
  free_slot_ids_.push_back(slot);
  --used_slots_;
}

kernels::KvLayer CachePool::kv_layer(int64_t attention_index) const {
  return {static_cast<char*>(keys_->data()) + attention_index * layer_kv_bytes_,
          static_cast<char*>(values_->data()) + attention_index * layer_kv_bytes_, limits_.kv_dtype,
          limits_.block_size, kv_width_};
}

kernels::StateLayer CachePool::state_layer(int64_t linear_index) const {
  return {states_->f32() + linear_index * limits_.max_slots * slot_floats_, slot_floats_};
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
