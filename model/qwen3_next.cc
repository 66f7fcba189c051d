// Qwen3-Next forward (spec §2–§5): every token of every sequence goes through the GEMMs together;
// attention and the DeltaNet recurrences run per sequence over that sequence's caches.
#include "model/qwen3_next.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "comm/communicator.h"

namespace nextserve {
namespace {

kernels::Matrix M(const WeightRef& w) {
  return {w.dtype, w.data, w.rows, w.cols, w.block_scale};
}

class ScopedTimer {
 public:
  explicit ScopedTimer(double* sink) : sink_(sink), start_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() { Stop(); }
  void Stop() {
    if (sink_) {
      *sink_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }
    sink_ = nullptr;
  }

 private:
  double* sink_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

// Scratch and bookkeeping of one Forward call.
struct Qwen3NextModel::Step {
  std::span<const SequenceInput> batch;
  std::vector<int64_t> offset;  // first row of each sequence in the flattened token matrix
  int64_t rows = 0;
  ForwardProfile* profile = nullptr;
  double* timer(double ForwardProfile::*field) { return profile ? &(profile->*field) : nullptr; }
};

Qwen3NextModel::Qwen3NextModel(std::shared_ptr<const ModelWeights> weights,
                               kernels::Backend* backend, CacheLimits cache_limits,
                               comm::Communicator* comm, std::optional<ExpertPlacement> placement)
    : weights_(std::move(weights)),
      backend_(backend),
      pool_(weights_->config(), cache_limits),
      own_comm_(comm == nullptr ? comm::MakeSingleProcessCommunicator() : nullptr),
      comm_(comm != nullptr ? comm : own_comm_.get()),
      placement_(placement
                     ? *placement
                     : ExpertPlacement::Contiguous(weights_->config().num_experts, comm_->size())),
      expert_tokens_(weights_->config().num_hidden_layers * weights_->config().num_experts, 0) {
  // Every expert this rank is sent must be loaded here; with one rank, all of them.
  expert_parallel_ok_ = placement_.ranks() == comm_->size();
  for (int64_t e = 0; e < placement_.experts() && expert_parallel_ok_; ++e) {
    if (placement_.owner(e) == comm_->rank() && !weights_->owns_expert[e])
      expert_parallel_ok_ = false;
  }
  int64_t attention = 0, linear = 0;
  for (int64_t l = 0; l < config().num_hidden_layers; ++l) {
    kind_index_.push_back(config().is_full_attention(l) ? attention++ : linear++);
  }
}

Qwen3NextModel::~Qwen3NextModel() = default;

std::unique_ptr<SequenceState> Qwen3NextModel::NewSequence() {
  return std::make_unique<SequenceState>(&pool_);
}

absl::StatusOr<std::vector<float>> Qwen3NextModel::Forward(std::span<const SequenceInput> batch,
                                                           ForwardProfile* profile) {
  const ModelConfig& c = config();
  if (!expert_parallel_ok_) {
    return absl::FailedPreconditionError(
        "this model holds only a slice of the routed experts but has no communicator to reach the "
        "other ranks' experts");
  }
  Step step;
  step.batch = batch;
  step.profile = profile;
  std::vector<int32_t> ids;
  int64_t logit_rows = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceInput& in = batch[s];
    if (in.state == nullptr || in.state->pool() != &pool_) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no state from this model"));
    }
    if (in.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no tokens to process"));
    }
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      if (in.tokens[i] < 0 || in.tokens[i] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": token id ", in.tokens[i],
                                                       " at position ", i, " is outside [0, ",
                                                       c.vocab_size, ")"));
      }
    }
    step.offset.push_back(static_cast<int64_t>(ids.size()));
    ids.insert(ids.end(), in.tokens.begin(), in.tokens.end());
    logit_rows += in.no_logits ? 0 : in.all_logits ? static_cast<int64_t>(in.tokens.size()) : 1;
  }
  for (size_t s = 0; s < batch.size(); ++s) {
    if (auto st = batch[s].state->Reserve(static_cast<int64_t>(batch[s].tokens.size())); !st.ok()) {
      return absl::ResourceExhaustedError(absl::StrCat("sequence ", s, ": ", st.message()));
    }
  }
  step.rows = static_cast<int64_t>(ids.size());
  const int64_t n = step.rows, hidden = c.hidden_size;

  std::vector<float> x(n * hidden), h(n * hidden), mixed(n * hidden);
  backend_->Embedding(ids.data(), n, M(weights_->embed_tokens), x.data());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_->layers[l];
    backend_->RmsNorm(x.data(), n, hidden, lw.input_layernorm.f32(), c.rms_norm_eps, true,
                      h.data());
    if (lw.type == LayerType::kFullAttention) {
      ScopedTimer t(step.timer(&ForwardProfile::attention));
      AttentionLayer(l, step, h.data(), mixed.data());
    } else {
      ScopedTimer t(step.timer(&ForwardProfile::delta_net));
      DeltaNetLayer(l, step, h.data(), mixed.data());
    }
    backend_->Add(mixed.data(), n * hidden, x.data());
    backend_->RmsNorm(x.data(), n, hidden, lw.post_attention_layernorm.f32(), c.rms_norm_eps, true,
                      h.data());
    {
      ScopedTimer t(step.timer(&ForwardProfile::moe));
      if (lw.is_moe) {
        if (auto st = MoeLayer(l, step, h.data(), mixed.data()); !st.ok()) return st;
      } else {
        DenseMlp(lw.mlp, h.data(), n, mixed.data());
      }
    }
    backend_->Add(mixed.data(), n * hidden, x.data());
  }
  for (size_t s = 0; s < batch.size(); ++s) {
    batch[s].state->Advance(static_cast<int64_t>(batch[s].tokens.size()));
  }

  // Final norm and lm_head only on the rows that produce logits.
  ScopedTimer t(step.timer(&ForwardProfile::lm_head));
  std::vector<int32_t> rows;
  for (size_t s = 0; s < batch.size(); ++s) {
    const int64_t len = static_cast<int64_t>(batch[s].tokens.size());
    if (batch[s].no_logits) continue;
    for (int64_t i = batch[s].all_logits ? 0 : len - 1; i < len; ++i) {
      rows.push_back(static_cast<int32_t>(step.offset[s] + i));
    }
  }
  std::vector<float> selected(logit_rows * hidden);
  backend_->GatherRows(x.data(), rows.data(), logit_rows, hidden, selected.data());
  backend_->RmsNorm(selected.data(), logit_rows, hidden, weights_->final_norm.f32(), c.rms_norm_eps,
                    true, selected.data());
  std::vector<float> logits(logit_rows * c.vocab_size);
  backend_->Linear(selected.data(), logit_rows, M(weights_->lm_head), logits.data());
  return logits;
}

void Qwen3NextModel::AttentionLayer(int64_t layer, Step& step, const float* h, float* out) {
  const ModelConfig& c = config();
  const AttentionWeights& w = weights_->layers[layer].attention;
  const int64_t n = step.rows, d = c.head_dim, heads = c.num_attention_heads,
                kv_width = c.num_key_value_heads * d;
  const kernels::AttentionShape shape{heads, c.num_key_value_heads, d, c.rotary_dim(),
                                      static_cast<float>(c.rope_theta)};
  std::vector<float> qg(n * 2 * heads * d), k(n * kv_width), v(n * kv_width), q(n * heads * d),
      gate(n * heads * d), attn(n * heads * d);
  backend_->Linear(h, n, M(w.q_proj), qg.data());
  backend_->Linear(h, n, M(w.k_proj), k.data());
  backend_->Linear(h, n, M(w.v_proj), v.data());
  const int64_t bs = pool_.block_size(), index = kind_index_[layer];
  std::vector<const float*> k_blocks, v_blocks;
  for (size_t s = 0; s < step.batch.size(); ++s) {
    SequenceState& st = *step.batch[s].state;
    const int64_t t = static_cast<int64_t>(step.batch[s].tokens.size()), row = step.offset[s],
                  past = st.num_tokens();
    backend_->AttentionPrep(qg.data() + row * 2 * heads * d, k.data() + row * kv_width, t, past,
                            shape, w.q_norm.f32(), w.k_norm.f32(), c.rms_norm_eps,
                            q.data() + row * heads * d, gate.data() + row * heads * d);
    // Append the new keys and values to the sequence's blocks (reserved by Forward).
    for (int64_t i = 0; i < t; ++i) {
      const int64_t pos = past + i;
      const int32_t block = st.blocks()[pos / bs];
      std::copy_n(k.data() + (row + i) * kv_width, kv_width,
                  pool_.Keys(index, block) + (pos % bs) * kv_width);
      std::copy_n(v.data() + (row + i) * kv_width, kv_width,
                  pool_.Values(index, block) + (pos % bs) * kv_width);
    }
    k_blocks.clear();
    v_blocks.clear();
    for (int32_t block : st.blocks()) {
      k_blocks.push_back(pool_.Keys(index, block));
      v_blocks.push_back(pool_.Values(index, block));
    }
    backend_->Attention(q.data() + row * heads * d,
                        kernels::PagedKv{k_blocks.data(), v_blocks.data(), bs}, t, past, shape,
                        gate.data() + row * heads * d, attn.data() + row * heads * d);
  }
  backend_->Linear(attn.data(), n, M(w.o_proj), out);
}

void Qwen3NextModel::DeltaNetLayer(int64_t layer, Step& step, const float* h, float* out) {
  const ModelConfig& c = config();
  const DeltaNetWeights& w = weights_->layers[layer].delta_net;
  const kernels::DeltaNetShape shape{c.linear_num_key_heads, c.linear_num_value_heads,
                                     c.linear_key_head_dim, c.linear_value_head_dim,
                                     c.linear_conv_kernel_dim};
  const int64_t n = step.rows, nv = shape.num_value_heads, cd = shape.conv_dim(),
                vd = shape.value_dim();
  std::vector<float> qkvz(n * w.in_proj_qkvz.rows), ba(n * 2 * nv), mixed(n * cd), conv(n * cd),
      z(n * vd), b(n * nv), a(n * nv), beta(n * nv), g(n * nv), core(n * vd);
  backend_->Linear(h, n, M(w.in_proj_qkvz), qkvz.data());
  backend_->Linear(h, n, M(w.in_proj_ba), ba.data());
  backend_->DeltaNetSplit(qkvz.data(), ba.data(), n, shape, mixed.data(), z.data(), b.data(),
                          a.data());
  backend_->DeltaNetGates(b.data(), a.data(), n, nv, w.A_log.f32(), w.dt_bias.f32(), beta.data(),
                          g.data());
  for (size_t s = 0; s < step.batch.size(); ++s) {
    SequenceState& st = *step.batch[s].state;
    const int64_t t = static_cast<int64_t>(step.batch[s].tokens.size()), row = step.offset[s];
    backend_->CausalConvSilu(mixed.data() + row * cd, t, cd, shape.conv_kernel, w.conv1d.f32(),
                             pool_.ConvWindow(kind_index_[layer], st.slot()),
                             conv.data() + row * cd);
    // Prompts (and prompt chunks) use the chunked form; single decode tokens the recurrence.
    backend_->DeltaRule(conv.data() + row * cd, g.data() + row * nv, beta.data() + row * nv, t,
                        shape, pool_.Recurrent(kind_index_[layer], st.slot()),
                        core.data() + row * vd,
                        /*chunked=*/t > 1);
  }
  backend_->RmsNormGated(core.data(), z.data(), n * nv, shape.value_head_dim, w.norm.f32(),
                         c.rms_norm_eps, core.data());
  backend_->Linear(core.data(), n, M(w.out_proj), out);
}

void Qwen3NextModel::DenseMlp(const MlpWeights& w, const float* h, int64_t n, float* out) {
  const int64_t inter = w.gate_proj.rows;
  std::vector<float> gate(n * inter), up(n * inter);
  backend_->Linear(h, n, M(w.gate_proj), gate.data());
  backend_->Linear(h, n, M(w.up_proj), up.data());
  backend_->SiluMul(gate.data(), up.data(), n * inter, gate.data());
  backend_->Linear(gate.data(), n, M(w.down_proj), out);
}

// Routing (fp32 softmax over all experts, top-k with ties to the lower id as torch.topk, then
// renormalised when norm_topk_prob), then the expert-parallel exchange (architecture.md §2):
//  dispatch: one record per (token, destination rank) = hidden row + that rank's (expert, weight)
//            slots, grouped by rank; counts exchanged, then the payload (all-to-all-v);
//  experts:  each rank runs its experts over the records it received, summing each record's
//            experts in ascending id (the order transformers' index_add_ uses);
//  combine:  the partial sums go back in the same order; the owner adds them in rank order.
// With one rank the exchange is a local copy and the sums equal the single-process order exactly.
absl::Status Qwen3NextModel::MoeLayer(int64_t layer, Step& step, const float* h, float* out) {
  const ModelConfig& c = config();
  const MoeWeights& w = weights_->layers[layer].moe;
  const int64_t n = step.rows, hidden = c.hidden_size, experts = c.num_experts,
                top_k = c.num_experts_per_tok;
  const int ranks = comm_->size();
  std::vector<float> router_logits(n * experts);
  backend_->Linear(h, n, M(w.router), router_logits.data());

  std::vector<int32_t> top_ids(n * top_k);
  std::vector<float> top_weights(n * top_k);
  std::vector<int32_t> order(experts);
  std::vector<float> prob(experts);
  for (int64_t i = 0; i < n; ++i) {
    const float* lg = router_logits.data() + i * experts;
    const float mx = *std::max_element(lg, lg + experts);
    float sum = 0;
    for (int64_t e = 0; e < experts; ++e) sum += prob[e] = std::exp(lg[e] - mx);
    for (int64_t e = 0; e < experts; ++e) prob[e] /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(), [&](int32_t a, int32_t b) {
      return prob[a] > prob[b] || (prob[a] == prob[b] && a < b);
    });
    float top_sum = 0;
    for (int64_t j = 0; j < top_k; ++j) top_sum += prob[order[j]];
    // Slots sorted by expert id: the summation order of the reference.
    std::sort(order.begin(), order.begin() + top_k);
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t e = order[j];
      top_ids[i * top_k + j] = e;
      top_weights[i * top_k + j] = c.norm_topk_prob ? prob[e] / top_sum : prob[e];
    }
  }

  // Dispatch records: [hidden floats | top_k int32 expert ids (-1 = empty) | top_k float weights].
  const int64_t record_floats = hidden + 2 * top_k, record_bytes = record_floats * sizeof(float);
  std::vector<std::vector<int32_t>> tokens_to(ranks);  // per destination rank, in token order
  std::vector<char> goes_to(ranks);
  for (int64_t i = 0; i < n; ++i) {
    std::fill(goes_to.begin(), goes_to.end(), 0);
    for (int64_t j = 0; j < top_k; ++j) goes_to[placement_.owner(top_ids[i * top_k + j])] = 1;
    for (int r = 0; r < ranks; ++r) {
      if (goes_to[r]) tokens_to[r].push_back(static_cast<int32_t>(i));
    }
  }
  std::vector<int64_t> send_counts(ranks), recv_counts(ranks);
  int64_t send_records = 0;
  for (int r = 0; r < ranks; ++r) {
    send_counts[r] = static_cast<int64_t>(tokens_to[r].size()) * record_bytes;
    send_records += static_cast<int64_t>(tokens_to[r].size());
  }
  std::vector<float> send(send_records * record_floats);
  {
    float* rec = send.data();
    for (int r = 0; r < ranks; ++r) {
      for (int32_t i : tokens_to[r]) {
        std::copy_n(h + i * hidden, hidden, rec);
        int32_t* ids = reinterpret_cast<int32_t*>(rec + hidden);
        float* wts = rec + hidden + top_k;
        int64_t slot = 0;
        for (int64_t j = 0; j < top_k; ++j) {
          const int32_t e = top_ids[i * top_k + j];
          if (placement_.owner(e) != r) continue;
          ids[slot] = e;
          wts[slot++] = top_weights[i * top_k + j];
        }
        for (; slot < top_k; ++slot) ids[slot] = -1, wts[slot] = 0.0f;
        rec += record_floats;
      }
    }
  }
  ScopedTimer exchange_timer(step.timer(&ForwardProfile::communication));
  if (auto s = comm_->ExchangeCounts(send_counts, recv_counts); !s.ok()) return s;
  int64_t recv_records = 0;
  for (int r = 0; r < ranks; ++r) {
    if (recv_counts[r] % record_bytes != 0) {
      return absl::DataLossError(absl::StrCat("layer ", layer, ": rank ", r, " sent ",
                                              recv_counts[r], " bytes, not a whole number of ",
                                              record_bytes, "-byte records"));
    }
    recv_records += recv_counts[r] / record_bytes;
  }
  std::vector<float> recv(recv_records * record_floats);
  if (auto s = comm_->AllToAllV(send.data(), send_counts, recv.data(), recv_counts); !s.ok())
    return s;
  if (step.profile)
    for (int64_t b : send_counts) step.profile->all_to_all_bytes += b;
  exchange_timer.Stop();

  // Local experts over the received records, in ascending expert id.
  std::vector<std::vector<int32_t>> rows_of(experts);
  std::vector<std::vector<float>> weights_of(experts);
  for (int64_t i = 0; i < recv_records; ++i) {
    const float* rec = recv.data() + i * record_floats;
    const int32_t* ids = reinterpret_cast<const int32_t*>(rec + hidden);
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t e = ids[j];
      if (e < 0) continue;
      if (e >= experts || !weights_->owns_expert[e]) {
        return absl::DataLossError(absl::StrCat("layer ", layer, ": received a token for expert ",
                                                e, ", which this rank does not hold"));
      }
      rows_of[e].push_back(static_cast<int32_t>(i));
      weights_of[e].push_back(rec[hidden + top_k + j]);
    }
  }
  std::vector<float> xs_in(recv_records * hidden);
  for (int64_t i = 0; i < recv_records; ++i) {
    std::copy_n(recv.data() + i * record_floats, hidden, xs_in.data() + i * hidden);
  }
  // The experts run side by side, one thread each (few rows per expert: parallelising inside each
  // small product costs more in synchronisation than it gains); their outputs are then added in
  // ascending expert id so the sums do not depend on the thread count.
  std::vector<int64_t> active;
  for (int64_t e = 0; e < experts; ++e) {
    if (!rows_of[e].empty()) active.push_back(e);
  }
  std::vector<std::vector<float>> ys(active.size());
#pragma omp parallel for schedule(dynamic, 1) if (active.size() > 1)
  for (size_t a = 0; a < active.size(); ++a) {
    const int64_t e = active[a];
    const int64_t m = static_cast<int64_t>(rows_of[e].size());
    std::vector<float> xs(m * hidden);
    ys[a].resize(m * hidden);
    backend_->GatherRows(xs_in.data(), rows_of[e].data(), m, hidden, xs.data());
    DenseMlp(w.experts[e], xs.data(), m, ys[a].data());
  }
  std::vector<float> partial(recv_records * hidden, 0.0f);
  for (size_t a = 0; a < active.size(); ++a) {
    const int64_t e = active[a], m = static_cast<int64_t>(rows_of[e].size());
    backend_->ScatterAddRows(ys[a].data(), rows_of[e].data(), weights_of[e].data(), m, hidden,
                             partial.data());
    expert_tokens_[layer * experts + e] += m;
  }

  // Combine: partial sums back to the token owners, in the order they were sent.
  std::vector<int64_t> back_send(ranks), back_recv(ranks);
  for (int r = 0; r < ranks; ++r) {
    back_send[r] = recv_counts[r] / record_bytes * hidden * static_cast<int64_t>(sizeof(float));
    back_recv[r] =
        static_cast<int64_t>(tokens_to[r].size()) * hidden * static_cast<int64_t>(sizeof(float));
  }
  std::vector<float> combined(send_records * hidden);
  ScopedTimer combine_timer(step.timer(&ForwardProfile::communication));
  if (auto s = comm_->AllToAllV(partial.data(), back_send, combined.data(), back_recv); !s.ok())
    return s;
  if (step.profile)
    for (int64_t b : back_send) step.profile->all_to_all_bytes += b;
  combine_timer.Stop();

  // Shared expert, then the routed partial sums in rank order.
  DenseMlp(w.shared_expert, h, n, out);
  std::vector<float> shared_gate(n);
  backend_->Linear(h, n, M(w.shared_expert_gate), shared_gate.data());
  backend_->ScaleRowsBySigmoid(shared_gate.data(), n, hidden, out);
  std::vector<float> routed(n * hidden, 0.0f);
  const float* part = combined.data();
  for (int r = 0; r < ranks; ++r) {
    const int64_t m = static_cast<int64_t>(tokens_to[r].size());
    const std::vector<float> ones(m, 1.0f);
    backend_->ScatterAddRows(part, tokens_to[r].data(), ones.data(), m, hidden, routed.data());
    part += m * hidden;
  }
  backend_->Add(routed.data(), n * hidden, out);
  return absl::OkStatus();
}

}  // namespace nextserve
