#include "model/config.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/model/status_matchers.h"
#include "tests/unit/model/tiny_checkpoint.h"

namespace nextserve {
namespace {

using ::nextserve::testing::IsError;
using json = nlohmann::json;
constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

// Qwen3-Next-80B-A3B-Instruct's config.json (spec §1), as the real checkpoint writes it.
const char kReal80B[] = R"({
  "architectures": ["Qwen3NextForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645,
  "full_attention_interval": 4, "head_dim": 256, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 5120, "linear_conv_kernel_dim": 4,
  "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
  "linear_value_head_dim": 128, "max_position_embeddings": 262144, "mlp_only_layers": [],
  "model_type": "qwen3_next", "moe_intermediate_size": 512, "norm_topk_prob": true,
  "num_attention_heads": 16, "num_experts": 512, "num_experts_per_tok": 10,
  "num_hidden_layers": 48, "num_key_value_heads": 2, "output_router_logits": false,
  "partial_rotary_factor": 0.25, "rms_norm_eps": 1e-06, "rope_scaling": null,
  "rope_theta": 10000000, "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 512,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.57.0.dev0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
})";

TEST(ConfigTest, ParsesReal80BConfig) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(kReal80B, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->num_hidden_layers, 48);
  EXPECT_EQ(c->rope_theta, 1e7);
  EXPECT_EQ(c->rotary_dim(), 64);
  EXPECT_EQ(c->linear_conv_dim(), 8192);
  EXPECT_EQ(c->linear_key_dim(), 2048);
  EXPECT_EQ(c->linear_value_dim(), 4096);
  EXPECT_EQ(c->max_position_embeddings, 262144);
  EXPECT_EQ(c->intermediate_size, 5120);
  EXPECT_EQ(c->bos_token_id, 151643);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{151645});
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  ASSERT_EQ(c->layer_types.size(), 48u);
  int full = 0;
  for (int i = 0; i < 48; ++i) {
    EXPECT_EQ(c->is_full_attention(i), (i + 1) % 4 == 0) << i;
    EXPECT_TRUE(c->is_moe_layer(i)) << i;
    full += c->is_full_attention(i);
  }
  EXPECT_EQ(full, 12);
}

TEST(ConfigTest, EmptyObjectGivesTransformersDefaults) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig("{}", "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  const ModelConfig d;
  EXPECT_EQ(c->vocab_size, d.vocab_size);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->intermediate_size, 5632);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->partial_rotary_factor, 0.25);
  EXPECT_EQ(c->num_experts, 512);
  EXPECT_EQ(c->layer_types.size(), 48u);
  EXPECT_TRUE(c->is_full_attention(3));
  EXPECT_FALSE(c->is_full_attention(4));
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());
}

// Written by transformers 5.24's Qwen3NextConfig(...).to_json_string() (rope_parameters, dtype,
// null bos_token_id, no full_attention_interval).
const char kTransformers524[] = R"({
  "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": null, "decoder_sparse_step": 1,
  "dtype": "bfloat16", "eos_token_id": [2, 3], "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
  "initializer_range": 0.02, "intermediate_size": 5632,
  "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
  "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_num_key_heads": 16,
  "linear_num_value_heads": 32, "linear_value_head_dim": 128, "max_position_embeddings": 32768,
  "mlp_only_layers": [1], "model_type": "qwen3_next", "moe_intermediate_size": 512,
  "norm_topk_prob": true, "num_attention_heads": 4, "num_experts": 512, "num_experts_per_tok": 10,
  "num_hidden_layers": 4, "num_key_value_heads": 2, "output_router_logits": false,
  "pad_token_id": null, "rms_norm_eps": 1e-06,
  "rope_parameters": {"partial_rotary_factor": 0.25, "rope_theta": 10000000.0, "rope_type": "default"},
  "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 512, "tie_word_embeddings": false,
  "transformers_version": "5.24.0", "use_cache": true, "vocab_size": 96
})";

TEST(ConfigTest, ParsesTransformers524Output) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(kTransformers524, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 1e7);
  EXPECT_EQ(c->partial_rotary_factor, 0.25);
  EXPECT_EQ(c->rotary_dim(), 4);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(c->mlp_only_layers, std::vector<int64_t>{1});
  EXPECT_FALSE(c->is_moe_layer(1));
  EXPECT_TRUE(c->is_moe_layer(2));
  EXPECT_TRUE(c->is_full_attention(3));
  EXPECT_EQ(c->vocab_size, 96);
}

// transformers 5.x: rope_parameters, dtype, explicit layer_types, eos list.
TEST(ConfigTest, ParsesTransformers5Style) {
  json j = json::parse(kReal80B);
  j.erase("rope_theta");
  j.erase("partial_rotary_factor");
  j.erase("torch_dtype");
  j.erase("rope_scaling");
  j["rope_parameters"] = {
      {"rope_theta", 5e6}, {"partial_rotary_factor", 0.5}, {"rope_type", "default"}};
  j["dtype"] = "float32";
  j["eos_token_id"] = {151645, 151643};
  j["num_hidden_layers"] = 3;
  j["layer_types"] = {"full_attention", "linear_attention", "full_attention"};
  j.erase("full_attention_interval");
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 5e6);
  EXPECT_EQ(c->partial_rotary_factor, 0.5);
  EXPECT_EQ(c->rotary_dim(), 128);
  EXPECT_EQ(c->torch_dtype, "float32");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{151645, 151643}));
  EXPECT_TRUE(c->is_full_attention(0));
  EXPECT_FALSE(c->is_full_attention(1));
  EXPECT_TRUE(c->is_full_attention(2));
}

TEST(ConfigTest, RopeTopLevelAndNestedMustAgree) {
  json j = json::parse(kReal80B);
  j["rope_parameters"] = {{"rope_theta", 1e7}, {"partial_rotary_factor", 0.25}};
  EXPECT_TRUE(ParseModelConfig(j.dump(), "c.json").ok());
  j["rope_parameters"]["rope_theta"] = 1e6;
  EXPECT_TRUE(IsError(ParseModelConfig(j.dump(), "c.json"), kInvalid,
                      {"c.json", "rope_theta", "rope_parameters.rope_theta"}));
  j["rope_parameters"]["rope_theta"] = 1e7;
  j["rope_parameters"]["partial_rotary_factor"] = 0.5;
  EXPECT_TRUE(
      IsError(ParseModelConfig(j.dump(), "c.json"), kInvalid, {"c.json", "partial_rotary_factor"}));
}

TEST(ConfigTest, FullAttentionIntervalDerivesLayerTypes) {
  json j = json::parse(kReal80B);
  j["full_attention_interval"] = 3;
  j["num_hidden_layers"] = 7;
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  for (int i = 0; i < 7; ++i) EXPECT_EQ(c->is_full_attention(i), i == 2 || i == 5) << i;
}

TEST(ConfigTest, MoeLayerRule) {
  json j = json::parse(kReal80B);
  j["num_hidden_layers"] = 6;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  // sparse iff not in mlp_only_layers and (i + 1) % 2 == 0.
  const bool want[] = {false, true, false, false, false, true};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(c->is_moe_layer(i), want[i]) << i;
  j["num_experts"] = 0;
  c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  for (int i = 0; i < 6; ++i) EXPECT_FALSE(c->is_moe_layer(i));
}

TEST(ConfigTest, NullOptionalFieldsAreAbsent) {
  json j = json::parse(kReal80B);
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = nullptr;
  j["mlp_only_layers"] = nullptr;
  j["layer_types"] = nullptr;
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->layer_types.size(), 48u);
}

TEST(ConfigTest, ToJsonRoundTrips) {
  ModelConfig c = testing::TinyConfig();
  c.mlp_only_layers = {1};
  c.decoder_sparse_step = 1;
  c.tie_word_embeddings = true;
  c.rms_norm_eps = 1e-5;
  c.eos_token_ids = {2, 3};
  c.layer_types[0] = LayerType::kFullAttention;  // not derivable from the interval: list needed
  const std::string text = ModelConfigToJson(c);
  const json j = json::parse(text);
  EXPECT_EQ(j["architectures"], json::array({"Qwen3NextForCausalLM"}));
  EXPECT_EQ(j["model_type"], "qwen3_next");
  EXPECT_TRUE(j.contains("rope_theta"));
  EXPECT_TRUE(j.contains("partial_rotary_factor"));
  EXPECT_FALSE(j.contains("rope_parameters"));
  EXPECT_EQ(j["layer_types"][0], "full_attention");
  absl::StatusOr<ModelConfig> back = ParseModelConfig(text, "roundtrip");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->vocab_size, c.vocab_size);
  EXPECT_EQ(back->hidden_size, c.hidden_size);
  EXPECT_EQ(back->head_dim, c.head_dim);
  EXPECT_EQ(back->rope_theta, c.rope_theta);
  EXPECT_EQ(back->rms_norm_eps, c.rms_norm_eps);
  EXPECT_EQ(back->linear_value_head_dim, c.linear_value_head_dim);
  EXPECT_EQ(back->shared_expert_intermediate_size, c.shared_expert_intermediate_size);
  EXPECT_EQ(back->mlp_only_layers, c.mlp_only_layers);
  EXPECT_EQ(back->layer_types, c.layer_types);
  EXPECT_EQ(back->tie_word_embeddings, true);
  EXPECT_EQ(back->eos_token_ids, c.eos_token_ids);
  EXPECT_EQ(back->bos_token_id, c.bos_token_id);
  EXPECT_EQ(ModelConfigToJson(*back), text);
}

TEST(ConfigTest, ToJsonOfDefaultConfigDerivesLayerTypes) {
  absl::StatusOr<ModelConfig> back = ParseModelConfig(ModelConfigToJson(ModelConfig{}), "d");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->layer_types.size(), 48u);
  EXPECT_TRUE(back->is_full_attention(47));
}

struct BadCase {
  const char* name;
  json patch;  // merged into the real config (null values erase... see below)
  absl::StatusCode code;
  std::vector<std::string> needles;
};

TEST(ConfigTest, RejectsBadFields) {
  const std::vector<BadCase> cases = {
      {"string size", {{"hidden_size", "2048"}}, kInvalid, {"hidden_size", "integer"}},
      {"float size", {{"num_hidden_layers", 48.5}}, kInvalid, {"num_hidden_layers"}},
      {"negative size", {{"vocab_size", -1}}, kInvalid, {"vocab_size", "positive"}},
      {"zero heads", {{"num_attention_heads", 0}}, kInvalid, {"num_attention_heads"}},
      {"huge size", {{"hidden_size", int64_t{1} << 40}}, kInvalid, {"hidden_size", "large"}},
      {"gqa",
       {{"num_key_value_heads", 3}},
       kInvalid,
       {"num_attention_heads", "num_key_value_heads"}},
      {"linear heads", {{"linear_num_key_heads", 12}}, kInvalid, {"linear_num_value_heads"}},
      {"topk", {{"num_experts_per_tok", 513}}, kInvalid, {"num_experts_per_tok"}},
      {"bool type", {{"tie_word_embeddings", 1}}, kInvalid, {"tie_word_embeddings", "boolean"}},
      {"act", {{"hidden_act", "gelu"}}, kInvalid, {"hidden_act", "gelu"}},
      {"model type", {{"model_type", "qwen3_moe"}}, kInvalid, {"model_type", "qwen3_moe"}},
      {"layer_types length",
       {{"layer_types", {"full_attention"}}},
       kInvalid,
       {"layer_types", "48"}},
      {"layer_types value",
       {{"num_hidden_layers", 2}, {"layer_types", {"full_attention", "sliding_attention"}}},
       kInvalid,
       {"layer_types[1]", "sliding_attention"}},
      {"layer_types type", {{"layer_types", "full"}}, kInvalid, {"layer_types"}},
      {"mlp_only range", {{"mlp_only_layers", {48}}}, kInvalid, {"mlp_only_layers[0]", "48"}},
      {"mlp_only type", {{"mlp_only_layers", {"x"}}}, kInvalid, {"mlp_only_layers[0]"}},
      {"sparse step", {{"decoder_sparse_step", 0}}, kInvalid, {"decoder_sparse_step"}},
      {"interval", {{"full_attention_interval", 0}}, kInvalid, {"full_attention_interval"}},
      {"rope_scaling",
       {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}}},
       absl::StatusCode::kUnimplemented,
       {"rope_scaling", "not supported"}},
      {"rope_type",
       {{"rope_parameters", {{"rope_type", "yarn"}}}},
       absl::StatusCode::kUnimplemented,
       {"rope_parameters.rope_type", "yarn"}},
      {"rope_parameters type", {{"rope_parameters", 3}}, kInvalid, {"rope_parameters"}},
      {"odd rotary",
       {{"partial_rotary_factor", 0.01171875}},
       kInvalid,
       {"partial_rotary_factor", "rotary dim 3"}},
      {"factor > 1", {{"partial_rotary_factor", 1.5}}, kInvalid, {"partial_rotary_factor"}},
      {"theta", {{"rope_theta", 0}}, kInvalid, {"rope_theta"}},
      {"eps", {{"rms_norm_eps", -1e-6}}, kInvalid, {"rms_norm_eps"}},
      {"eos type", {{"eos_token_id", "x"}}, kInvalid, {"eos_token_id"}},
      {"eos range", {{"eos_token_id", {1, 151936}}}, kInvalid, {"eos_token_id", "151936"}},
      {"bias", {{"attention_bias", true}}, absl::StatusCode::kUnimplemented, {"attention_bias"}},
      {"dtype type", {{"torch_dtype", 16}}, kInvalid, {"torch_dtype"}},
      {"null size", {{"hidden_size", nullptr}}, kInvalid, {"hidden_size"}},
      {"quant method",
       {{"quantization_config", {{"quant_method", "awq"}}}},
       absl::StatusCode::kUnimplemented,
       {"quant_method", "awq", "fp8"}},
      {"quant no method", {{"quantization_config", {{"fmt", "e4m3"}}}}, kInvalid, {"quant_method"}},
      {"quant type", {{"quantization_config", 3}}, kInvalid, {"quantization_config", "object"}},
      {"fp8 fmt",
       {{"quantization_config", {{"quant_method", "fp8"}, {"fmt", "e5m2"}}}},
       absl::StatusCode::kUnimplemented,
       {"quantization_config.fmt", "e5m2", "e4m3"}},
      {"fp8 block",
       {{"quantization_config", {{"quant_method", "fp8"}, {"weight_block_size", {64, 64}}}}},
       absl::StatusCode::kUnimplemented,
       {"weight_block_size", "[64, 64]", "[128, 128]"}},
      {"fp8 static",
       {{"quantization_config", {{"quant_method", "fp8"}, {"activation_scheme", "static"}}}},
       absl::StatusCode::kUnimplemented,
       {"activation_scheme", "static"}},
      {"fp8 skip list",
       {{"quantization_config", {{"quant_method", "fp8"}, {"modules_to_not_convert", {1}}}}},
       kInvalid,
       {"modules_to_not_convert[0]"}},
  };
  for (const BadCase& bc : cases) {
    json j = json::parse(kReal80B);
    j.update(bc.patch);
    absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump(), "/ckpt/config.json");
    ::testing::AssertionResult r = IsError(c, bc.code, {"/ckpt/config.json"});
    for (const std::string& n : bc.needles) {
      if (r) r = IsError(c, bc.code, {n});
    }
    EXPECT_TRUE(r) << bc.name;
  }
}

// The quantization_config of the official Qwen3-Next-80B-A3B-Instruct-FP8 release (abridged to
// layer 0 of its per-layer list).
TEST(ConfigTest, ParsesFp8QuantizationConfig) {
  json j = json::parse(kReal80B);
  j["quantization_config"] = json::parse(R"({
    "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
    "weight_block_size": [128, 128],
    "modules_to_not_convert": ["lm_head", "model.embed_tokens", "model.layers.0.mlp.gate",
                               "model.layers.0.mlp.shared_expert_gate",
                               "model.layers.0.linear_attn.in_proj_ba", "model.layers.1"]})");
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  const QuantizationConfig& q = c->quantization;
  EXPECT_TRUE(q.fp8);
  EXPECT_EQ(q.weight_block_size, (std::vector<int64_t>{128, 128}));
  EXPECT_EQ(q.modules_to_not_convert.size(), 6u);
  EXPECT_TRUE(q.IsNotConverted("lm_head"));
  EXPECT_TRUE(q.IsNotConverted("model.layers.0.mlp.gate"));
  EXPECT_TRUE(q.IsNotConverted("model.layers.0.linear_attn.in_proj_ba"));
  EXPECT_TRUE(q.IsNotConverted("model.layers.1.mlp.experts.3.up_proj"));  // dotted prefix
  EXPECT_FALSE(q.IsNotConverted("model.layers.10.mlp.experts.3.up_proj"));
  EXPECT_FALSE(q.IsNotConverted("model.layers.0.mlp.gate_proj"));
  EXPECT_FALSE(q.IsNotConverted("model.layers.0.mlp.shared_expert.gate_proj"));
  EXPECT_FALSE(q.IsNotConverted("model.layers.2.mlp.gate"));
  // transformers' suffix rule has no boundary: "gate" also matches "shared_expert_gate".
  QuantizationConfig bare;
  bare.modules_to_not_convert = {"gate"};
  EXPECT_TRUE(bare.IsNotConverted("model.layers.4.mlp.shared_expert_gate"));
  EXPECT_FALSE(bare.IsNotConverted("model.layers.4.mlp.shared_expert.gate_proj"));
  // Defaults of transformers' FineGrainedFP8Config: only quant_method is required.
  j["quantization_config"] = {{"quant_method", "fp8"}, {"modules_to_not_convert", nullptr}};
  c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->quantization.fp8);
  EXPECT_EQ(c->quantization.activation_scheme, "dynamic");
  // ModelConfigToJson writes it back.
  c->quantization.modules_to_not_convert = {"lm_head"};
  absl::StatusOr<ModelConfig> back = ParseModelConfig(ModelConfigToJson(*c), "round trip");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->quantization.fp8);
  EXPECT_EQ(back->quantization.modules_to_not_convert, std::vector<std::string>{"lm_head"});
  // No quantization_config: not FP8.
  c = ParseModelConfig(kReal80B, "config.json");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->quantization.fp8);
}

TEST(ConfigTest, RejectsBadJson) {
  EXPECT_TRUE(IsError(ParseModelConfig("{\"hidden_size\": ", "/d/config.json"), kInvalid,
                      {"/d/config.json", "JSON"}));
  EXPECT_TRUE(IsError(ParseModelConfig("[1, 2]", "/d/config.json"), kInvalid,
                      {"/d/config.json", "object"}));
  EXPECT_TRUE(IsError(ParseModelConfig("", "/d/config.json"), kInvalid, {"/d/config.json"}));
}

TEST(ConfigTest, UnknownKeysIgnored) {
  json j = json::parse(kReal80B);
  j["quantization_config"] = {{"quant_method", "fp8"}};
  j["some_future_field"] = {1, 2, 3};
  EXPECT_TRUE(ParseModelConfig(j.dump(), "config.json").ok());
}

TEST(ConfigTest, LoadModelConfigNamesMissingFile) {
  EXPECT_TRUE(IsError(LoadModelConfig("/nonexistent/dir/config.json"), absl::StatusCode::kNotFound,
                      {"/nonexistent/dir/config.json"}));
  testing::TempDir dir;
  ASSERT_TRUE(testing::WriteStringToFile(dir.File("config.json"), kReal80B).ok());
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir.File("config.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_experts, 512);
}

}  // namespace
}  // namespace nextserve
