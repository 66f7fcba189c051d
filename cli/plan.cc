#include "cli/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"

namespace nextserve::cli {
namespace {

constexpr int64_t kBlock = 128;
constexpr int64_t kF32 = 4;

int64_t CeilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

absl::StatusOr<int64_t> DTypeBytes(const std::string& name) {
  if (name == "bfloat16" || name == "float16") return 2;
  if (name == "float32") return 4;
  return absl::InvalidArgumentError(
      absl::StrCat("config dtype '", name, "' is not one of bfloat16, float16, float32"));
}

// Adds one matrix the way ModelWeights::Bind holds it: FP8 (+ fp32 block scales) where the
// quantization_config quantises the module, else the checkpoint's float dtype.
class Tally {
 public:
  Tally(const ModelConfig& c, int64_t float_bytes) : c_(c), float_bytes_(float_bytes) {}

  void Matrix(const std::string& module, int64_t rows, int64_t cols, bool linear = true) {
    if (c_.quantization.fp8 && linear && !c_.quantization.IsNotConverted(module)) {
      bytes.f8 += rows * cols;
      bytes.f8_scales += CeilDiv(rows, kBlock) * CeilDiv(cols, kBlock) * kF32;
    } else {
      bytes.unquantized += rows * cols * float_bytes_;
    }
  }
  void Small(int64_t n) { bytes.f32_small += n * kF32; }
  void Mlp(const std::string& p, int64_t inter) {
    Matrix(p + "gate_proj", inter, c_.hidden_size);
    Matrix(p + "up_proj", inter, c_.hidden_size);
    Matrix(p + "down_proj", c_.hidden_size, inter);
  }

  WeightBytes bytes;

 private:
  const ModelConfig& c_;
  int64_t float_bytes_;
};

// Weights of a rank that owns `experts` routed experts of every MoE layer (experts [0, experts):
// the layers' modules_to_not_convert may name experts individually).
WeightBytes RankWeights(const ModelConfig& c, int64_t float_bytes, int64_t experts) {
  Tally t(c, float_bytes);
  const int64_t H = c.hidden_size;
  t.Matrix("model.embed_tokens", c.vocab_size, H, /*linear=*/false);
  if (!c.tie_word_embeddings) t.Matrix("lm_head", c.vocab_size, H);
  t.Small(H);  // model.norm
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    t.Small(2 * H);
    if (c.is_full_attention(i)) {
      const int64_t q = c.num_attention_heads * c.head_dim;
      const int64_t kv = c.num_key_value_heads * c.head_dim;
      t.Matrix(p + "self_attn.q_proj", 2 * q, H);
      t.Matrix(p + "self_attn.k_proj", kv, H);
      t.Matrix(p + "self_attn.v_proj", kv, H);
      t.Matrix(p + "self_attn.o_proj", H, q);
      t.Small(2 * c.head_dim);
    } else {
      const int64_t nv = c.linear_num_value_heads;
      t.Matrix(p + "linear_attn.in_proj_qkvz", 2 * c.linear_key_dim() + 2 * c.linear_value_dim(),
               H);
      t.Matrix(p + "linear_attn.in_proj_ba", 2 * nv, H);
      t.Matrix(p + "linear_attn.out_proj", H, c.linear_value_dim());
      t.Small(c.linear_conv_dim() * c.linear_conv_kernel_dim + 2 * nv + c.linear_value_head_dim);
    }
    if (!c.is_moe_layer(i)) {
      t.Mlp(p + "mlp.", c.intermediate_size);
      continue;
    }
    t.Matrix(p + "mlp.gate", c.num_experts, H);
    for (int64_t e = 0; e < experts; ++e) {
      t.Mlp(absl::StrCat(p, "mlp.experts.", e, "."), c.moe_intermediate_size);
    }
    t.Mlp(p + "mlp.shared_expert.", c.shared_expert_intermediate_size);
    t.Matrix(p + "mlp.shared_expert_gate", 1, H);
  }
  return t.bytes;
}

std::string Human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::abs(bytes) >= 1024 && u < 4) bytes /= 1024, ++u;
  return u == 0 ? absl::StrFormat("%.0f B", bytes) : absl::StrFormat("%.2f %s", bytes, units[u]);
}

}  // namespace

absl::StatusOr<int64_t> ParseByteSize(const std::string& text) {
  std::string s = absl::AsciiStrToLower(text);
  struct Unit {
    const char* suffix;
    double factor;
  };
  const Unit units[] = {{"tib", 1099511627776.0},
                        {"gib", 1073741824.0},
                        {"mib", 1048576.0},
                        {"kib", 1024.0},
                        {"tb", 1e12},
                        {"gb", 1e9},
                        {"mb", 1e6},
                        {"kb", 1e3},
                        {"b", 1.0}};
  double factor = 1.0;
  for (const Unit& u : units) {
    const std::string suf = u.suffix;
    if (s.size() > suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0) {
      s.resize(s.size() - suf.size());
      factor = u.factor;
      break;
    }
  }
  double value;
  if (!absl::SimpleAtod(s, &value) || !(value > 0) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a positive size (e.g. 141GiB, 80GB, 1073741824)"));
  }
  return static_cast<int64_t>(value * factor);
}

absl::StatusOr<MemoryPlan> ComputePlan(const ModelConfig& c, const PlanOptions& o) {
  absl::StatusOr<int64_t> float_bytes = DTypeBytes(c.torch_dtype);
  if (!float_bytes.ok()) return float_bytes.status();
  if (o.gpu_memory_bytes <= 0) return absl::InvalidArgumentError("gpu memory must be positive");
  if (!(o.memory_utilization > 0 && o.memory_utilization <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory utilization ", o.memory_utilization, " is not in (0, 1]"));
  }
  if (o.context <= 0) return absl::InvalidArgumentError("context must be positive");
  MemoryPlan plan;
  plan.unquantized_dtype = c.torch_dtype;
  plan.fp8 = c.quantization.fp8;
  plan.context = o.context;
  int64_t full = 0, linear = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) (c.is_full_attention(i) ? full : linear)++;
  // The caches nextserve keeps (model/cache_pool.h): fp32 keys and values, fp32 DeltaNet states.
  plan.kv_bytes_per_token = full * 2 * c.num_key_value_heads * c.head_dim * kF32;
  plan.state_bytes_per_sequence =
      linear *
      (c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim +
       (c.linear_conv_kernel_dim - 1) * c.linear_conv_dim()) *
      kF32;
  const int64_t budget =
      static_cast<int64_t>(static_cast<double>(o.gpu_memory_bytes) * o.memory_utilization);
  for (int64_t ranks : o.ranks) {
    if (ranks < 1 || (c.num_experts > 0 && ranks > c.num_experts)) {
      return absl::InvalidArgumentError(absl::StrCat("rank count ", ranks, " is not in [1, ",
                                                     std::max<int64_t>(c.num_experts, 1), "]"));
    }
    RankPlan r;
    r.ranks = ranks;
    r.experts_on_rank = CeilDiv(c.num_experts, ranks);
    r.weights = RankWeights(c, *float_bytes, r.experts_on_rank);
    r.free_bytes = budget - r.weights.total();
    const int64_t per_seq = plan.state_bytes_per_sequence + o.context * plan.kv_bytes_per_token;
    if (r.free_bytes > 0) {
      r.sequences_at_context = per_seq > 0 ? r.free_bytes / per_seq : 0;
      const int64_t after_state = r.free_bytes - plan.state_bytes_per_sequence;
      r.max_context_one_sequence = after_state > 0 && plan.kv_bytes_per_token > 0
                                       ? after_state / plan.kv_bytes_per_token
                                       : 0;
    }
    plan.ranks.push_back(r);
  }
  return plan;
}

std::string FormatPlan(const ModelConfig& c, const MemoryPlan& p, const PlanOptions& o) {
  std::string out = absl::StrFormat(
      "model: %d layers, hidden %d, %d experts (top-%d); weights %s%s\n"
      "per GPU: %s x %.2f = %s for weights + caches\n"
      "KV cache per token: %d B (%s; fp32 K+V, full-attention layers)\n"
      "DeltaNet state per sequence: %d B (%s; fp32, linear-attention layers)\n"
      "context per sequence: %d tokens (max_position_embeddings %d)\n\n",
      c.num_hidden_layers, c.hidden_size, c.num_experts, c.num_experts_per_tok,
      p.fp8 ? "FP8 (F8_E4M3, 128x128 block scales) + " : "", p.unquantized_dtype,
      Human(static_cast<double>(o.gpu_memory_bytes)), o.memory_utilization,
      Human(static_cast<double>(o.gpu_memory_bytes) * o.memory_utilization), p.kv_bytes_per_token,
      Human(static_cast<double>(p.kv_bytes_per_token)), p.state_bytes_per_sequence,
      Human(static_cast<double>(p.state_bytes_per_sequence)), p.context, c.max_position_embeddings);
  absl::StrAppendFormat(&out, "%5s %7s %11s %11s %11s %11s %11s %11s %10s %10s %14s\n", "ranks",
                        "experts", "F8_E4M3", "f8 scales", p.unquantized_dtype.substr(0, 11),
                        "f32 small", "weights", "free", "seqs/rank", "seqs/group",
                        "max ctx (1 seq)");
  for (const RankPlan& r : p.ranks) {
    const bool fits = r.free_bytes > 0;
    absl::StrAppendFormat(
        &out, "%5d %7d %11s %11s %11s %11s %11s %11s %10s %10s %14s\n", r.ranks, r.experts_on_rank,
        Human(static_cast<double>(r.weights.f8)), Human(static_cast<double>(r.weights.f8_scales)),
        Human(static_cast<double>(r.weights.unquantized)),
        Human(static_cast<double>(r.weights.f32_small)),
        Human(static_cast<double>(r.weights.total())), Human(static_cast<double>(r.free_bytes)),
        fits ? absl::StrCat(r.sequences_at_context) : "no fit",
        fits ? absl::StrCat(r.sequences_at_context * r.ranks) : "-",
        fits ? absl::StrCat(r.max_context_one_sequence,
                            r.max_context_one_sequence > c.max_position_embeddings ? "*" : "")
             : "-");
  }
  out +=
      "\nexperts: the most routed experts one rank holds per layer (contiguous placement); "
      "everything else is replicated on every rank. seqs/rank: sequences of the given context "
      "whose caches fit beside the weights; activations and workspace come out of the "
      "(1 - utilization) share. *: beyond max_position_embeddings.\n";
  return out;
}

int PlanCommand(int argc, char** argv) {
  std::string model, gpus = "1", gpu_memory = "141GiB", utilization = "0.9";
  int64_t context = 32768;
  Flags flags(
      "nextserve plan --model DIR --gpus N[,N...] --gpu-memory 141GiB [--context N] "
      "[--memory-utilization 0.9]");
  flags.String("model", &model,
               "model directory (or a config.json file): only config.json is read");
  flags.String("gpus", &gpus, "ranks (one GPU each) to plan for, e.g. 8 or 1,2,4,8,16");
  flags.String("gpu-memory", &gpu_memory, "memory of one GPU: 80GiB (H100), 141GiB (H200)");
  flags.Int("context", &context, "tokens per sequence for the concurrency column");
  flags.String("memory-utilization", &utilization,
               "share of GPU memory for weights and caches (the rest: activations, workspace)");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return Flags::Report(s, flags);
  if (model.empty()) return Flags::Report(absl::InvalidArgumentError("--model is required"), flags);
  PlanOptions o;
  o.context = context;
  o.ranks.clear();
  for (absl::string_view part : absl::StrSplit(gpus, ',', absl::SkipEmpty())) {
    int64_t n;
    if (!absl::SimpleAtoi(part, &n) || n < 1) {
      return Flags::Report(absl::InvalidArgumentError(absl::StrCat("--gpus: '", std::string(part),
                                                                   "' is not a positive count")),
                           flags);
    }
    o.ranks.push_back(n);
  }
  if (o.ranks.empty()) return Flags::Report(absl::InvalidArgumentError("--gpus is empty"), flags);
  absl::StatusOr<int64_t> mem = ParseByteSize(gpu_memory);
  if (!mem.ok()) {
    return Flags::Report(
        absl::InvalidArgumentError(absl::StrCat("--gpu-memory: ", mem.status().message())), flags);
  }
  o.gpu_memory_bytes = *mem;
  if (!absl::SimpleAtod(utilization, &o.memory_utilization)) {
    return Flags::Report(absl::InvalidArgumentError("--memory-utilization: not a number"), flags);
  }
  const bool is_file = model.size() >= 5 && model.compare(model.size() - 5, 5, ".json") == 0;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(is_file ? model : model + "/config.json");
  if (!config.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<MemoryPlan> plan = ComputePlan(*config, o);
  if (!plan.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(plan.status().message()).c_str());
    return 1;
  }
  std::fputs(FormatPlan(*config, *plan, o).c_str(), stdout);
  return 0;
}

}  // namespace nextserve::cli
