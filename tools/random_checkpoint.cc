#include "tools/random_checkpoint.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/safetensors.h"

namespace nextserve {
namespace {

// splitmix64 + Box-Muller: fast and identical on every platform (std::normal_distribution is not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Uniform() { return (Next() >> 11) * (1.0 / 9007199254740992.0); }
  float Normal() {
    const double u1 = Uniform() + 1e-300, u2 = Uniform();
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }

 private:
  uint64_t state_;
};

class Builder {
 public:
  Builder(DType dtype, uint64_t seed) : dtype_(dtype), rng_(seed) {}

  void Normal(const std::string& name, std::vector<int64_t> shape, float stddev, float mean = 0) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(n);
    for (auto& x : v) x = mean + stddev * rng_.Normal();
    writer_.AddFloat(name, dtype_, std::move(shape), v.data());
  }
  void Values(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    writer_.AddFloat(name, dtype_, std::move(shape), v.data());
  }
  float Uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(rng_.Uniform()); }
  const SafetensorsWriter& writer() const { return writer_; }

 private:
  DType dtype_;
  Rng rng_;
  SafetensorsWriter writer_;
};

}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  ModelConfig c;
  c.max_position_embeddings = 262144;
  c.rope_theta = 1e7;
  c.eos_token_ids = {151645};
  if (name == "tiny") {
    c.hidden_size = 256;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 64;
    c.linear_num_key_heads = 2;
    c.linear_num_value_heads = 4;
    c.linear_key_head_dim = 64;
    c.linear_value_head_dim = 64;
    c.num_experts = 16;
    c.num_experts_per_tok = 4;
    c.moe_intermediate_size = 128;
    c.shared_expert_intermediate_size = 128;
    c.intermediate_size = 512;
  } else if (name == "micro") {
    // The tiny layer pattern at the smallest useful widths: what unit tests run.
    c.vocab_size = 512;
    c.hidden_size = 64;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.linear_num_key_heads = 2;
    c.linear_num_value_heads = 4;
    c.linear_key_head_dim = 16;
    c.linear_value_head_dim = 16;
    c.num_experts = 8;
    c.num_experts_per_tok = 2;
    c.moe_intermediate_size = 32;
    c.shared_expert_intermediate_size = 32;
    c.intermediate_size = 128;
  } else if (name == "small") {
    c.hidden_size = 1024;
    c.num_hidden_layers = 8;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 2;
    c.head_dim = 256;
    c.linear_num_key_heads = 8;
    c.linear_num_value_heads = 16;
    c.linear_key_head_dim = 128;
    c.linear_value_head_dim = 128;
    c.num_experts = 128;
    c.num_experts_per_tok = 8;
    c.moe_intermediate_size = 256;
    c.shared_expert_intermediate_size = 256;
    c.intermediate_size = 2816;
    c.vocab_size = 32768;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown model preset '", name, "' (known: micro, tiny, small)"));
  }
  if (c.vocab_size <= 151645)
    c.eos_token_ids.clear();  // <|im_end|> only exists in the real vocabulary
  c.layer_types.clear();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    c.layer_types.push_back((l + 1) % c.full_attention_interval == 0 ? LayerType::kFullAttention
                                                                     : LayerType::kLinearAttention);
  }
  return c;
}

absl::Status WriteRandomCheckpoint(const ModelConfig& c, const std::string& dir,
                                   const RandomCheckpointOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  Builder b(options.dtype, options.seed);
  const int64_t H = c.hidden_size;
  // 1/sqrt(fan_in) keeps every projection's output at the scale of its input.
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    b.Normal(name, {out, in}, 1.0f / std::sqrt(static_cast<float>(in)));
  };
  auto norm = [&](const std::string& name, int64_t dim) { b.Normal(name, {dim}, 0.1f); };
  b.Normal("model.embed_tokens.weight", {c.vocab_size, H}, 1.0f);
  if (!c.tie_word_embeddings) linear("lm_head.weight", c.vocab_size, H);
  norm("model.norm.weight", H);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    norm(p + "input_layernorm.weight", H);
    norm(p + "post_attention_layernorm.weight", H);
    if (c.is_full_attention(l)) {
      const int64_t d = c.head_dim;
      linear(p + "self_attn.q_proj.weight", 2 * c.num_attention_heads * d, H);
      linear(p + "self_attn.k_proj.weight", c.num_key_value_heads * d, H);
      linear(p + "self_attn.v_proj.weight", c.num_key_value_heads * d, H);
      linear(p + "self_attn.o_proj.weight", H, c.num_attention_heads * d);
      norm(p + "self_attn.q_norm.weight", d);
      norm(p + "self_attn.k_norm.weight", d);
    } else {
      const int64_t nv = c.linear_num_value_heads;
      linear(p + "linear_attn.in_proj_qkvz.weight",
             2 * c.linear_key_dim() + 2 * c.linear_value_dim(), H);
      linear(p + "linear_attn.in_proj_ba.weight", 2 * nv, H);
      b.Normal(p + "linear_attn.conv1d.weight", {c.linear_conv_dim(), 1, c.linear_conv_kernel_dim},
               0.5f);
      b.Normal(p + "linear_attn.dt_bias", {nv}, 0.5f);
      std::vector<float> a_log(nv);
      for (auto& v : a_log) v = std::log(b.Uniform(1.0f, 16.0f));
      b.Values(p + "linear_attn.A_log", {nv}, a_log);
      b.Normal(p + "linear_attn.norm.weight", {c.linear_value_head_dim}, 0.1f, 1.0f);
      linear(p + "linear_attn.out_proj.weight", H, c.linear_value_dim());
    }
    if (c.is_moe_layer(l)) {
      linear(p + "mlp.gate.weight", c.num_experts, H);
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const std::string q = absl::StrCat(p, "mlp.experts.", e, ".");
        linear(q + "gate_proj.weight", c.moe_intermediate_size, H);
        linear(q + "up_proj.weight", c.moe_intermediate_size, H);
        linear(q + "down_proj.weight", H, c.moe_intermediate_size);
      }
      linear(p + "mlp.shared_expert.gate_proj.weight", c.shared_expert_intermediate_size, H);
      linear(p + "mlp.shared_expert.up_proj.weight", c.shared_expert_intermediate_size, H);
      linear(p + "mlp.shared_expert.down_proj.weight", H, c.shared_expert_intermediate_size);
      linear(p + "mlp.shared_expert_gate.weight", 1, H);
    } else {
      linear(p + "mlp.gate_proj.weight", c.intermediate_size, H);
      linear(p + "mlp.up_proj.weight", c.intermediate_size, H);
      linear(p + "mlp.down_proj.weight", H, c.intermediate_size);
    }
  }
  if (absl::Status s = b.writer().WriteFile(dir + "/model.safetensors"); !s.ok()) return s;
  ModelConfig written = c;
  written.torch_dtype = std::string(options.dtype == DType::kBF16  ? "bfloat16"
                                    : options.dtype == DType::kF16 ? "float16"
                                                                   : "float32");
  std::ofstream out(dir + "/config.json");
  out << ModelConfigToJson(written);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir, "/config.json"));
  return absl::OkStatus();
}

}  // namespace nextserve
