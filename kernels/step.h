// The metadata of one engine step, as the model runner (model/model_runner.h) builds it once from
// the scheduler's batch and uploads it in one copy. Every array is int32 and lives in the
// backend's memory; the scalars are host values (launch sizes).
#pragma once

#include <cstdint>

namespace nextserve::kernels {

struct StepMeta {
  int32_t num_seqs = 0;
  int32_t num_tokens = 0;
  int32_t num_logit_rows = 0;
  int32_t max_blocks_per_seq = 0;  // row stride of block_table
  int32_t max_query_len = 0;       // the most new tokens of one sequence
  int32_t max_context_len = 0;     // the longest context (past + new) of one sequence
  int32_t block_size = 0;

  const int32_t* token_ids = nullptr;     // [num_tokens]
  const int32_t* positions = nullptr;     // [num_tokens]: position of each new token
  const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]: first new-token row of each sequence
  const int32_t* context_lens = nullptr;  // [num_seqs]: keys each sequence attends to (past + new)
  const int32_t* slot_mapping = nullptr;  // [num_tokens]: KV arena row (block * block_size + off)
  const int32_t* block_table = nullptr;   // [num_seqs, max_blocks_per_seq]
  const int32_t* state_slots = nullptr;   // [num_seqs]: DeltaNet state slot
  const int32_t* logit_rows = nullptr;    // [num_logit_rows]: token rows that produce logits

  int32_t query_len(int32_t s) const { return cu_seqlens_q[s + 1] - cu_seqlens_q[s]; }
};

}  // namespace nextserve::kernels
