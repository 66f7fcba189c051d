#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace nextserve {
namespace {

#define NS_RETURN_IF_ERROR(expr)                          \
  do {                                                    \
    if (absl::Status _st = (expr); !_st.ok()) return _st; \
  } while (0)

// absl here is built with its own string_view, which std::string_view does not convert to.
absl::string_view AV(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

constexpr int64_t kBlock = 128;  // FP8 block edge (QuantizationConfig enforces [128, 128])
constexpr std::string_view kScaleSuffix = "_scale_inv";  // "<module>.weight" + this

int64_t CeilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

// Walks the tensors the config implies, checks each against the checkpoint header and fills the
// WeightRefs. Only small tensors' bytes are read (to convert them to fp32).
class WeightBinder {
 public:
  WeightBinder(const Checkpoint& ckpt, const ModelConfig& config, ModelWeights* w)
      : ckpt_(ckpt), c_(config), w_(w) {}

  absl::Status Run() {
    // FP8 tensors without an FP8 quantization_config: say so before any name or shape mismatch,
    // since config.json (not the tensor) is what is missing.
    if (!c_.quantization.fp8) {
      for (const auto& file : ckpt_.files()) {
        for (const TensorInfo& t : file->tensors()) {
          if (absl::StartsWith(t.name, "mtp.")) continue;
          if (absl::EndsWith(t.name, ".weight_scale_inv") || t.dtype == DType::kF8E4M3) {
            return absl::InvalidArgumentError(
                absl::StrCat("tensor '", t.name, "' in ", *t.file,
                             " belongs to a block-scaled FP8 checkpoint, but config.json has no "
                             "quantization_config with quant_method \"fp8\""));
          }
        }
      }
    }
    const int64_t H = c_.hidden_size;
    const int64_t V = c_.vocab_size;
    // transformers quantises nn.Linear modules only: the embedding stays in the float dtype.
    NS_RETURN_IF_ERROR(
        Large("model.embed_tokens.weight", V, H, &w_->embed_tokens, true, /*linear=*/false));
    NS_RETURN_IF_ERROR(Small("model.norm.weight", {H}, 1, H, &w_->final_norm));
    if (c_.tie_word_embeddings) {
      w_->lm_head = w_->embed_tokens;
    } else if (auto s = Large("lm_head.weight", V, H, &w_->lm_head); !s.ok()) {
      return s;
    }
    w_->layers.resize(c_.num_hidden_layers);
    for (int64_t i = 0; i < c_.num_hidden_layers; ++i) {
      NS_RETURN_IF_ERROR(Layer(i, &w_->layers[i]));
    }
    for (const auto& file : ckpt_.files()) {
      for (const TensorInfo& t : file->tensors()) {
        if (absl::StartsWith(t.name, "mtp.")) {
          ++w_->skipped_mtp_tensors;  // speculative-decoding head, not part of the forward pass
        } else if (!seen_.count(&t)) {
          std::string why;
          if (t.name == "lm_head.weight" && c_.tie_word_embeddings) {
            why = " (tie_word_embeddings is true, so lm_head reuses model.embed_tokens.weight)";
          } else if (absl::EndsWith(t.name, AV(kScaleSuffix))) {
            why = " (a scale for a matrix that is not FP8: it is unquantised here or not a weight)";
          }
          return absl::InvalidArgumentError(
              absl::StrCat("unexpected tensor '", t.name, "' in ", *t.file, why));
        }
      }
    }
    w_->unquantized_dtype = large_dtype_.value_or(DType::kF32);
    w_->stored_dtype = w_->fp8_matrices > 0 ? DType::kF8E4M3 : w_->unquantized_dtype;
    return absl::OkStatus();
  }

 private:
  // Finds `name` and checks its shape; marks it as expected.
  absl::StatusOr<const TensorInfo*> Expect(const std::string& name,
                                           const std::vector<int64_t>& shape) {
    const TensorInfo* t = ckpt_.Find(name);
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat("missing tensor '", name, "' (expected shape ",
                                              ShapeString(shape), ") in checkpoint ", ckpt_.dir()));
    }
    seen_.insert(t);
    if (t->shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' in ", *t->file, " has shape ", ShapeString(t->shape),
                       ", expected ", ShapeString(shape), " from the model config"));
    }
    return t;
  }

  // A large matrix: kept in its stored dtype inside the mapping. With bind = false only the header
  // is checked (experts this process does not own): the data pages are never touched. `linear`:
  // an nn.Linear weight, which an FP8 quantization_config quantises unless it lists the module.
  absl::Status Large(const std::string& name, int64_t rows, int64_t cols, WeightRef* out,
                     bool bind = true, bool linear = true) {
    absl::StatusOr<const TensorInfo*> t = Expect(name, {rows, cols});
    if (!t.ok()) return t.status();
    const TensorInfo& info = **t;
    const std::string module = name.substr(0, name.size() - std::string_view(".weight").size());
    const bool quantized = c_.quantization.fp8 && linear && !c_.quantization.IsNotConverted(module);
    if (quantized) return Fp8(info, rows, cols, out, bind);
    if (info.dtype == DType::kF8E4M3) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' in ", *info.file, " is F8_E4M3, but ",
          linear ? "quantization_config.modules_to_not_convert lists it (it must stay unquantised)"
                 : "only nn.Linear weights may be FP8 (embeddings stay in the float dtype)"));
    }
    if (!large_dtype_) {
      large_dtype_ = info.dtype;
      large_dtype_from_ = name;
    } else if (*large_dtype_ != info.dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' in ", *info.file, " is ", AV(DTypeName(info.dtype)),
                       " but the other large matrices are ", AV(DTypeName(*large_dtype_)),
                       " (e.g. '", large_dtype_from_,
                       "'); all projection / expert / embedding matrices must share one dtype"));
    }
    if (bind) {
      out->dtype = info.dtype;
      out->data = info.data;
      out->rows = rows;
      out->cols = cols;
    }
    return absl::OkStatus();
  }

  // An FP8 matrix: F8_E4M3 data left in the mapping, its weight_scale_inv ([ceil(rows / 128),
  // ceil(cols / 128)], fp32 or bf16) copied to fp32.
  absl::Status Fp8(const TensorInfo& info, int64_t rows, int64_t cols, WeightRef* out, bool bind) {
    const std::string scale_name = info.name + std::string(kScaleSuffix);
    if (info.dtype != DType::kF8E4M3) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", info.name, "' in ", *info.file, " is ",
                       AV(DTypeName(info.dtype)), ", expected F8_E4M3 with '", scale_name,
                       "': quantization_config (quant_method fp8) quantises it, and "
                       "modules_to_not_convert does not list it"));
    }
    const std::vector<int64_t> scale_shape = {CeilDiv(rows, kBlock), CeilDiv(cols, kBlock)};
    const TensorInfo* s = ckpt_.Find(scale_name);
    if (s == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          "missing tensor '", scale_name, "' (expected shape ", ShapeString(scale_shape),
          ": one scale per 128x128 block) for F8_E4M3 tensor '", info.name, "' in ", *info.file));
    }
    seen_.insert(s);
    if (s->shape != scale_shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", scale_name, "' in ", *s->file, " has shape ", ShapeString(s->shape),
          ", expected ", ShapeString(scale_shape), ": one scale per 128x128 block of '", info.name,
          "' ", ShapeString({rows, cols})));
    }
    if (s->dtype != DType::kF32 && s->dtype != DType::kBF16) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", scale_name, "' in ", *s->file,
                                                     " is ", AV(DTypeName(s->dtype)),
                                                     ", expected F32 or BF16 block scales"));
    }
    ++w_->fp8_matrices;
    if (!bind) return absl::OkStatus();
    const size_t n = static_cast<size_t>(scale_shape[0] * scale_shape[1]);
    auto buf = std::make_unique<float[]>(n);
    {
      ScopedNoReadahead no_ra(s->data, s->nbytes);
      ConvertToF32(s->dtype, s->data, buf.get(), n);
    }
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(buf[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", scale_name, "' in ", *s->file, " has a non-finite scale ",
                         buf[i], " at block ", i / scale_shape[1], ", ", i % scale_shape[1]));
      }
    }
    out->dtype = DType::kF8E4M3;
    out->data = info.data;
    out->rows = rows;
    out->cols = cols;
    out->block_scale = buf.get();
    w_->owned_.push_back(std::move(buf));
    return absl::OkStatus();
  }

  // A small tensor: converted to fp32 into ModelWeights-owned storage.
  absl::Status Small(const std::string& name, const std::vector<int64_t>& shape, int64_t rows,
                     int64_t cols, WeightRef* out) {
    absl::StatusOr<const TensorInfo*> t = Expect(name, shape);
    if (!t.ok()) return t.status();
    const TensorInfo& info = **t;
    if (info.dtype == DType::kF8E4M3) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' in ", *info.file,
          " is F8_E4M3: only nn.Linear weights may be FP8 (norms, conv1d, A_log, dt_bias stay "
          "in a float dtype)"));
    }
    const size_t n = static_cast<size_t>(rows * cols);
    auto buf = std::make_unique<float[]>(n);
    {
      // Read only this tensor's pages: kernel read-around could otherwise page in neighbouring
      // experts that this process does not own.
      ScopedNoReadahead no_ra(info.data, info.nbytes);
      ConvertToF32(info.dtype, info.data, buf.get(), n);
    }
    out->dtype = DType::kF32;
    out->data = buf.get();
    out->rows = rows;
    out->cols = cols;
    w_->owned_.push_back(std::move(buf));
    return absl::OkStatus();
  }

  absl::Status Mlp(const std::string& prefix, int64_t inter, MlpWeights* out, bool bind = true) {
    const int64_t H = c_.hidden_size;
    NS_RETURN_IF_ERROR(Large(prefix + "gate_proj.weight", inter, H, &out->gate_proj, bind));
    NS_RETURN_IF_ERROR(Large(prefix + "up_proj.weight", inter, H, &out->up_proj, bind));
    return Large(prefix + "down_proj.weight", H, inter, &out->down_proj, bind);
  }

  absl::Status Layer(int64_t i, LayerWeights* L) {
    const int64_t H = c_.hidden_size;
    const std::string p = absl::StrCat("model.layers.", i, ".");
    L->type = c_.layer_types[i];
    NS_RETURN_IF_ERROR(Small(p + "input_layernorm.weight", {H}, 1, H, &L->input_layernorm));
    NS_RETURN_IF_ERROR(
        Small(p + "post_attention_layernorm.weight", {H}, 1, H, &L->post_attention_layernorm));

    if (c_.is_full_attention(i)) {
      const std::string a = p + "self_attn.";
      const int64_t hd = c_.head_dim;
      const int64_t q = c_.num_attention_heads * hd;
      const int64_t kv = c_.num_key_value_heads * hd;
      AttentionWeights& w = L->attention;
      NS_RETURN_IF_ERROR(Large(a + "q_proj.weight", 2 * q, H, &w.q_proj));
      NS_RETURN_IF_ERROR(Large(a + "k_proj.weight", kv, H, &w.k_proj));
      NS_RETURN_IF_ERROR(Large(a + "v_proj.weight", kv, H, &w.v_proj));
      NS_RETURN_IF_ERROR(Large(a + "o_proj.weight", H, q, &w.o_proj));
      NS_RETURN_IF_ERROR(Small(a + "q_norm.weight", {hd}, 1, hd, &w.q_norm));
      NS_RETURN_IF_ERROR(Small(a + "k_norm.weight", {hd}, 1, hd, &w.k_norm));
    } else {
      const std::string a = p + "linear_attn.";
      const int64_t kd = c_.linear_key_dim();
      const int64_t vd = c_.linear_value_dim();
      const int64_t nv = c_.linear_num_value_heads;
      const int64_t conv = c_.linear_conv_dim();
      const int64_t kernel = c_.linear_conv_kernel_dim;
      const int64_t dv = c_.linear_value_head_dim;
      DeltaNetWeights& w = L->delta_net;
      NS_RETURN_IF_ERROR(Large(a + "in_proj_qkvz.weight", 2 * kd + 2 * vd, H, &w.in_proj_qkvz));
      NS_RETURN_IF_ERROR(Large(a + "in_proj_ba.weight", 2 * nv, H, &w.in_proj_ba));
      NS_RETURN_IF_ERROR(Small(a + "conv1d.weight", {conv, 1, kernel}, conv, kernel, &w.conv1d));
      NS_RETURN_IF_ERROR(Small(a + "dt_bias", {nv}, 1, nv, &w.dt_bias));
      NS_RETURN_IF_ERROR(Small(a + "A_log", {nv}, 1, nv, &w.A_log));
      NS_RETURN_IF_ERROR(Small(a + "norm.weight", {dv}, 1, dv, &w.norm));
      NS_RETURN_IF_ERROR(Large(a + "out_proj.weight", H, vd, &w.out_proj));
    }

    L->is_moe = c_.is_moe_layer(i);
    const std::string m = p + "mlp.";
    if (!L->is_moe) return Mlp(m, c_.intermediate_size, &L->mlp);
    MoeWeights& moe = L->moe;
    NS_RETURN_IF_ERROR(Large(m + "gate.weight", c_.num_experts, H, &moe.router));
    moe.experts.resize(c_.num_experts);
    for (int64_t e = 0; e < c_.num_experts; ++e) {
      const std::string ep = absl::StrCat(m, "experts.", e, ".");
      NS_RETURN_IF_ERROR(Mlp(ep, c_.moe_intermediate_size, &moe.experts[e], w_->owns_expert[e]));
    }
    NS_RETURN_IF_ERROR(
        Mlp(m + "shared_expert.", c_.shared_expert_intermediate_size, &moe.shared_expert));
    return Large(m + "shared_expert_gate.weight", 1, H, &moe.shared_expert_gate);
  }

  const Checkpoint& ckpt_;
  const ModelConfig& c_;
  ModelWeights* w_;
  std::unordered_set<const TensorInfo*> seen_;
  std::optional<DType> large_dtype_;
  std::string large_dtype_from_;
};

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Bind(
    std::shared_ptr<const Checkpoint> ckpt, const ModelConfig& config, const LoadOptions& options) {
  if (ckpt == nullptr) return absl::InvalidArgumentError("ModelWeights::Bind: null checkpoint");
  if (static_cast<int64_t>(config.layer_types.size()) != config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ModelWeights::Bind: config has ", config.layer_types.size(), " layer_types for ",
        config.num_hidden_layers, " layers (use ParseModelConfig to fill them)"));
  }
  auto w = std::make_unique<ModelWeights>();
  w->config_ = config;
  w->checkpoint_ = ckpt;
  const int64_t num_experts = std::max<int64_t>(config.num_experts, 0);
  if (options.experts) {
    w->owns_expert.assign(num_experts, false);
    for (int64_t e : *options.experts) {
      if (e < 0 || e >= num_experts) {
        return absl::InvalidArgumentError(absl::StrCat("LoadOptions.experts: expert id ", e,
                                                       " is outside [0, ", num_experts, ")"));
      }
      if (w->owns_expert[e]) {
        return absl::InvalidArgumentError(
            absl::StrCat("LoadOptions.experts: expert id ", e, " is listed twice"));
      }
      w->owns_expert[e] = true;
    }
  } else {
    w->owns_expert.assign(num_experts, true);
  }
  WeightBinder binder(*ckpt, w->config_, w.get());
  if (absl::Status s = binder.Run(); !s.ok()) return s;
  return w;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(const std::string& dir,
                                                                 const LoadOptions& options) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir + "/config.json");
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  return Bind(std::shared_ptr<const Checkpoint>(*std::move(ckpt)), *config, options);
}

}  // namespace nextserve
