// Memory for sequences' caches, as two arenas the backend owns, handed out as indices:
//   KV    [attention layers][blocks][block size][kv heads x head dim], keys and values apart, in
//         the KV dtype (fp32, or bf16 to halve it);
//   state [linear layers][slots][conv window | recurrent state], fp32.
// A block is shared by all full-attention layers (the same index in each), a slot by all DeltaNet
// layers. Both arenas are sized for the limits at construction; on the CPU their pages are
// committed only when first written, so unused capacity costs address space, not memory.
//
// With the prefix cache on (CacheLimits::prefix_cache):
// - Full KV blocks carry a content hash chained from the sequence start (HashTokens(parent, the
//   block's token ids)) and are shared by reference count. A block whose last reference goes away
//   stays cached (unreferenced, evictable, least recently used first) until a new block is needed
//   and the free list is empty. Only full blocks are shared, so no copy-on-write is ever needed.
// - DeltaNet state snapshots (the conv window and recurrent state of every linear layer, as of an
//   exact token prefix) live in their own region of the state arena: max_snapshots extra slots,
//   LRU. A snapshot that ends inside a block also keeps the KV rows of that partial block in one
//   extra KV block of its own (blocks past max_blocks), so a hit never depends on a partial block.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <span>
#include <unordered_map>
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
  bool prefix_cache = false;     // share full KV blocks by content, keep state snapshots
  // Snapshot budget: each takes one state slot and one KV block (CachePool::snapshot_bytes()).
  int64_t max_snapshots = 64;
};

// The chained content hash of the prefix cache: parent = the hash of everything before `tokens`
// (kRootHash at the sequence start). Deterministic across processes (no per-process seed).
inline constexpr uint64_t kRootHash = 0x6a09e667f3bcc909ull;
uint64_t HashTokens(uint64_t parent, std::span<const int32_t> tokens);

struct PrefixCacheStats {
  int64_t queries = 0;       // lookups (one per admitted sequence)
  int64_t hits = 0;          // lookups that reused a prefix
  int64_t query_tokens = 0;  // tokens the lookups asked about
  int64_t hit_tokens = 0;    // tokens reused (not prefilled)
  int64_t snapshots_taken = 0, snapshot_evictions = 0, block_evictions = 0;
  int64_t snapshots_used = 0;  // snapshots held now
  int64_t cached_blocks = 0;   // full blocks in the index now (referenced or not)
};

class CachePool {
 public:
  // InvalidArgument-style misuse (a KV dtype other than fp32/bf16) is caught by Validate first.
  CachePool(const ModelConfig& config, CacheLimits limits, kernels::Backend* backend);
  static absl::Status Validate(const CacheLimits& limits);

  int64_t block_size() const { return limits_.block_size; }
  const CacheLimits& limits() const { return limits_; }
  bool prefix_cache() const { return limits_.prefix_cache; }
  // A free block, else the least recently used cached unreferenced one (evicted from the index).
  // ResourceExhausted once max_blocks are referenced.
  absl::StatusOr<int32_t> AllocateBlock();
  // Drops one reference; at zero a cached block becomes evictable, any other is free again.
  void FreeBlock(int32_t block);
  absl::StatusOr<int32_t> AllocateSlot();  // zeroed: a new sequence's state
  void FreeSlot(int32_t slot);
  // Free blocks include cached blocks nobody references (they are evicted on demand).
  int64_t free_blocks() const {
    return static_cast<int64_t>(free_block_ids_.size() + evictable_.size());
  }
  int64_t free_slots() const { return limits_.max_slots - used_slots_; }

  // ---- prefix cache (no-ops / misses while it is off)
  // Enters a full block (one reference held by the caller) into the index under `hash`. When
  // another block already holds that content the index keeps the older one.
  void PublishBlock(int32_t block, uint64_t hash, std::span<const int32_t> tokens);
  // The cached block with this hash and these tokens, or -1.
  int32_t FindBlock(uint64_t hash, std::span<const int32_t> tokens) const;
  void AcquireBlock(int32_t block);  // one more reference to a cached block
  // Snapshots the state in `slot` as the state after a prefix whose full blocks hash to `parent`
  // and that ends with `tail` (< block size tokens, whose KV rows are at the start of
  // `tail_block`). The key is the prefix length and its hash; an existing one is only touched.
  void TakeSnapshot(uint64_t parent, std::span<const int32_t> tail, int64_t length, int32_t slot,
                    int32_t tail_block);
  // The snapshot for exactly this prefix, or -1; a found one becomes the most recently used.
  int32_t FindSnapshot(uint64_t parent, std::span<const int32_t> tail, int64_t length);
  // Copies snapshot `snapshot` into `slot` and its tail KV rows into `tail_block`.
  void RestoreSnapshot(int32_t snapshot, int32_t slot, int32_t tail_block);
  // One lookup of `tokens` that reused `hit_tokens` (the scheduler counts admitted ones only, so
  // an admission retried for memory is not counted twice).
  void CountQuery(int64_t tokens, int64_t hit_tokens);
  PrefixCacheStats stats() const;

  // attention_index / linear_index count only layers of that kind (0 = the first such layer).
  kernels::KvLayer kv_layer(int64_t attention_index) const;
  kernels::StateLayer state_layer(int64_t linear_index) const;

  // Bytes one block (all attention layers, keys and values) and one slot (all DeltaNet layers).
  int64_t block_bytes() const { return block_bytes_; }
  int64_t slot_bytes() const { return slot_floats_ * static_cast<int64_t>(sizeof(float)); }
  // One snapshot: a slot and a tail block.
  int64_t snapshot_bytes() const { return slot_bytes() + block_bytes(); }

 private:
  struct Snapshot {
    bool used = false;
    uint64_t key = 0, parent = 0;
    int64_t length = 0;
    std::vector<int32_t> tail;
    std::list<int32_t>::iterator lru;
  };
  void CopyKvRows(int32_t src_block, int32_t dst_block, int64_t rows);
  void CopySlot(int32_t src_slot, int32_t dst_slot);

  CacheLimits limits_;
  kernels::Backend* backend_;
  int64_t kv_width_, attention_layers_, linear_layers_;
  int64_t total_blocks_, total_slots_;  // sequences' plus the snapshots' own
  int64_t layer_kv_bytes_;              // one attention layer's keys (or values) for every block
  int64_t block_bytes_, slot_floats_;
  std::unique_ptr<kernels::Buffer> keys_, values_, states_;
  std::vector<int32_t> free_block_ids_, free_slot_ids_;
  int64_t used_slots_ = 0;

  // Per block: references, the content hash (0: not in the index) and, when cached, its tokens
  // (checked on lookup, so a hash collision is a miss, not wrong output).
  std::vector<int32_t> refs_;
  std::vector<uint64_t> hash_;
  std::vector<int32_t> block_tokens_;  // [max_blocks, block_size]
  std::unordered_map<uint64_t, int32_t> index_;
  std::list<int32_t> evictable_;  // cached, unreferenced; front = least recently used
  std::vector<std::list<int32_t>::iterator> evictable_pos_;

  std::vector<Snapshot> snapshots_;
  std::unordered_map<uint64_t, int32_t> snapshot_index_;
  std::list<int32_t> snapshot_lru_;  // front = least recently used
  std::vector<int32_t> free_snapshot_ids_;
  PrefixCacheStats stats_;
};

// One sequence's view of the pool: its block table, its state slot and how many tokens it holds.
// Gives everything back to the pool when destroyed or Reset (preemption by recompute); with the
// prefix cache its full blocks stay cached for others.
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

  // ---- prefix cache (no-ops while the pool's is off)
  // On an empty sequence that will run `tokens`: finds the longest prefix p < tokens.size() with a
  // state snapshot whose full KV blocks are cached, shares those blocks, restores the snapshot
  // (and its partial block's rows) and returns p (num_tokens() = p). 0: nothing reused (or no slot
  // or block to restore into); the sequence stays empty. `cached_kv` (optional) receives how many
  // leading tokens have cached full KV blocks: past p, that is where the prompt diverged from the
  // cached one, a good place for a new snapshot.
  int64_t AttachPrefix(std::span<const int32_t> tokens, int64_t* cached_kv = nullptr);
  // `tokens` holds at least num_tokens() ids, the ones in the cache: enters its new full blocks in
  // the index.
  void Publish(std::span<const int32_t> tokens);
  // Publishes, then snapshots the state as of num_tokens().
  void Snapshot(std::span<const int32_t> tokens);

 private:
  CachePool* pool_;
  std::vector<int32_t> blocks_;
  std::vector<uint64_t> hashes_;  // chained hashes of the published full blocks
  int32_t slot_ = -1;
  int64_t num_tokens_ = 0;
};

}  // namespace nextserve
