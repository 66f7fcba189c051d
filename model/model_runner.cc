#include "model/model_runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace nextserve {

ModelRunner::ModelRunner(kernels::Backend* backend, CachePool* pool, int64_t vocab_size)
    : backend_(backend), pool_(pool), vocab_size_(vocab_size) {}

absl::StatusOr<kernels::StepMeta> ModelRunner::Prepare(std::span<const SequenceInput> batch) {
  int64_t tokens = 0, logit_rows = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceInput& in = batch[s];
    if (in.state == nullptr || in.state->pool() != pool_) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no state from this model"));
    }
    if (in.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no tokens to process"));
    }
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      if (in.tokens[i] < 0 || in.tokens[i] >= vocab_size_) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": token id ", in.tokens[i],
                                                       " at position ", i, " is outside [0, ",
                                                       vocab_size_, ")"));
      }
    }
    tokens += static_cast<int64_t>(in.tokens.size());
    logit_rows += in.no_logits ? 0 : in.all_logits ? static_cast<int64_t>(in.tokens.size()) : 1;
  }
  for (size_t s = 0; s < batch.size(); ++s) {
    if (auto st = batch[s].state->Reserve(static_cast<int64_t>(batch[s].tokens.size())); !st.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat("sequence ", s, ": ", st.message()));
    }
  }
  const int64_t seqs = static_cast<int64_t>(batch.size()), bs = pool_->block_size();
  int64_t max_blocks = 0, max_query = 0, max_context = 0;
  for (const SequenceInput& in : batch) {
    max_blocks = std::max<int64_t>(max_blocks, static_cast<int64_t>(in.state->blocks().size()));
    max_query = std::max<int64_t>(max_query, static_cast<int64_t>(in.tokens.size()));
    max_context = std::max<int64_t>(
        max_context, in.state->num_tokens() + static_cast<int64_t>(in.tokens.size()));
  }

  // Layout: ids, positions, slot mapping [tokens]; cu_seqlens [seqs + 1]; context lengths and
  // slots [seqs]; block table [seqs, max_blocks]; logit rows.
  const int64_t total = 3 * tokens + (seqs + 1) + 2 * seqs + seqs * max_blocks + logit_rows;
  staging_.assign(static_cast<size_t>(std::max<int64_t>(total, 1)), 0);
  int32_t* ids = staging_.data();
  int32_t* positions = ids + tokens;
  int32_t* slot_mapping = positions + tokens;
  int32_t* cu = slot_mapping + tokens;
  int32_t* context = cu + seqs + 1;
  int32_t* slots = context + seqs;
  int32_t* table = slots + seqs;
  int32_t* logits = table + seqs * max_blocks;
  int64_t row = 0, logit = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    const SequenceInput& in = batch[s];
    const SequenceState& st = *in.state;
    const int64_t t = static_cast<int64_t>(in.tokens.size()), past = st.num_tokens();
    cu[s] = static_cast<int32_t>(row);
    context[s] = static_cast<int32_t>(past + t);
    slots[s] = st.slot();
    std::copy(st.blocks().begin(), st.blocks().end(), table + s * max_blocks);
    for (int64_t i = 0; i < t; ++i) {
      const int64_t pos = past + i;
      ids[row + i] = in.tokens[i];
      positions[row + i] = static_cast<int32_t>(pos);
      slot_mapping[row + i] = static_cast<int32_t>(st.blocks()[pos / bs] * bs + pos % bs);
    }
    if (!in.no_logits) {
      for (int64_t i = in.all_logits ? 0 : t - 1; i < t; ++i) {
        logits[logit++] = static_cast<int32_t>(row + i);
      }
    }
    row += t;
  }
  cu[seqs] = static_cast<int32_t>(row);

  const size_t bytes = staging_.size() * sizeof(int32_t);
  if (device_ == nullptr || device_->size() < bytes) {
    // Grown to twice the need so that the next few larger steps fit as well.
    device_ = backend_->Allocate(std::max<size_t>(2 * bytes, 4096));
  }
  backend_->CopyFromHost(staging_.data(), device_->data(), bytes);

  kernels::StepMeta meta;
  meta.num_seqs = static_cast<int32_t>(seqs);
  meta.num_tokens = static_cast<int32_t>(tokens);
  meta.num_logit_rows = static_cast<int32_t>(logit_rows);
  meta.max_blocks_per_seq = static_cast<int32_t>(max_blocks);
  meta.max_query_len = static_cast<int32_t>(max_query);
  meta.max_context_len = static_cast<int32_t>(max_context);
  meta.block_size = static_cast<int32_t>(bs);
  auto place = [&](const int32_t* host_ptr, const int32_t* base) {
    return base + (host_ptr - staging_.data());
  };
  host_meta_ = meta;
  for (auto [m, base] : {std::pair{&meta, static_cast<const int32_t*>(device_->data())},
                         std::pair{&host_meta_, static_cast<const int32_t*>(staging_.data())}}) {
    m->token_ids = place(ids, base);
    m->positions = place(positions, base);
    m->slot_mapping = place(slot_mapping, base);
    m->cu_seqlens_q = place(cu, base);
    m->context_lens = place(context, base);
    m->state_slots = place(slots, base);
    m->block_table = place(table, base);
    m->logit_rows = place(logits, base);
  }
  return meta;
}

void ModelRunner::Advance(std::span<const SequenceInput> batch) {
  for (const SequenceInput& in : batch) in.state->Advance(static_cast<int64_t>(in.tokens.size()));
}

}  // namespace nextserve
