// One sequence's caches: keys/values of the full-attention layers, and the conv window plus fp32
// recurrent state of the DeltaNet layers. Contiguous per sequence for now; the serving scheduler
// replaces the KV part with paged blocks.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace nextserve {

class SequenceState {
 public:
  explicit SequenceState(const ModelConfig& config);

  int64_t num_tokens() const { return num_tokens_; }

  // Indexed by layer number; empty for layers of the other kind.
  std::vector<std::vector<float>> keys, values;  // [tokens, kv_heads * head_dim]
  std::vector<std::vector<float>> conv_window;   // [kernel - 1, conv_dim], raw inputs
  std::vector<std::vector<float>> recurrent;     // [value_heads, key_dim, value_dim], fp32

  // Bytes held (KV grows with tokens; the DeltaNet part is fixed).
  size_t bytes() const;

 private:
  friend class Qwen3NextModel;
  int64_t num_tokens_ = 0;
};

}  // namespace nextserve
