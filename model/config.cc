#include "model/config.h"

#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace nextserve {
namespace {

using json = nlohmann::json;

// Upper bound for every size field: keeps all derived products (rows * cols, 2*key_dim + ...) far
// from int64 overflow while being orders of magnitude above any real model.
constexpr int64_t kMaxDim = int64_t{1} << 24;

// absl here is built with its own string_view, which std::string_view does not convert to.
absl::string_view AV(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

std::string TypeName(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

absl::Status TypeError(const std::string& source, std::string_view field, std::string_view want,
                       const json& got) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", AV(field), "' must be ",
                                                 AV(want), ", got ", TypeName(got), " ",
                                                 got.dump()));
}

absl::Status Invalid(const std::string& source, std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", AV(field), "' ", AV(what)));
}

// Field readers: an absent key keeps the default already in `out`. Null is only accepted where
// the caller treats it as absent (see ParseModelConfig).
absl::Status ReadInt(const json& v, const std::string& source, std::string_view field,
                     int64_t* out) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      return TypeError(source, field, "an int64", v);
    *out = static_cast<int64_t>(v.get<uint64_t>());
    return absl::OkStatus();
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return absl::OkStatus();
  }
  return TypeError(source, field, "an integer", v);
}

absl::Status ReadDouble(const json& v, const std::string& source, std::string_view field,
                        double* out) {
  if (!v.is_number()) return TypeError(source, field, "a number", v);
  *out = v.get<double>();
  return absl::OkStatus();
}

absl::Status ReadBool(const json& v, const std::string& source, std::string_view field, bool* out) {
  if (!v.is_boolean()) return TypeError(source, field, "a boolean", v);
  *out = v.get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& v, const std::string& source, std::string_view field,
                        std::string* out) {
  if (!v.is_string()) return TypeError(source, field, "a string", v);
  *out = v.get<std::string>();
  return absl::OkStatus();
}

absl::Status ReadIntList(const json& v, const std::string& source, std::string_view field,
                         std::vector<int64_t>* out) {
  if (!v.is_array()) return TypeError(source, field, "a list of integers", v);
  out->clear();
  for (size_t i = 0; i < v.size(); ++i) {
    int64_t x;
    absl::Status s = ReadInt(v[i], source, absl::StrCat(AV(field), "[", i, "]"), &x);
    if (!s.ok()) return s;
    out->push_back(x);
  }
  return absl::OkStatus();
}

#define NS_RETURN_IF_ERROR(expr) \
  do {                           \
    absl::Status _s = (expr);    \
    if (!_s.ok()) return _s;     \
  } while (0)

}  // namespace

bool QuantizationConfig::IsNotConverted(const std::string& module) const {
  for (const std::string& entry : modules_to_not_convert) {
    if (entry.empty()) continue;
    // transformers 5.24 should_convert_module (quantizers_utils.py), regexes aside: a prefix up
    // to a module boundary ("model.layers.1" matches "model.layers.1.mlp.gate", not
    // "model.layers.10.…"), or a plain suffix ("mlp.gate" matches "model.layers.0.mlp.gate" but
    // not "….mlp.gate_proj").
    if (module.size() < entry.size()) continue;
    if (module.compare(0, entry.size(), entry) == 0 &&
        (module.size() == entry.size() || module[entry.size()] == '.' || entry.back() == '.')) {
      return true;
    }
    if (module.compare(module.size() - entry.size(), entry.size(), entry) == 0) return true;
  }
  return false;
}

namespace {

absl::Status ParseQuantizationConfig(const json& q, const std::string& source,
                                     QuantizationConfig* out) {
  const std::string field = "quantization_config";
  if (!q.is_object()) {
    return Invalid(source, field, absl::StrCat("must be an object, got ", q.type_name()));
  }
  std::string method;
  if (!q.contains("quant_method")) return Invalid(source, field, "has no 'quant_method'");
  NS_RETURN_IF_ERROR(ReadString(q["quant_method"], source, field + ".quant_method", &method));
  if (method != "fp8") {
    return absl::UnimplementedError(absl::StrCat(
        source, ": quantization_config.quant_method \"", method,
        "\" is not supported (only \"fp8\": block-scaled float8_e4m3fn with weight_scale_inv)"));
  }
  out->fp8 = true;
  if (q.contains("fmt") && !q["fmt"].is_null()) {
    std::string fmt;
    NS_RETURN_IF_ERROR(ReadString(q["fmt"], source, field + ".fmt", &fmt));
    if (fmt != "e4m3") {
      return absl::UnimplementedError(
          absl::StrCat(source, ": quantization_config.fmt \"", fmt,
                       "\" is not supported (only \"e4m3\", float8_e4m3fn)"));
    }
  }
  if (q.contains("activation_scheme") && !q["activation_scheme"].is_null()) {
    NS_RETURN_IF_ERROR(ReadString(q["activation_scheme"], source, field + ".activation_scheme",
                                  &out->activation_scheme));
    if (out->activation_scheme != "dynamic") {
      return absl::UnimplementedError(absl::StrCat(
          source, ": quantization_config.activation_scheme \"", out->activation_scheme,
          "\" is not supported (only \"dynamic\"; static needs per-tensor input scales)"));
    }
  }
  if (q.contains("weight_block_size") && !q["weight_block_size"].is_null()) {
    NS_RETURN_IF_ERROR(ReadIntList(q["weight_block_size"], source, field + ".weight_block_size",
                                   &out->weight_block_size));
  }
  if (out->weight_block_size != std::vector<int64_t>{128, 128}) {
    return absl::UnimplementedError(absl::StrCat(
        source, ": quantization_config.weight_block_size [",
        absl::StrJoin(out->weight_block_size, ", "), "] is not supported (only [128, 128])"));
  }
  if (q.contains("modules_to_not_convert") && !q["modules_to_not_convert"].is_null()) {
    const json& m = q["modules_to_not_convert"];
    if (!m.is_array()) {
      return Invalid(source, field + ".modules_to_not_convert",
                     absl::StrCat("must be a list of strings, got ", m.type_name()));
    }
    for (size_t i = 0; i < m.size(); ++i) {
      std::string name;
      NS_RETURN_IF_ERROR(
          ReadString(m[i], source, absl::StrCat(field, ".modules_to_not_convert[", i, "]"), &name));
      out->modules_to_not_convert.push_back(std::move(name));
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool ModelConfig::is_moe_layer(int64_t layer) const {
  for (int64_t l : mlp_only_layers) {
    if (l == layer) return false;
  }
  return num_experts > 0 && decoder_sparse_step > 0 && (layer + 1) % decoder_sparse_step == 0;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  const json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": top level must be a JSON object, got ", root.type_name()));
  }
  ModelConfig c;
  auto has = [&](const char* key) { return root.contains(key); };
  // Keys whose null means "absent" (transformers writes null for several optional fields).
  auto present = [&](const char* key) { return root.contains(key) && !root[key].is_null(); };

  struct IntField {
    const char* key;
    int64_t* out;
  };
  const IntField int_fields[] = {
      {"vocab_size", &c.vocab_size},
      {"hidden_size", &c.hidden_size},
      {"intermediate_size", &c.intermediate_size},
      {"num_hidden_layers", &c.num_hidden_layers},
      {"num_attention_heads", &c.num_attention_heads},
      {"num_key_value_heads", &c.num_key_value_heads},
      {"head_dim", &c.head_dim},
      {"max_position_embeddings", &c.max_position_embeddings},
      {"linear_conv_kernel_dim", &c.linear_conv_kernel_dim},
      {"linear_key_head_dim", &c.linear_key_head_dim},
      {"linear_value_head_dim", &c.linear_value_head_dim},
      {"linear_num_key_heads", &c.linear_num_key_heads},
      {"linear_num_value_heads", &c.linear_num_value_heads},
      {"decoder_sparse_step", &c.decoder_sparse_step},
      {"moe_intermediate_size", &c.moe_intermediate_size},
      {"shared_expert_intermediate_size", &c.shared_expert_intermediate_size},
      {"num_experts_per_tok", &c.num_experts_per_tok},
      {"num_experts", &c.num_experts},
      {"full_attention_interval", &c.full_attention_interval},
  };
  for (const IntField& f : int_fields) {
    if (has(f.key)) NS_RETURN_IF_ERROR(ReadInt(root[f.key], source, f.key, f.out));
  }
  if (has("rms_norm_eps"))
    NS_RETURN_IF_ERROR(ReadDouble(root["rms_norm_eps"], source, "rms_norm_eps", &c.rms_norm_eps));
  if (has("tie_word_embeddings")) {
    NS_RETURN_IF_ERROR(ReadBool(root["tie_word_embeddings"], source, "tie_word_embeddings",
                                &c.tie_word_embeddings));
  }
  if (has("attention_bias")) {
    NS_RETURN_IF_ERROR(
        ReadBool(root["attention_bias"], source, "attention_bias", &c.attention_bias));
  }
  if (has("norm_topk_prob")) {
    NS_RETURN_IF_ERROR(
        ReadBool(root["norm_topk_prob"], source, "norm_topk_prob", &c.norm_topk_prob));
  }
  if (has("model_type"))
    NS_RETURN_IF_ERROR(ReadString(root["model_type"], source, "model_type", &c.model_type));
  if (has("hidden_act"))
    NS_RETURN_IF_ERROR(ReadString(root["hidden_act"], source, "hidden_act", &c.hidden_act));
  // transformers 5 writes `dtype`; older files `torch_dtype`. `dtype` wins when both are present.
  if (present("dtype")) {
    NS_RETURN_IF_ERROR(ReadString(root["dtype"], source, "dtype", &c.torch_dtype));
  } else if (present("torch_dtype")) {
    NS_RETURN_IF_ERROR(ReadString(root["torch_dtype"], source, "torch_dtype", &c.torch_dtype));
  }
  if (present("mlp_only_layers")) {
    NS_RETURN_IF_ERROR(
        ReadIntList(root["mlp_only_layers"], source, "mlp_only_layers", &c.mlp_only_layers));
  }
  if (present("bos_token_id"))
    NS_RETURN_IF_ERROR(ReadInt(root["bos_token_id"], source, "bos_token_id", &c.bos_token_id));
  if (present("eos_token_id")) {
    const json& eos = root["eos_token_id"];
    if (eos.is_array()) {
      NS_RETURN_IF_ERROR(ReadIntList(eos, source, "eos_token_id", &c.eos_token_ids));
    } else {
      int64_t id;
      NS_RETURN_IF_ERROR(ReadInt(eos, source, "eos_token_id", &id));
      c.eos_token_ids = {id};
    }
  }

  if (present("quantization_config")) {
    NS_RETURN_IF_ERROR(
        ParseQuantizationConfig(root["quantization_config"], source, &c.quantization));
  }

  // RoPE: real Qwen checkpoints use top-level rope_theta / partial_rotary_factor, transformers 5
  // writes them inside rope_parameters. Both forms are accepted; when both are given they must
  // agree, since picking one silently could run the model with the wrong frequencies.
  if (present("rope_scaling")) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": field 'rope_scaling' is not supported (got ",
                     root["rope_scaling"].dump(), "); only default RoPE is implemented"));
  }
  std::optional<double> top_theta, top_factor, nested_theta, nested_factor;
  double tmp;
  if (has("rope_theta")) {
    NS_RETURN_IF_ERROR(ReadDouble(root["rope_theta"], source, "rope_theta", &tmp));
    top_theta = tmp;
  }
  if (has("partial_rotary_factor")) {
    NS_RETURN_IF_ERROR(
        ReadDouble(root["partial_rotary_factor"], source, "partial_rotary_factor", &tmp));
    top_factor = tmp;
  }
  if (present("rope_parameters")) {
    const json& rp = root["rope_parameters"];
    if (!rp.is_object()) return TypeError(source, "rope_parameters", "an object", rp);
    if (rp.contains("rope_type") && !rp["rope_type"].is_null()) {
      std::string type;
      NS_RETURN_IF_ERROR(ReadString(rp["rope_type"], source, "rope_parameters.rope_type", &type));
      if (type != "default") {
        return absl::UnimplementedError(
            absl::StrCat(source, ": field 'rope_parameters.rope_type' = \"", type,
                         "\" is not supported; only \"default\" RoPE is implemented"));
      }
    }
    if (rp.contains("rope_theta")) {
      NS_RETURN_IF_ERROR(ReadDouble(rp["rope_theta"], source, "rope_parameters.rope_theta", &tmp));
      nested_theta = tmp;
    }
    if (rp.contains("partial_rotary_factor")) {
      NS_RETURN_IF_ERROR(ReadDouble(rp["partial_rotary_factor"], source,
                                    "rope_parameters.partial_rotary_factor", &tmp));
      nested_factor = tmp;
    }
  }
  if (top_theta && nested_theta && *top_theta != *nested_theta) {
    return Invalid(source, "rope_theta",
                   absl::StrCat("(", *top_theta, ") contradicts rope_parameters.rope_theta (",
                                *nested_theta, ")"));
  }
  if (top_factor && nested_factor && *top_factor != *nested_factor) {
    return Invalid(
        source, "partial_rotary_factor",
        absl::StrCat("(", *top_factor, ") contradicts rope_parameters.partial_rotary_factor (",
                     *nested_factor, ")"));
  }
  if (top_theta)
    c.rope_theta = *top_theta;
  else if (nested_theta)
    c.rope_theta = *nested_theta;
  if (top_factor)
    c.partial_rotary_factor = *top_factor;
  else if (nested_factor)
    c.partial_rotary_factor = *nested_factor;

  // Sizes first: layer_types derivation needs num_hidden_layers.
  for (const IntField& f : int_fields) {
    const bool may_be_zero = std::string_view(f.key) == "num_experts";
    if (*f.out < (may_be_zero ? 0 : 1)) {
      return Invalid(source, f.key,
                     absl::StrCat("must be ", may_be_zero ? ">= 0" : "positive", ", got ", *f.out));
    }
    if (std::string_view(f.key) != "max_position_embeddings" && *f.out > kMaxDim) {
      return Invalid(source, f.key,
                     absl::StrCat("= ", *f.out, " is unreasonably large (limit ", kMaxDim, ")"));
    }
  }

  if (present("layer_types")) {
    const json& lt = root["layer_types"];
    if (!lt.is_array()) return TypeError(source, "layer_types", "a list of strings", lt);
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string field = absl::StrCat("layer_types[", i, "]");
      std::string s;
      NS_RETURN_IF_ERROR(ReadString(lt[i], source, field, &s));
      if (s == "linear_attention") {
        c.layer_types.push_back(LayerType::kLinearAttention);
      } else if (s == "full_attention") {
        c.layer_types.push_back(LayerType::kFullAttention);
      } else {
        return Invalid(
            source, field,
            absl::StrCat("= \"", s, "\": expected \"linear_attention\" or \"full_attention\""));
      }
    }
    if (static_cast<int64_t>(c.layer_types.size()) != c.num_hidden_layers) {
      return Invalid(source, "layer_types",
                     absl::StrCat("has ", c.layer_types.size(),
                                  " entries but num_hidden_layers is ", c.num_hidden_layers));
    }
  } else {
    // transformers: full attention iff (i + 1) % full_attention_interval == 0.
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_types.push_back((i + 1) % c.full_attention_interval == 0
                                  ? LayerType::kFullAttention
                                  : LayerType::kLinearAttention);
    }
  }

  if (c.model_type != "qwen3_next") {
    return Invalid(source, "model_type",
                   absl::StrCat("= \"", c.model_type, "\", expected \"qwen3_next\""));
  }
  if (c.hidden_act != "silu") {
    return Invalid(source, "hidden_act",
                   absl::StrCat("= \"", c.hidden_act, "\": only \"silu\" is supported"));
  }
  if (c.attention_bias) {
    return absl::UnimplementedError(absl::StrCat(
        source, ": field 'attention_bias' = true is not supported (Qwen3-Next has no biases)"));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return Invalid(
        source, "num_attention_heads",
        absl::StrCat("(", c.num_attention_heads, ") is not a multiple of num_key_value_heads (",
                     c.num_key_value_heads, ")"));
  }
  if (c.linear_num_value_heads % c.linear_num_key_heads != 0) {
    return Invalid(
        source, "linear_num_value_heads",
        absl::StrCat("(", c.linear_num_value_heads, ") is not a multiple of linear_num_key_heads (",
                     c.linear_num_key_heads, ")"));
  }
  if (c.num_experts > 0 && c.num_experts_per_tok > c.num_experts) {
    return Invalid(
        source, "num_experts_per_tok",
        absl::StrCat("(", c.num_experts_per_tok, ") exceeds num_experts (", c.num_experts, ")"));
  }
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps)) {
    return Invalid(source, "rms_norm_eps",
                   absl::StrCat("must be positive and finite, got ", c.rms_norm_eps));
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    return Invalid(source, "rope_theta",
                   absl::StrCat("must be positive and finite, got ", c.rope_theta));
  }
  if (!(c.partial_rotary_factor > 0) || c.partial_rotary_factor > 1) {
    return Invalid(source, "partial_rotary_factor",
                   absl::StrCat("must be in (0, 1], got ", c.partial_rotary_factor));
  }
  const int64_t rot = c.rotary_dim();
  if (rot <= 0 || rot % 2 != 0 || rot > c.head_dim) {
    return Invalid(
        source, "partial_rotary_factor",
        absl::StrCat("gives rotary dim ", rot, " (head_dim ", c.head_dim, " * ",
                     c.partial_rotary_factor, "); it must be even, positive and <= head_dim"));
  }
  for (size_t i = 0; i < c.mlp_only_layers.size(); ++i) {
    const int64_t l = c.mlp_only_layers[i];
    if (l < 0 || l >= c.num_hidden_layers) {
      return Invalid(source, absl::StrCat("mlp_only_layers[", i, "]"),
                     absl::StrCat("= ", l, " is outside [0, ", c.num_hidden_layers, ")"));
    }
  }
  if (c.bos_token_id < -1 || c.bos_token_id >= c.vocab_size) {
    return Invalid(source, "bos_token_id",
                   absl::StrCat("= ", c.bos_token_id, " is outside the vocabulary"));
  }
  for (size_t i = 0; i < c.eos_token_ids.size(); ++i) {
    if (c.eos_token_ids[i] < 0 || c.eos_token_ids[i] >= c.vocab_size) {
      return Invalid(source, "eos_token_id",
                     absl::StrCat("= ", c.eos_token_ids[i], " is outside the vocabulary"));
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model config ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ParseModelConfig(text.str(), path);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  // ordered_json keeps the conventional HF field order, which makes diffs readable.
  nlohmann::ordered_json j;
  j["architectures"] = {"Qwen3NextForCausalLM"};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = c.hidden_act;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["rope_theta"] = c.rope_theta;
  j["partial_rotary_factor"] = c.partial_rotary_factor;
  j["rope_scaling"] = nullptr;
  j["attention_bias"] = c.attention_bias;
  j["attention_dropout"] = 0.0;
  j["linear_conv_kernel_dim"] = c.linear_conv_kernel_dim;
  j["linear_key_head_dim"] = c.linear_key_head_dim;
  j["linear_value_head_dim"] = c.linear_value_head_dim;
  j["linear_num_key_heads"] = c.linear_num_key_heads;
  j["linear_num_value_heads"] = c.linear_num_value_heads;
  j["decoder_sparse_step"] = c.decoder_sparse_step;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["num_experts"] = c.num_experts;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["mlp_only_layers"] = c.mlp_only_layers;
  j["full_attention_interval"] = c.full_attention_interval;
  nlohmann::ordered_json types = nlohmann::ordered_json::array();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    // A default-constructed config has no layer_types yet: derive them as the parser would.
    const bool full =
        i < static_cast<int64_t>(c.layer_types.size())
            ? c.layer_types[i] == LayerType::kFullAttention
            : c.full_attention_interval > 0 && (i + 1) % c.full_attention_interval == 0;
    types.push_back(full ? "full_attention" : "linear_attention");
  }
  j["layer_types"] = types;
  j["torch_dtype"] = c.torch_dtype;
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else if (!c.eos_token_ids.empty()) {
    j["eos_token_id"] = c.eos_token_ids;
  }
  if (c.quantization.fp8) {
    nlohmann::ordered_json q;
    q["quant_method"] = "fp8";
    q["fmt"] = "e4m3";
    q["activation_scheme"] = c.quantization.activation_scheme;
    q["weight_block_size"] = c.quantization.weight_block_size;
    q["modules_to_not_convert"] = c.quantization.modules_to_not_convert;
    j["quantization_config"] = q;
  }
  return j.dump(2) + "\n";
}

}  // namespace nextserve
