// Qwen3-Next forward (spec §2–§5) over a whole step: every op runs once over all the step's tokens,
// sequences told apart only by the metadata the model runner uploaded (cu_seqlens, block tables,
// state slots), on a workspace that is laid out again each step in buffers that only ever grow.
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

int64_t RoundUp64(int64_t bytes) {
  return (bytes + 63) / 64 * 64;
}

// Carves typed regions out of one buffer; with a null base it only measures.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* Take(int64_t count) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += RoundUp64(count * static_cast<int64_t>(sizeof(T)));
    return p;
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

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

// Sizes of the model that the workspace layout needs.
struct Dims {
  int64_t hidden, heads_d, kv_width, qkvz, nv, conv_dim, value_dim, mlp_inter, experts, top_k,
      ranks, vocab, moe_inter;
  kernels::RecordFormat record;
};

}  // namespace

// The step's buffers. The token side scales with the step's tokens, the receive side with the
// dispatch records this rank receives (known only after the counts exchange of each MoE layer).
// Both live in backend buffers that are replaced only by larger ones.
struct Qwen3NextModel::Workspace {
  struct Tokens {
    float *x, *h, *mixed;
    float *qg, *k, *v, *q, *gate, *attn;                                // attention
    float *qkvz, *ba, *mixed_qkv, *conv, *z, *b, *a, *beta, *g, *core;  // DeltaNet
    float *mlp_scratch, *shared_gate;                                   // dense / shared MLP
    float *router_logits, *top_weights;                                 // MoE, token side
    int32_t *top_ids, *token_of;
    void* send;
    float *combined, *routed;
    float *selected, *logits;  // final norm, lm_head
  };
  struct Received {
    void* records;
    int32_t* pair_of;
    float *xs, *ys, *partial, *expert_scratch;
  };
  kernels::Backend* backend;
  Dims dims;
  std::unique_ptr<kernels::Buffer> token_buffer, recv_buffer;
  Tokens t{};
  Received r{};
};

struct Qwen3NextModel::StepContext {
  const kernels::StepMeta* meta = nullptr;
  int64_t rows = 0;
  ForwardProfile* profile = nullptr;
  double* timer(double ForwardProfile::*field) { return profile ? &(profile->*field) : nullptr; }
};

namespace {

template <typename W>
void CarveTokens(Carver& c, const Dims& d, int64_t n, int64_t logit_rows, W& t) {
  const int64_t sends = n * std::min(d.ranks, d.top_k);
  t.x = c.Take<float>(n * d.hidden);
  t.h = c.Take<float>(n * d.hidden);
  t.mixed = c.Take<float>(n * d.hidden);
  t.qg = c.Take<float>(n * 2 * d.heads_d);
  t.k = c.Take<float>(n * d.kv_width);
  t.v = c.Take<float>(n * d.kv_width);
  t.q = c.Take<float>(n * d.heads_d);
  t.gate = c.Take<float>(n * d.heads_d);
  t.attn = c.Take<float>(n * d.heads_d);
  t.qkvz = c.Take<float>(n * d.qkvz);
  t.ba = c.Take<float>(n * 2 * d.nv);
  t.mixed_qkv = c.Take<float>(n * d.conv_dim);
  t.conv = c.Take<float>(n * d.conv_dim);
  t.z = c.Take<float>(n * d.value_dim);
  t.b = c.Take<float>(n * d.nv);
  t.a = c.Take<float>(n * d.nv);
  t.beta = c.Take<float>(n * d.nv);
  t.g = c.Take<float>(n * d.nv);
  t.core = c.Take<float>(n * d.value_dim);
  t.mlp_scratch = c.Take<float>(2 * n * d.mlp_inter);
  t.shared_gate = c.Take<float>(n);
  t.router_logits = c.Take<float>(n * d.experts);
  t.top_weights = c.Take<float>(n * d.top_k);
  t.top_ids = c.Take<int32_t>(n * d.top_k);
  t.token_of = c.Take<int32_t>(sends);
  t.send = c.Take<char>(sends * d.record.bytes());
  t.combined = c.Take<float>(sends * d.hidden);
  t.routed = c.Take<float>(n * d.hidden);
  t.selected = c.Take<float>(logit_rows * d.hidden);
  t.logits = c.Take<float>(logit_rows * d.vocab);
}

template <typename W>
void CarveReceived(Carver& c, const Dims& d, int64_t records, W& r) {
  const int64_t pairs = records * d.top_k;
  r.records = c.Take<char>(records * d.record.bytes());
  r.pair_of = c.Take<int32_t>(pairs);
  r.xs = c.Take<float>(pairs * d.hidden);
  r.ys = c.Take<float>(pairs * d.hidden);
  r.partial = c.Take<float>(records * d.hidden);
  r.expert_scratch = c.Take<float>(2 * pairs * d.moe_inter);
}

// Lays the regions out in `buffer`, replacing it by a larger one first when they do not fit.
template <typename Carve>
void Layout(kernels::Backend* backend, std::unique_ptr<kernels::Buffer>& buffer, Carve carve) {
  Carver measure(nullptr);
  carve(measure);
  const size_t need = static_cast<size_t>(std::max<int64_t>(measure.used(), 64));
  if (buffer == nullptr || buffer->size() < need) buffer = backend->Allocate(need);
  Carver real(buffer->data());
  carve(real);
}

Dims ModelDims(const ModelConfig& c, const ModelWeights& w, int ranks, DType dispatch_dtype) {
  Dims d{};
  d.hidden = c.hidden_size;
  d.heads_d = c.num_attention_heads * c.head_dim;
  d.kv_width = c.num_key_value_heads * c.head_dim;
  d.nv = c.linear_num_value_heads;
  d.conv_dim = c.linear_conv_dim();
  d.value_dim = c.linear_value_dim();
  d.qkvz = 0;
  d.mlp_inter = 0;
  d.moe_inter = 0;
  for (const LayerWeights& lw : w.layers) {
    if (lw.type != LayerType::kFullAttention)
      d.qkvz = std::max(d.qkvz, lw.delta_net.in_proj_qkvz.rows);
    if (lw.is_moe) {
      d.mlp_inter = std::max(d.mlp_inter, lw.moe.shared_expert.gate_proj.rows);
      for (const MlpWeights& e : lw.moe.experts) {
        if (e.present()) d.moe_inter = std::max(d.moe_inter, e.gate_proj.rows);
      }
    } else {
      d.mlp_inter = std::max(d.mlp_inter, lw.mlp.gate_proj.rows);
    }
  }
  d.experts = c.num_experts;
  d.top_k = c.num_experts_per_tok;
  d.ranks = ranks;
  d.vocab = c.vocab_size;
  d.record = {c.hidden_size, c.num_experts_per_tok, dispatch_dtype};
  return d;
}

}  // namespace

Qwen3NextModel::Qwen3NextModel(std::shared_ptr<const ModelWeights> weights,
                               kernels::Backend* backend, CacheLimits cache_limits,
                               comm::Communicator* comm, std::optional<ExpertPlacement> placement,
                               ModelOptions options)
    : weights_(std::move(weights)),
      backend_(backend),
      options_(options),
      pool_(weights_->config(), cache_limits, backend),
      runner_(backend, &pool_, weights_->config().vocab_size),
      workspace_(std::make_unique<Workspace>()),
      own_comm_(comm == nullptr ? comm::MakeSingleProcessCommunicator() : nullptr),
      comm_(comm != nullptr ? comm : own_comm_.get()),
      placement_(placement
                     ? *placement
                     : ExpertPlacement::Contiguous(weights_->config().num_experts, comm_->size())),
      expert_tokens_(weights_->config().num_hidden_layers * weights_->config().num_experts, 0) {
  const ModelConfig& c = config();
  workspace_->backend = backend;
  // Every expert this rank is sent must be loaded here; with one rank, all of them.
  expert_parallel_ok_ = placement_.ranks() == comm_->size();
  for (int64_t e = 0; e < placement_.experts() && expert_parallel_ok_; ++e) {
    if (placement_.owner(e) == comm_->rank() && !weights_->owns_expert[e])
      expert_parallel_ok_ = false;
  }
  int64_t attention = 0, linear = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    kind_index_.push_back(c.is_full_attention(l) ? attention++ : linear++);
  }
  // Expert tables, bound once: the owner of each expert (backend memory), the experts held here.
  const int64_t experts = c.num_experts;
  std::vector<int32_t> owner(static_cast<size_t>(experts), 0);
  held_ = std::make_unique<bool[]>(static_cast<size_t>(std::max<int64_t>(experts, 1)));
  for (int64_t e = 0; e < experts; ++e) {
    owner[e] = e < placement_.experts() ? placement_.owner(e) : 0;
    held_[e] = e < static_cast<int64_t>(weights_->owns_expert.size()) && weights_->owns_expert[e];
  }
  owner_ = backend_->Allocate(std::max<size_t>(owner.size() * sizeof(int32_t), 4));
  backend_->CopyFromHost(owner.data(), owner_->data(), owner.size() * sizeof(int32_t));
  experts_.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_->layers[l];
    if (!lw.is_moe) continue;
    experts_[l].resize(static_cast<size_t>(experts));
    for (int64_t e = 0; e < experts; ++e) {
      if (!held_[e]) continue;
      const MlpWeights& m = lw.moe.experts[e];
      experts_[l][e] = {M(m.gate_proj), M(m.up_proj), M(m.down_proj)};
    }
  }
  expert_offsets_.resize(static_cast<size_t>(experts + 1));
  records_to_.resize(static_cast<size_t>(comm_->size()));
  workspace_->dims = ModelDims(c, *weights_, comm_->size(), options_.dispatch_dtype);
}

Qwen3NextModel::~Qwen3NextModel() = default;

std::unique_ptr<SequenceState> Qwen3NextModel::NewSequence() {
  return std::make_unique<SequenceState>(&pool_);
}

void Qwen3NextModel::ReserveWorkspace(int64_t tokens) {
  const Dims& d = workspace_->dims;
  Workspace& ws = *workspace_;
  Layout(backend_, ws.token_buffer, [&](Carver& c) { CarveTokens(c, d, tokens, tokens, ws.t); });
  // Every rank may send this rank a record per token of its own step.
  Layout(backend_, ws.recv_buffer,
         [&](Carver& c) { CarveReceived(c, d, tokens * comm_->size(), ws.r); });
}

absl::StatusOr<std::vector<float>> Qwen3NextModel::Forward(std::span<const SequenceInput> batch,
                                                           ForwardProfile* profile) {
  auto logits = Step(batch, profile);
  if (!logits.ok()) return logits.status();
  return std::vector<float>(logits->begin(), logits->end());
}

absl::StatusOr<std::span<const float>> Qwen3NextModel::Step(std::span<const SequenceInput> batch,
                                                            ForwardProfile* profile,
                                                            bool logits_on_host) {
  if (!expert_parallel_ok_) {
    return absl::FailedPreconditionError(
        "this model holds only a slice of the routed experts but has no communicator to reach the "
        "other ranks' experts");
  }
  ScopedTimer total(profile ? &profile->total : nullptr);
  StepContext step;
  step.profile = profile;
  ScopedTimer prepare(step.timer(&ForwardProfile::prepare));
  auto meta = runner_.Prepare(batch);
  if (!meta.ok()) return meta.status();
  prepare.Stop();
  step.meta = &*meta;
  step.rows = meta->num_tokens;
  if (auto s = Execute(*meta, step); !s.ok()) return s;
  ModelRunner::Advance(batch);
  const size_t count = static_cast<size_t>(meta->num_logit_rows) * config().vocab_size;
  if (!logits_on_host) return std::span<const float>(workspace_->t.logits, count);
  // Grown only: resize() would zero-fill what it adds, once; later steps only copy.
  if (host_logits_.size() < count) host_logits_.resize(count);
  // A step of only non-final prompt chunks has no logit rows (and, first, no host buffer yet).
  if (count > 0)
    backend_->CopyToHost(workspace_->t.logits, host_logits_.data(), count * sizeof(float));
  if (auto s = backend_->Synchronize(); !s.ok()) return s;
  return std::span<const float>(host_logits_.data(), count);
}

absl::Status Qwen3NextModel::Execute(const kernels::StepMeta& meta, StepContext& step) {
  const ModelConfig& c = config();
  const Dims& d = workspace_->dims;
  Workspace& ws = *workspace_;
  const int64_t n = step.rows, hidden = c.hidden_size, logit_rows = meta.num_logit_rows;
  Layout(backend_, ws.token_buffer, [&](Carver& cv) { CarveTokens(cv, d, n, logit_rows, ws.t); });
  Workspace::Tokens& t = ws.t;

  backend_->Embedding(meta.token_ids, n, M(weights_->embed_tokens), t.x);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_->layers[l];
    backend_->RmsNorm(t.x, n, hidden, lw.input_layernorm.f32(), c.rms_norm_eps, true, t.h);
    if (lw.type == LayerType::kFullAttention) {
      ScopedTimer timer(step.timer(&ForwardProfile::attention));
      AttentionLayer(l, step, t.h, t.mixed);
    } else {
      ScopedTimer timer(step.timer(&ForwardProfile::delta_net));
      DeltaNetLayer(l, step, t.h, t.mixed);
    }
    backend_->Add(t.mixed, n * hidden, t.x);
    backend_->RmsNorm(t.x, n, hidden, lw.post_attention_layernorm.f32(), c.rms_norm_eps, true, t.h);
    {
      ScopedTimer timer(step.timer(&ForwardProfile::moe));
      if (lw.is_moe) {
        if (auto s = MoeLayer(l, step, t.h, t.mixed); !s.ok()) return s;
      } else {
        DenseMlp(lw.mlp, t.h, n, t.mixed, t.mlp_scratch);
      }
    }
    backend_->Add(t.mixed, n * hidden, t.x);
  }

  // Final norm and lm_head only on the rows that produce logits.
  ScopedTimer timer(step.timer(&ForwardProfile::lm_head));
  backend_->GatherRows(t.x, meta.logit_rows, logit_rows, hidden, t.selected);
  backend_->RmsNorm(t.selected, logit_rows, hidden, weights_->final_norm.f32(), c.rms_norm_eps,
                    true, t.selected);
  backend_->Linear(t.selected, logit_rows, M(weights_->lm_head), t.logits);
  return absl::OkStatus();
}

void Qwen3NextModel::AttentionLayer(int64_t layer, StepContext& step, const float* h, float* out) {
  const ModelConfig& c = config();
  const AttentionWeights& w = weights_->layers[layer].attention;
  Workspace::Tokens& t = workspace_->t;
  const int64_t n = step.rows;
  const kernels::AttentionShape shape{c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                      c.rotary_dim(), static_cast<float>(c.rope_theta)};
  backend_->Linear(h, n, M(w.q_proj), t.qg);
  backend_->Linear(h, n, M(w.k_proj), t.k);
  backend_->Linear(h, n, M(w.v_proj), t.v);
  backend_->AttentionPrep(t.qg, t.k, *step.meta, shape, w.q_norm.f32(), w.k_norm.f32(),
                          c.rms_norm_eps, t.q, t.gate);
  const kernels::KvLayer cache = pool_.kv_layer(kind_index_[layer]);
  backend_->AppendKv(t.k, t.v, *step.meta, cache);
  backend_->PagedAttention(t.q, *step.meta, cache, shape, t.gate, t.attn);
  backend_->Linear(t.attn, n, M(w.o_proj), out);
}

void Qwen3NextModel::DeltaNetLayer(int64_t layer, StepContext& step, const float* h, float* out) {
  const ModelConfig& c = config();
  const DeltaNetWeights& w = weights_->layers[layer].delta_net;
  Workspace::Tokens& t = workspace_->t;
  const kernels::DeltaNetShape shape{c.linear_num_key_heads, c.linear_num_value_heads,
                                     c.linear_key_head_dim, c.linear_value_head_dim,
                                     c.linear_conv_kernel_dim};
  const int64_t n = step.rows, nv = shape.num_value_heads;
  backend_->Linear(h, n, M(w.in_proj_qkvz), t.qkvz);
  backend_->Linear(h, n, M(w.in_proj_ba), t.ba);
  backend_->DeltaNetSplit(t.qkvz, t.ba, n, shape, t.mixed_qkv, t.z, t.b, t.a);
  backend_->DeltaNetGates(t.b, t.a, n, nv, w.A_log.f32(), w.dt_bias.f32(), t.beta, t.g);
  const kernels::StateLayer state = pool_.state_layer(kind_index_[layer]);
  backend_->CausalConvSilu(t.mixed_qkv, *step.meta, shape, w.conv1d.f32(), state, t.conv);
  backend_->DeltaRule(t.conv, t.g, t.beta, *step.meta, shape, state, t.core);
  backend_->RmsNormGated(t.core, t.z, n * nv, shape.value_head_dim, w.norm.f32(), c.rms_norm_eps,
                         t.core);
  backend_->Linear(t.core, n, M(w.out_proj), out);
}

void Qwen3NextModel::DenseMlp(const MlpWeights& w, const float* h, int64_t n, float* out,
                              float* scratch) {
  const int64_t inter = w.gate_proj.rows;
  float* gate = scratch;
  float* up = scratch + n * inter;
  backend_->Linear(h, n, M(w.gate_proj), gate);
  backend_->Linear(h, n, M(w.up_proj), up);
  backend_->SiluMul(gate, up, n * inter, gate);
  backend_->Linear(gate, n, M(w.down_proj), out);
}

// Routing (fp32 softmax over all experts, top-k with ties to the lower id as torch.topk, then
// renormalised when norm_topk_prob), then the expert-parallel exchange (architecture.md §2):
//  dispatch: one record per (token, destination rank) = hidden row + that rank's (expert, weight)
//            slots, grouped by rank; counts exchanged, then the payload (all-to-all-v);
//  experts:  each rank groups the received (record, expert) pairs by expert, runs each expert's
//            MLP over its rows, and sums each record's experts in ascending id (the order
//            transformers' index_add_ uses);
//  combine:  the partial sums go back in the same order; the owner adds them in rank order.
// With one rank the exchange is a local copy and the sums equal the single-process order exactly.
// Only counts (records per rank, pairs per expert) reach the host.
absl::Status Qwen3NextModel::MoeLayer(int64_t layer, StepContext& step, const float* h,
                                      float* out) {
  const ModelConfig& c = config();
  const MoeWeights& w = weights_->layers[layer].moe;
  const Dims& d = workspace_->dims;
  Workspace& ws = *workspace_;
  Workspace::Tokens& t = ws.t;
  const int64_t n = step.rows, hidden = c.hidden_size, experts = c.num_experts;
  const int ranks = comm_->size();
  const kernels::RecordFormat& f = d.record;
  const int64_t rb = f.bytes();
  backend_->Linear(h, n, M(w.router), t.router_logits);
  backend_->RouterTopK(t.router_logits, n, experts, c.num_experts_per_tok, c.norm_topk_prob,
                       t.top_ids, t.top_weights);
  kernels::DispatchCounts counts{records_to_};
  backend_->MoeDispatch(h, n, t.top_ids, t.top_weights, static_cast<const int32_t*>(owner_->data()),
                        ranks, f, t.send, t.token_of, counts);

  ScopedTimer exchange_timer(step.timer(&ForwardProfile::communication));
  std::vector<int64_t>& send_counts = send_counts_;
  std::vector<int64_t>& recv_counts = recv_counts_;
  send_counts.resize(ranks);
  recv_counts.resize(ranks);
  for (int r = 0; r < ranks; ++r) send_counts[r] = records_to_[r] * rb;
  if (auto s = comm_->ExchangeCounts(send_counts, recv_counts); !s.ok()) return s;
  int64_t received = 0;
  for (int r = 0; r < ranks; ++r) {
    if (recv_counts[r] % rb != 0) {
      return absl::DataLossError(absl::StrCat("layer ", layer, ": rank ", r, " sent ",
                                              recv_counts[r], " bytes, not a whole number of ", rb,
                                              "-byte records"));
    }
    received += recv_counts[r] / rb;
  }
  Layout(backend_, ws.recv_buffer, [&](Carver& cv) { CarveReceived(cv, d, received, ws.r); });
  Workspace::Received& rv = ws.r;
  if (auto s = comm_->AllToAllV(t.send, send_counts, rv.records, recv_counts); !s.ok()) return s;
  if (step.profile)
    for (int64_t b : send_counts) step.profile->all_to_all_bytes += b;
  exchange_timer.Stop();

  // Local experts over the received records, grouped by expert.
  if (auto s = backend_->MoeGroupByExpert(rv.records, received, f, experts, held_.get(), rv.xs,
                                          rv.pair_of, expert_offsets_.data());
      !s.ok()) {
    return absl::DataLossError(absl::StrCat("layer ", layer, ": ", s.message()));
  }
  backend_->GroupedExpertMlp(rv.xs, expert_offsets_.data(), experts, experts_[layer].data(),
                             rv.expert_scratch, rv.ys);
  for (int64_t e = 0; e < experts; ++e) {
    expert_tokens_[layer * experts + e] += expert_offsets_[e + 1] - expert_offsets_[e];
  }
  backend_->MoeWeightedSum(rv.ys, rv.records, received, f, rv.pair_of, rv.partial);

  // Combine: partial sums back to the token owners, in the order they were sent.
  back_send_.resize(ranks);
  back_recv_.resize(ranks);
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(float));
  for (int r = 0; r < ranks; ++r) {
    back_send_[r] = recv_counts[r] / rb * row_bytes;
    back_recv_[r] = records_to_[r] * row_bytes;
  }
  ScopedTimer combine_timer(step.timer(&ForwardProfile::communication));
  if (auto s = comm_->AllToAllV(rv.partial, back_send_, t.combined, back_recv_); !s.ok()) return s;
  if (step.profile)
    for (int64_t b : back_send_) step.profile->all_to_all_bytes += b;
  combine_timer.Stop();

  // Shared expert, then the routed partial sums in rank order.
  DenseMlp(w.shared_expert, h, n, out, t.mlp_scratch);
  backend_->Linear(h, n, M(w.shared_expert_gate), t.shared_gate);
  backend_->ScaleRowsBySigmoid(t.shared_gate, n, hidden, out);
  backend_->MoeCombine(t.combined, t.token_of, counts.total, n, hidden, t.routed);
  backend_->Add(t.routed, n * hidden, out);
  return absl::OkStatus();
}

}  // namespace nextserve
