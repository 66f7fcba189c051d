#include "tests/unit/model/tiny_checkpoint.h"

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/safetensors.h"

namespace nextserve::testing {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.intermediate_size = 80;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 512;
  c.rope_theta = 10000000.0;
  c.partial_rotary_factor = 0.25;
  c.linear_conv_kernel_dim = 4;
  c.linear_key_head_dim = 8;
  c.linear_value_head_dim = 12;
  c.linear_num_key_heads = 2;
  c.linear_num_value_heads = 4;
  c.decoder_sparse_step = 1;
  c.moe_intermediate_size = 24;
  c.shared_expert_intermediate_size = 40;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.full_attention_interval = 4;
  c.layer_types.clear();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    c.layer_types.push_back((i + 1) % 4 == 0 ? LayerType::kFullAttention
                                             : LayerType::kLinearAttention);
  }
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

namespace {

class Gen {
 public:
  explicit Gen(uint64_t seed) : rng_(seed) {}
  std::vector<float> Normal(int64_t n, float mean, float stddev) {
    std::normal_distribution<float> d(mean, stddev);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng_);
    return v;
  }
  std::vector<float> Uniform(int64_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng_);
    return v;
  }

 private:
  std::mt19937_64 rng_;
};

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

std::vector<TinyTensor> MakeTinyTensors(const ModelConfig& c, DType dtype, DType small_dtype,
                                        uint64_t seed) {
  Gen gen(seed);
  std::vector<TinyTensor> out;
  auto large = [&](std::string name, int64_t rows, int64_t cols) {
    out.push_back({std::move(name), dtype, {rows, cols}, gen.Normal(rows * cols, 0.f, 0.02f), {}});
  };
  auto small = [&](std::string name, std::vector<int64_t> shape, std::vector<float> values) {
    out.push_back({std::move(name), small_dtype, std::move(shape), std::move(values), {}});
  };
  const int64_t H = c.hidden_size;
  auto norm1p = [&](std::string name, int64_t n) {
    small(std::move(name), {n}, gen.Normal(n, 0.f, 0.1f));
  };
  auto mlp = [&](const std::string& p, int64_t inter) {
    large(p + "gate_proj.weight", inter, H);
    large(p + "up_proj.weight", inter, H);
    large(p + "down_proj.weight", H, inter);
  };
  large("model.embed_tokens.weight", c.vocab_size, H);
  norm1p("model.norm.weight", H);
  if (!c.tie_word_embeddings) large("lm_head.weight", c.vocab_size, H);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    norm1p(p + "input_layernorm.weight", H);
    norm1p(p + "post_attention_layernorm.weight", H);
    const bool full = i < static_cast<int64_t>(c.layer_types.size())
                          ? c.layer_types[i] == LayerType::kFullAttention
                          : (i + 1) % c.full_attention_interval == 0;
    if (full) {
      const int64_t q = c.num_attention_heads * c.head_dim;
      const int64_t kv = c.num_key_value_heads * c.head_dim;
      large(p + "self_attn.q_proj.weight", 2 * q, H);
      large(p + "self_attn.k_proj.weight", kv, H);
      large(p + "self_attn.v_proj.weight", kv, H);
      large(p + "self_attn.o_proj.weight", H, q);
      norm1p(p + "self_attn.q_norm.weight", c.head_dim);
      norm1p(p + "self_attn.k_norm.weight", c.head_dim);
    } else {
      const int64_t nv = c.linear_num_value_heads;
      const int64_t conv = c.linear_conv_dim();
      large(p + "linear_attn.in_proj_qkvz.weight",
            2 * c.linear_key_dim() + 2 * c.linear_value_dim(), H);
      large(p + "linear_attn.in_proj_ba.weight", 2 * nv, H);
      small(p + "linear_attn.conv1d.weight", {conv, 1, c.linear_conv_kernel_dim},
            gen.Normal(conv * c.linear_conv_kernel_dim, 0.f, 0.3f));
      small(p + "linear_attn.dt_bias", {nv}, gen.Normal(nv, 0.f, 0.5f));
      small(p + "linear_attn.A_log", {nv}, gen.Uniform(nv, 0.f, 2.7f));
      small(p + "linear_attn.norm.weight", {c.linear_value_head_dim},
            gen.Normal(c.linear_value_head_dim, 1.f, 0.1f));
      large(p + "linear_attn.out_proj.weight", H, c.linear_value_dim());
    }
    const std::string m = p + "mlp.";
    if (c.is_moe_layer(i)) {
      large(m + "gate.weight", c.num_experts, H);
      for (int64_t e = 0; e < c.num_experts; ++e) {
        mlp(absl::StrCat(m, "experts.", e, "."), c.moe_intermediate_size);
      }
      mlp(m + "shared_expert.", c.shared_expert_intermediate_size);
      large(m + "shared_expert_gate.weight", 1, H);
    } else {
      mlp(m, c.intermediate_size);
    }
  }
  return out;
}

void QuantizeToFp8(const ModelConfig& config, std::vector<TinyTensor>& tensors) {
  constexpr int64_t kBlock = 128;
  std::vector<TinyTensor> scales;
  for (TinyTensor& t : tensors) {
    const std::string suffix = ".weight";
    if (t.shape.size() != 2 || t.name == "model.embed_tokens.weight" ||
        t.name.size() <= suffix.size() ||
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0 ||
        t.name.rfind("mtp.", 0) == 0) {
      continue;
    }
    if (config.quantization.IsNotConverted(t.name.substr(0, t.name.size() - suffix.size()))) {
      continue;
    }
    const int64_t rows = t.shape[0], cols = t.shape[1];
    const int64_t br = (rows + kBlock - 1) / kBlock, bc = (cols + kBlock - 1) / kBlock;
    // The bf16 / f16 rounding the dtype would have applied comes first, as in a real conversion.
    for (float& v : t.values) {
      if (t.dtype == DType::kBF16) v = Bf16ToF32(F32ToBf16(v));
      if (t.dtype == DType::kF16) v = F16ToF32(F32ToF16(v));
    }
    std::vector<float> scale(br * bc);
    std::string bytes(rows * cols, '\0');
    for (int64_t b = 0; b < br * bc; ++b) {
      const int64_t r0 = (b / bc) * kBlock, c0 = (b % bc) * kBlock;
      const int64_t r1 = std::min(rows, r0 + kBlock), c1 = std::min(cols, c0 + kBlock);
      float amax = 0;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::abs(t.values[r * cols + c]));
      const float s = std::max(amax, 1e-12f) / 448.0f;
      scale[b] = s;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          float& v = t.values[r * cols + c];
          const uint8_t q = F32ToF8E4M3(v / s);
          bytes[r * cols + c] = static_cast<char>(q);
          v = F8E4M3ToF32(q) * s;
        }
      }
    }
    t.dtype = DType::kF8E4M3;
    t.raw_bytes = std::move(bytes);
    scales.push_back({t.name + "_scale_inv", DType::kF32, {br, bc}, std::move(scale), {}});
  }
  for (TinyTensor& s : scales) tensors.push_back(std::move(s));
}

TinyTensor* FindTensor(std::vector<TinyTensor>& tensors, const std::string& name) {
  for (TinyTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::Status WriteStringToFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status WriteTinyCheckpoint(const std::string& dir, const ModelConfig& config,
                                 const TinyCheckpointOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  std::vector<TinyTensor> tensors =
      MakeTinyTensors(config, options.dtype, options.small_dtype, options.seed);
  if (options.include_mtp) {
    const int64_t H = config.hidden_size;
    tensors.push_back(
        {"mtp.fc.weight", options.dtype, {H, 2 * H}, std::vector<float>(2 * H * H, 0.01f), {}});
    tensors.push_back(
        {"mtp.norm.weight", options.small_dtype, {H}, std::vector<float>(H, 0.f), {}});
    tensors.push_back({"mtp.layers.0.input_layernorm.weight",
                       options.small_dtype,
                       {H},
                       std::vector<float>(H, 0.f),
                       {}});
  }
  if (options.edit) options.edit(tensors);
  std::sort(tensors.begin(), tensors.end(),
            [](const TinyTensor& a, const TinyTensor& b) { return a.name < b.name; });

  const int shards = std::max(1, options.num_shards);
  std::vector<SafetensorsWriter> writers(shards);
  std::string weight_map;
  uint64_t total_size = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TinyTensor& t = tensors[i];
    const int shard = static_cast<int>(i * shards / tensors.size());
    if (!t.raw_bytes.empty()) {
      writers[shard].Add(t.name, t.dtype, t.shape, t.raw_bytes);
      total_size += t.raw_bytes.size();
    } else {
      if (static_cast<int64_t>(t.values.size()) != Numel(t.shape)) {
        return absl::InvalidArgumentError(absl::StrCat("tiny tensor ", t.name, " has ",
                                                       t.values.size(), " values for its shape"));
      }
      writers[shard].AddFloat(t.name, t.dtype, t.shape, t.values.data());
      total_size += t.values.size() * DTypeSize(t.dtype);
    }
    if (shards > 1) {
      absl::StrAppendFormat(&weight_map, "%s\n    \"%s\": \"model-%05d-of-%05d.safetensors\"",
                            weight_map.empty() ? "" : ",", t.name, shard + 1, shards);
    }
  }
  if (shards == 1) {
    if (absl::Status s = writers[0].WriteFile(dir + "/model.safetensors"); !s.ok()) return s;
  } else {
    for (int s = 0; s < shards; ++s) {
      const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
      if (absl::Status st = writers[s].WriteFile(dir + "/" + name); !st.ok()) return st;
    }
    const std::string index = absl::StrCat("{\n  \"metadata\": {\"total_size\": ", total_size,
                                           "},\n  \"weight_map\": {", weight_map, "\n  }\n}\n");
    if (absl::Status s = WriteStringToFile(dir + "/model.safetensors.index.json", index); !s.ok()) {
      return s;
    }
  }
  if (options.write_config) {
    return WriteStringToFile(dir + "/config.json", ModelConfigToJson(config));
  }
  return absl::OkStatus();
}

TempDir::TempDir() {
  const char* tmp = getenv("TMPDIR");
  std::string tmpl = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/nextserve-test-XXXXXX");
  if (mkdtemp(tmpl.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace nextserve::testing
