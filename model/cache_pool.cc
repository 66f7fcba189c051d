#include "model/cache_pool.h"

#include <algorithm>
#include <string>
#include <vector>

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

namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Snapshot keys live apart from block hashes: the same parent and tokens name both.
constexpr uint64_t kSnapshotSalt = 0x3c6ef372fe94f82bull;

uint64_t SnapshotKey(uint64_t parent, std::span<const int32_t> tail, int64_t length) {
  return Mix(HashTokens(parent ^ kSnapshotSalt, tail) + static_cast<uint64_t>(length));
}

}  // namespace

uint64_t HashTokens(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = Mix(parent);
  for (int32_t t : tokens) h = Mix(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) + 1));
  h = Mix(h + tokens.size());
  return h == 0 ? 1 : h;  // 0 means "not in the index"
}

CachePool::CachePool(const ModelConfig& c, CacheLimits limits, kernels::Backend* backend)
    : limits_(limits), backend_(backend) {
  attention_layers_ = 0;
  linear_layers_ = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    (c.is_full_attention(l) ? attention_layers_ : linear_layers_) += 1;
  }
  if (!limits_.prefix_cache) limits_.max_snapshots = 0;
  limits_.max_snapshots = std::max<int64_t>(0, limits_.max_snapshots);
  total_blocks_ = limits_.max_blocks + limits_.max_snapshots;
  total_slots_ = limits_.max_slots + limits_.max_snapshots;
  kv_width_ = c.num_key_value_heads * c.head_dim;
  const int64_t elem = static_cast<int64_t>(DTypeSize(limits.kv_dtype));
  layer_kv_bytes_ = total_blocks_ * limits.block_size * kv_width_ * elem;
  block_bytes_ = attention_layers_ * 2 * limits.block_size * kv_width_ * elem;
  slot_floats_ = (c.linear_conv_kernel_dim - 1) * c.linear_conv_dim() +
                 c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim;
  keys_ = backend_->Allocate(
      static_cast<size_t>(std::max<int64_t>(1, attention_layers_ * layer_kv_bytes_)));
  values_ = backend_->Allocate(
      static_cast<size_t>(std::max<int64_t>(1, attention_layers_ * layer_kv_bytes_)));
  states_ = backend_->Allocate(static_cast<size_t>(
      std::max<int64_t>(1, linear_layers_ * total_slots_ * slot_floats_) * sizeof(float)));
  // Free lists popped from the back: ids are handed out lowest first.
  for (int64_t i = limits.max_blocks - 1; i >= 0; --i)
    free_block_ids_.push_back(static_cast<int32_t>(i));
  for (int64_t i = limits.max_slots - 1; i >= 0; --i)
    free_slot_ids_.push_back(static_cast<int32_t>(i));
  refs_.assign(static_cast<size_t>(limits.max_blocks), 0);
  if (limits_.prefix_cache) {
    hash_.assign(static_cast<size_t>(limits.max_blocks), 0);
    evictable_pos_.resize(static_cast<size_t>(limits.max_blocks));
    block_tokens_.assign(static_cast<size_t>(limits.max_blocks * limits.block_size), 0);
    snapshots_.resize(static_cast<size_t>(limits_.max_snapshots));
    for (int64_t i = limits_.max_snapshots - 1; i >= 0; --i)
      free_snapshot_ids_.push_back(static_cast<int32_t>(i));
  }
}

absl::StatusOr<int32_t> CachePool::AllocateBlock() {
  int32_t id;
  if (!free_block_ids_.empty()) {
    id = free_block_ids_.back();
    free_block_ids_.pop_back();
  } else if (!evictable_.empty()) {
    id = evictable_.front();
    evictable_.pop_front();
    index_.erase(hash_[id]);  // the index holds only the first block with a given hash: this one
    hash_[id] = 0;
    ++stats_.block_evictions;
  } else {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", limits_.max_blocks, " KV blocks are in use"));
  }
  refs_[id] = 1;
  return id;
}

void CachePool::FreeBlock(int32_t block) {
  if (--refs_[block] > 0) return;
  if (limits_.prefix_cache && hash_[block] != 0) {
    evictable_pos_[block] = evictable_.insert(evictable_.end(), block);
  } else {
    free_block_ids_.push_back(block);
  }
}

void CachePool::PublishBlock(int32_t block, uint64_t hash, std::span<const int32_t> tokens) {
  if (!limits_.prefix_cache || hash_[block] != 0) return;
  if (!index_.emplace(hash, block).second) return;  // the same content is cached already
  hash_[block] = hash;
  std::copy(tokens.begin(), tokens.end(), block_tokens_.begin() + block * limits_.block_size);
}

int32_t CachePool::FindBlock(uint64_t hash, std::span<const int32_t> tokens) const {
  if (!limits_.prefix_cache) return -1;
  auto it = index_.find(hash);
  if (it == index_.end()) return -1;
  const auto stored = block_tokens_.begin() + it->second * limits_.block_size;
  return std::equal(tokens.begin(), tokens.end(), stored) ? it->second : -1;
}

void CachePool::AcquireBlock(int32_t block) {
  if (refs_[block]++ == 0) evictable_.erase(evictable_pos_[block]);
}

void CachePool::CopyKvRows(int32_t src_block, int32_t dst_block, int64_t rows) {
  const int64_t row_bytes = kv_width_ * static_cast<int64_t>(DTypeSize(limits_.kv_dtype));
  const int64_t block_stride = limits_.block_size * row_bytes;
  for (int64_t l = 0; l < attention_layers_; ++l) {
    for (kernels::Buffer* arena : {keys_.get(), values_.get()}) {
      char* base = static_cast<char*>(arena->data()) + l * layer_kv_bytes_;
      backend_->Copy(base + src_block * block_stride, base + dst_block * block_stride,
                     static_cast<size_t>(rows * row_bytes));
    }
  }
}

void CachePool::CopySlot(int32_t src_slot, int32_t dst_slot) {
  for (int64_t l = 0; l < linear_layers_; ++l) {
    const kernels::StateLayer layer = state_layer(l);
    backend_->Copy(layer.conv(src_slot), layer.conv(dst_slot),
                   static_cast<size_t>(slot_floats_) * sizeof(float));
  }
}

void CachePool::TakeSnapshot(uint64_t parent, std::span<const int32_t> tail, int64_t length,
                             int32_t slot, int32_t tail_block) {
  if (limits_.max_snapshots == 0) return;
  const uint64_t key = SnapshotKey(parent, tail, length);
  if (auto it = snapshot_index_.find(key); it != snapshot_index_.end()) {
    // Already held (or a different prefix with the same key: keep the old one, never mix them).
    Snapshot& s = snapshots_[it->second];
    snapshot_lru_.splice(snapshot_lru_.end(), snapshot_lru_, s.lru);
    return;
  }
  int32_t id;
  if (!free_snapshot_ids_.empty()) {
    id = free_snapshot_ids_.back();
    free_snapshot_ids_.pop_back();
  } else {
    id = snapshot_lru_.front();
    snapshot_lru_.pop_front();
    snapshot_index_.erase(snapshots_[id].key);
    ++stats_.snapshot_evictions;
  }
  const int32_t own = static_cast<int32_t>(id);
  CopySlot(slot, static_cast<int32_t>(limits_.max_slots + own));
  if (!tail.empty()) {
    CopyKvRows(tail_block, static_cast<int32_t>(limits_.max_blocks + own),
               static_cast<int64_t>(tail.size()));
  }
  Snapshot& s = snapshots_[id];
  s.used = true;
  s.key = key;
  s.parent = parent;
  s.length = length;
  s.tail.assign(tail.begin(), tail.end());
  s.lru = snapshot_lru_.insert(snapshot_lru_.end(), id);
  snapshot_index_.emplace(key, id);
  ++stats_.snapshots_taken;
}

int32_t CachePool::FindSnapshot(uint64_t parent, std::span<const int32_t> tail, int64_t length) {
  if (limits_.max_snapshots == 0) return -1;
  auto it = snapshot_index_.find(SnapshotKey(parent, tail, length));
  if (it == snapshot_index_.end()) return -1;
  Snapshot& s = snapshots_[it->second];
  if (s.parent != parent || s.length != length ||
      !std::equal(tail.begin(), tail.end(), s.tail.begin(), s.tail.end())) {
    return -1;
  }
  snapshot_lru_.splice(snapshot_lru_.end(), snapshot_lru_, s.lru);
  return it->second;
}

void CachePool::RestoreSnapshot(int32_t snapshot, int32_t slot, int32_t tail_block) {
  const Snapshot& s = snapshots_[snapshot];
  CopySlot(static_cast<int32_t>(limits_.max_slots + snapshot), slot);
  if (!s.tail.empty()) {
    CopyKvRows(static_cast<int32_t>(limits_.max_blocks + snapshot), tail_block,
               static_cast<int64_t>(s.tail.size()));
  }
}

void CachePool::CountQuery(int64_t tokens, int64_t hit_tokens) {
  ++stats_.queries;
  stats_.query_tokens += tokens;
  if (hit_tokens > 0) ++stats_.hits;
  stats_.hit_tokens += hit_tokens;
}

PrefixCacheStats CachePool::stats() const {
  PrefixCacheStats s = stats_;
  s.snapshots_used = static_cast<int64_t>(snapshot_index_.size());
  s.cached_blocks = static_cast<int64_t>(index_.size());
  return s;
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
  return {states_->f32() + linear_index * total_slots_ * slot_floats_, slot_floats_};
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
  hashes_.clear();
  if (slot_ >= 0) pool_->FreeSlot(slot_);
  slot_ = -1;
  num_tokens_ = 0;
}

int64_t SequenceState::AttachPrefix(std::span<const int32_t> tokens, int64_t* cached_kv) {
  if (cached_kv != nullptr) *cached_kv = 0;
  if (!pool_->prefix_cache() || num_tokens_ != 0 || !blocks_.empty() || slot_ >= 0) return 0;
  const int64_t n = static_cast<int64_t>(tokens.size()), bs = pool_->block_size();
  // At least one token must run to give logits: only prefixes p < n count, so only blocks that
  // end at or before n - 1.
  std::vector<uint64_t> chain = {kRootHash};
  std::vector<int32_t> found;
  for (int64_t k = 0; (k + 1) * bs <= n - 1; ++k) {
    const auto block_tokens = tokens.subspan(k * bs, bs);
    const uint64_t h = HashTokens(chain.back(), block_tokens);
    const int32_t b = pool_->FindBlock(h, block_tokens);
    if (b < 0) break;
    chain.push_back(h);
    found.push_back(b);
  }
  const int64_t full = static_cast<int64_t>(found.size());
  if (cached_kv != nullptr) *cached_kv = full * bs;
  // The longest prefix with a snapshot whose full blocks are all cached. KV cached past it (the
  // gap up to full * bs) is prefilled again: the state exists only at snapshots.
  int32_t snapshot = -1;
  int64_t p = std::min(n - 1, full * bs + bs - 1);
  for (; p >= 1; --p) {
    const int64_t k = p / bs;
    snapshot = pool_->FindSnapshot(chain[k], tokens.subspan(k * bs, p - k * bs), p);
    if (snapshot >= 0) break;
  }
  if (snapshot < 0 || pool_->free_slots() < 1) return 0;
  const int64_t shared = p / bs;
  for (int64_t k = 0; k < shared; ++k) {
    pool_->AcquireBlock(found[k]);
    blocks_.push_back(found[k]);
  }
  int32_t tail = -1;
  if (p % bs != 0) {
    auto block = pool_->AllocateBlock();
    if (!block.ok()) {
      Reset();
      return 0;
    }
    tail = *block;
    blocks_.push_back(tail);
  }
  slot_ = *pool_->AllocateSlot();  // checked free above
  pool_->RestoreSnapshot(snapshot, slot_, tail);
  hashes_.assign(chain.begin() + 1, chain.begin() + 1 + shared);
  num_tokens_ = p;
  return p;
}

void SequenceState::Publish(std::span<const int32_t> tokens) {
  if (!pool_->prefix_cache()) return;
  const int64_t bs = pool_->block_size();
  for (int64_t k = static_cast<int64_t>(hashes_.size()); (k + 1) * bs <= num_tokens_; ++k) {
    const auto block_tokens = tokens.subspan(k * bs, bs);
    const uint64_t h = HashTokens(k == 0 ? kRootHash : hashes_[k - 1], block_tokens);
    pool_->PublishBlock(blocks_[k], h, block_tokens);
    hashes_.push_back(h);
  }
}

void SequenceState::Snapshot(std::span<const int32_t> tokens) {
  if (!pool_->prefix_cache() || num_tokens_ == 0 || slot_ < 0) return;
  Publish(tokens);
  const int64_t bs = pool_->block_size(), k = num_tokens_ / bs;
  const auto tail = tokens.subspan(k * bs, num_tokens_ - k * bs);
  pool_->TakeSnapshot(k == 0 ? kRootHash : hashes_[k - 1], tail, num_tokens_, slot_,
                      tail.empty() ? -1 : blocks_[k]);
}

}  // namespace nextserve
