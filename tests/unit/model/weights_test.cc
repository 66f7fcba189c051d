#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

#include "gtest/gtest.h"
#include "tests/unit/model/status_matchers.h"
#include "tests/unit/model/tiny_checkpoint.h"

namespace nextserve {
namespace {

using ::nextserve::testing::FindTensor;
using ::nextserve::testing::IsError;
using ::nextserve::testing::TempDir;
using ::nextserve::testing::TinyCheckpointOptions;
using ::nextserve::testing::TinyConfig;
using ::nextserve::testing::TinyTensor;
using ::nextserve::testing::WriteTinyCheckpoint;
constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kNotFound = absl::StatusCode::kNotFound;
constexpr auto kUnimplemented = absl::StatusCode::kUnimplemented;

float Stored(const TinyTensor& t, size_t i) {
  // The value the checkpoint holds after rounding to the stored dtype.
  switch (t.dtype) {
    case DType::kF16:
      return F16ToF32(F32ToF16(t.values[i]));
    case DType::kBF16:
      return Bf16ToF32(F32ToBf16(t.values[i]));
    default:
      return t.values[i];
  }
}

float At(const WeightRef& w, int64_t r, int64_t c) {
  float out;
  const size_t esize = DTypeSize(w.dtype);
  ConvertToF32(w.dtype, static_cast<const char*>(w.data) + (r * w.cols + c) * esize, &out, 1);
  return out;
}

// Checks a bound weight against the generated tensor, element by element.
void ExpectMatches(const WeightRef& w, const TinyTensor& t) {
  ASSERT_TRUE(w.present()) << t.name;
  ASSERT_EQ(w.rows * w.cols, static_cast<int64_t>(t.values.size())) << t.name;
  for (int64_t i = 0; i < w.rows * w.cols; ++i) {
    ASSERT_EQ(At(w, i / w.cols, i % w.cols), Stored(t, i)) << t.name << " element " << i;
  }
}

TinyCheckpointOptions NoConfig() {
  TinyCheckpointOptions o;
  o.write_config = false;
  return o;
}

std::unique_ptr<ModelWeights> LoadOk(const std::string& dir, const LoadOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Load(dir, options);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? *std::move(w) : nullptr;
}

absl::Status LoadStatus(const std::string& dir, const LoadOptions& options = {}) {
  return ModelWeights::Load(dir, options).status();
}

class WeightsDtypeTest : public ::testing::TestWithParam<std::pair<DType, DType>> {};

TEST_P(WeightsDtypeTest, RoundTripBindsEveryTensor) {
  const auto [dtype, small_dtype] = GetParam();
  TempDir dir;
  const ModelConfig config = TinyConfig();
  TinyCheckpointOptions opt;
  opt.dtype = dtype;
  opt.small_dtype = small_dtype;
  opt.seed = 42;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), config, opt).ok());
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path());
  ASSERT_NE(w, nullptr);
  std::vector<TinyTensor> want = testing::MakeTinyTensors(config, dtype, small_dtype, 42);
  auto t = [&](const std::string& name) -> const TinyTensor& {
    TinyTensor* p = FindTensor(want, name);
    EXPECT_NE(p, nullptr) << name;
    return *p;
  };
  EXPECT_EQ(w->stored_dtype, dtype);
  EXPECT_EQ(w->skipped_mtp_tensors, 0u);
  EXPECT_EQ(w->config().hidden_size, config.hidden_size);
  ExpectMatches(w->embed_tokens, t("model.embed_tokens.weight"));
  EXPECT_EQ(w->embed_tokens.rows, config.vocab_size);
  EXPECT_EQ(w->embed_tokens.cols, config.hidden_size);
  EXPECT_EQ(w->embed_tokens.dtype, dtype);
  ExpectMatches(w->lm_head, t("lm_head.weight"));
  ExpectMatches(w->final_norm, t("model.norm.weight"));
  EXPECT_EQ(w->final_norm.dtype, DType::kF32);
  ASSERT_EQ(w->layers.size(), 4u);
  ASSERT_EQ(w->owns_expert, std::vector<bool>(8, true));
  for (int i = 0; i < 4; ++i) {
    const LayerWeights& L = w->layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    ExpectMatches(L.input_layernorm, t(p + "input_layernorm.weight"));
    ExpectMatches(L.post_attention_layernorm, t(p + "post_attention_layernorm.weight"));
    EXPECT_EQ(L.input_layernorm.dtype, DType::kF32);
    EXPECT_EQ(L.input_layernorm.rows, 1);
    if (i == 3) {
      EXPECT_EQ(L.type, LayerType::kFullAttention);
      ExpectMatches(L.attention.q_proj, t(p + "self_attn.q_proj.weight"));
      EXPECT_EQ(L.attention.q_proj.rows, 2 * 4 * 16);
      ExpectMatches(L.attention.k_proj, t(p + "self_attn.k_proj.weight"));
      ExpectMatches(L.attention.v_proj, t(p + "self_attn.v_proj.weight"));
      ExpectMatches(L.attention.o_proj, t(p + "self_attn.o_proj.weight"));
      EXPECT_EQ(L.attention.o_proj.cols, 4 * 16);
      ExpectMatches(L.attention.q_norm, t(p + "self_attn.q_norm.weight"));
      ExpectMatches(L.attention.k_norm, t(p + "self_attn.k_norm.weight"));
      EXPECT_FALSE(L.delta_net.in_proj_qkvz.present());
    } else {
      EXPECT_EQ(L.type, LayerType::kLinearAttention);
      const DeltaNetWeights& d = L.delta_net;
      ExpectMatches(d.in_proj_qkvz, t(p + "linear_attn.in_proj_qkvz.weight"));
      EXPECT_EQ(d.in_proj_qkvz.rows, 2 * 16 + 2 * 48);
      ExpectMatches(d.in_proj_ba, t(p + "linear_attn.in_proj_ba.weight"));
      EXPECT_EQ(d.in_proj_ba.rows, 8);
      ExpectMatches(d.conv1d, t(p + "linear_attn.conv1d.weight"));
      EXPECT_EQ(d.conv1d.rows, config.linear_conv_dim());
      EXPECT_EQ(d.conv1d.cols, 4);
      EXPECT_EQ(d.conv1d.dtype, DType::kF32);
      ExpectMatches(d.dt_bias, t(p + "linear_attn.dt_bias"));
      ExpectMatches(d.A_log, t(p + "linear_attn.A_log"));
      ExpectMatches(d.norm, t(p + "linear_attn.norm.weight"));
      ExpectMatches(d.out_proj, t(p + "linear_attn.out_proj.weight"));
      EXPECT_EQ(d.out_proj.cols, 48);
      EXPECT_FALSE(L.attention.q_proj.present());
    }
    ASSERT_TRUE(L.is_moe);
    EXPECT_FALSE(L.mlp.present());
    ExpectMatches(L.moe.router, t(p + "mlp.gate.weight"));
    ASSERT_EQ(L.moe.experts.size(), 8u);
    for (int e = 0; e < 8; ++e) {
      const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
      ExpectMatches(L.moe.experts[e].gate_proj, t(ep + "gate_proj.weight"));
      ExpectMatches(L.moe.experts[e].up_proj, t(ep + "up_proj.weight"));
      ExpectMatches(L.moe.experts[e].down_proj, t(ep + "down_proj.weight"));
      EXPECT_EQ(L.moe.experts[e].down_proj.rows, 64);
      EXPECT_EQ(L.moe.experts[e].down_proj.cols, 24);
    }
    ExpectMatches(L.moe.shared_expert.gate_proj, t(p + "mlp.shared_expert.gate_proj.weight"));
    ExpectMatches(L.moe.shared_expert.down_proj, t(p + "mlp.shared_expert.down_proj.weight"));
    ExpectMatches(L.moe.shared_expert_gate, t(p + "mlp.shared_expert_gate.weight"));
    EXPECT_EQ(L.moe.shared_expert_gate.rows, 1);
  }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, WeightsDtypeTest,
                         ::testing::Values(std::pair{DType::kF32, DType::kF32},
                                           std::pair{DType::kF16, DType::kF16},
                                           std::pair{DType::kBF16, DType::kBF16},
                                           std::pair{DType::kBF16, DType::kF32}));

TEST(WeightsTest, LargeMatricesPointIntoTheMapping) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig()).ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  std::shared_ptr<const Checkpoint> shared(std::move(*ck));
  const TensorInfo* info = shared->Find("model.layers.0.mlp.experts.5.up_proj.weight");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.File("config.json"));
  ASSERT_TRUE(config.ok());
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Bind(shared, *config);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->layers[0].moe.experts[5].up_proj.data, info->data);
  // The weights keep the checkpoint (and its mappings) alive.
  std::weak_ptr<const Checkpoint> weak = shared;
  shared.reset();
  EXPECT_FALSE(weak.expired());
  w->reset();
  EXPECT_TRUE(weak.expired());
}

TEST(WeightsTest, ShardedCheckpoint) {
  TempDir dir;
  TinyCheckpointOptions opt;
  opt.num_shards = 4;
  opt.include_mtp = true;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig(), opt).ok());
  ASSERT_TRUE(std::filesystem::exists(dir.File("model-00004-of-00004.safetensors")));
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path());
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->skipped_mtp_tensors, 3u);
  EXPECT_TRUE(w->layers[3].attention.q_proj.present());
}

TEST(WeightsTest, MtpTensorsAreSkipped) {
  TempDir dir;
  TinyCheckpointOptions opt;
  opt.include_mtp = true;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig(), opt).ok());
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path());
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->skipped_mtp_tensors, 3u);
}

TEST(WeightsTest, ExpertSubset) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig()).ok());
  LoadOptions opt;
  opt.experts = std::vector<int64_t>{6, 1};
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path(), opt);
  ASSERT_NE(w, nullptr);
  const std::vector<bool> owns = {false, true, false, false, false, false, true, false};
  EXPECT_EQ(w->owns_expert, owns);
  for (const LayerWeights& L : w->layers) {
    ASSERT_EQ(L.moe.experts.size(), 8u);
    for (int e = 0; e < 8; ++e) {
      EXPECT_EQ(L.moe.experts[e].present(), owns[e]) << e;
      EXPECT_EQ(L.moe.experts[e].down_proj.present(), owns[e]) << e;
    }
    EXPECT_TRUE(L.moe.router.present());
    EXPECT_TRUE(L.moe.shared_expert.present());
  }
  opt.experts = std::vector<int64_t>{};
  w = LoadOk(dir.path(), opt);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->owns_expert, std::vector<bool>(8, false));
}

TEST(WeightsTest, ExpertSubsetStillChecksOtherExpertsHeaders) {
  TempDir dir;
  TinyCheckpointOptions opt;
  opt.edit = [](std::vector<TinyTensor>& ts) {
    TinyTensor* t = FindTensor(ts, "model.layers.2.mlp.experts.7.down_proj.weight");
    t->shape = {64, 23};
    t->values.resize(64 * 23);
  };
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig(), opt).ok());
  LoadOptions lo;
  lo.experts = std::vector<int64_t>{0};
  EXPECT_TRUE(IsError(LoadStatus(dir.path(), lo), kInvalid,
                      {"model.layers.2.mlp.experts.7.down_proj.weight", "[64, 23]", "[64, 24]"}));
}

TEST(WeightsTest, BadExpertIds) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig()).ok());
  LoadOptions opt;
  opt.experts = std::vector<int64_t>{0, 8};
  EXPECT_TRUE(IsError(LoadStatus(dir.path(), opt), kInvalid, {"expert id 8", "[0, 8)"}));
  opt.experts = std::vector<int64_t>{-1};
  EXPECT_TRUE(IsError(LoadStatus(dir.path(), opt), kInvalid, {"expert id -1"}));
  opt.experts = std::vector<int64_t>{3, 3};
  EXPECT_TRUE(IsError(LoadStatus(dir.path(), opt), kInvalid, {"expert id 3", "twice"}));
}

TEST(WeightsTest, MissingTensor) {
  TempDir dir;
  TinyCheckpointOptions opt;
  opt.edit = [](std::vector<TinyTensor>& ts) {
    std::erase_if(ts,
                  [](const TinyTensor& t) { return t.name == "model.layers.1.linear_attn.A_log"; });
  };
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig(), opt).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kNotFound,
                      {"model.layers.1.linear_attn.A_log", "missing", dir.path()}));
}

TEST(WeightsTest, UnexpectedTensor) {
  TempDir dir;
  TinyCheckpointOptions opt;
  opt.edit = [](std::vector<TinyTensor>& ts) {
    ts.push_back({"model.layers.0.self_attn.q_proj.bias", DType::kBF16, {4}, {0, 0, 0, 0}, {}});
  };
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig(), opt).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid,
                      {"unexpected tensor", "model.layers.0.self_attn.q_proj.bias",
                       dir.File("model.safetensors")}));
}

TEST(WeightsTest, WrongShape) {
  TempDir dir;
  TinyCheckpointOptions opt;
  opt.edit = [](std::vector<TinyTensor>& ts) {
    TinyTensor* t = FindTensor(ts, "model.layers.3.self_attn.q_proj.weight");
    t->shape = {64, 128};  // transposed
  };
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig(), opt).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid,
                      {"model.layers.3.self_attn.q_proj.weight", "[64, 128]", "[128, 64]",
                       dir.File("model.safetensors")}));
}

TEST(WeightsTest, ConvWeightMustKeepItsMiddleDimension) {
  TempDir dir;
  TinyCheckpointOptions opt;
  opt.edit = [](std::vector<TinyTensor>& ts) {
    TinyTensor* t = FindTensor(ts, "model.layers.0.linear_attn.conv1d.weight");
    t->shape = {t->shape[0], t->shape[2]};
  };
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig(), opt).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid,
                      {"model.layers.0.linear_attn.conv1d.weight", "[80, 1, 4]", "[80, 4]"}));
}

TEST(WeightsTest, MixedLargeDtypes) {
  TempDir dir;
  TinyCheckpointOptions opt;
  opt.edit = [](std::vector<TinyTensor>& ts) {
    FindTensor(ts, "model.layers.2.mlp.experts.3.up_proj.weight")->dtype = DType::kF16;
  };
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig(), opt).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid,
                      {"model.layers.2.mlp.experts.3.up_proj.weight", "F16", "BF16",
                       dir.File("model.safetensors")}));
}

// A config whose matrices span several 128x128 blocks, some partial, quantised like the official
// Qwen3-Next FP8 release: lm_head, the routers, the shared-expert gates and in_proj_ba unquantised.
ModelConfig Fp8Config() {
  ModelConfig c = TinyConfig();
  c.hidden_size = 160;                      // 2 column blocks, the second partial
  c.shared_expert_intermediate_size = 136;  // shared down_proj: 2 x 2 blocks
  c.quantization.fp8 = true;
  c.quantization.modules_to_not_convert = {"lm_head"};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const char* m : {"mlp.gate", "mlp.shared_expert_gate", "linear_attn.in_proj_ba"}) {
      c.quantization.modules_to_not_convert.push_back(p + m);
    }
  }
  return c;
}

TinyCheckpointOptions Fp8Options(std::function<void(std::vector<TinyTensor>&)> after = {}) {
  TinyCheckpointOptions opt;
  opt.seed = 7;
  const ModelConfig c = Fp8Config();
  opt.edit = [c, after](std::vector<TinyTensor>& ts) {
    testing::QuantizeToFp8(c, ts);
    if (after) after(ts);
  };
  return opt;
}

TEST(WeightsFp8Test, BindsFp8AndUnconvertedModules) {
  TempDir dir;
  const ModelConfig config = Fp8Config();
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), config, Fp8Options()).ok());
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path());
  ASSERT_NE(w, nullptr);
  EXPECT_TRUE(w->config().quantization.fp8);
  EXPECT_EQ(w->stored_dtype, DType::kF8E4M3);
  EXPECT_EQ(w->unquantized_dtype, DType::kBF16);
  EXPECT_EQ(w->embed_tokens.dtype, DType::kBF16);
  EXPECT_EQ(w->lm_head.dtype, DType::kBF16);
  const LayerWeights& l0 = w->layers[0];
  EXPECT_EQ(l0.delta_net.in_proj_ba.dtype, DType::kBF16);
  EXPECT_EQ(l0.moe.router.dtype, DType::kBF16);
  EXPECT_EQ(l0.moe.shared_expert_gate.dtype, DType::kBF16);
  EXPECT_EQ(l0.delta_net.in_proj_qkvz.dtype, DType::kF8E4M3);
  EXPECT_EQ(w->layers[3].attention.q_proj.dtype, DType::kF8E4M3);

  // Every FP8 element dequantises (fp8 * its block's scale) to the value the writer intended.
  std::vector<TinyTensor> want = testing::MakeTinyTensors(config, DType::kBF16, DType::kF32, 7);
  testing::QuantizeToFp8(config, want);
  const WeightRef& down = l0.moe.shared_expert.down_proj;  // [160, 136]: 2 x 2 blocks
  ASSERT_EQ(down.dtype, DType::kF8E4M3);
  ASSERT_NE(down.block_scale, nullptr);
  const TinyTensor* t = FindTensor(want, "model.layers.0.mlp.shared_expert.down_proj.weight");
  ASSERT_NE(t, nullptr);
  const TinyTensor* sc = FindTensor(want, t->name + "_scale_inv");
  ASSERT_NE(sc, nullptr);
  ASSERT_EQ(sc->shape, (std::vector<int64_t>{2, 2}));
  for (int b = 0; b < 4; ++b) EXPECT_EQ(down.block_scale[b], sc->values[b]) << b;
  int64_t nonzero = 0;
  for (int64_t r = 0; r < down.rows; ++r) {
    for (int64_t c = 0; c < down.cols; ++c) {
      const uint8_t q = static_cast<const uint8_t*>(down.data)[r * down.cols + c];
      const float got = F8E4M3ToF32(q) * down.block_scale[(r / 128) * 2 + c / 128];
      ASSERT_EQ(got, t->values[r * down.cols + c]) << r << "," << c;
      nonzero += got != 0;
    }
  }
  EXPECT_GT(nonzero, down.rows * down.cols * 9 / 10);
}

TEST(WeightsFp8Test, Bf16ScalesAreAccepted) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), Fp8Config(), Fp8Options([](auto& ts) {
                                    for (TinyTensor& t : ts)
                                      if (t.name.find("_scale_inv") != std::string::npos)
                                        t.dtype = DType::kBF16;
                                  }))
                  .ok());
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path());
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->layers[0].delta_net.out_proj.dtype, DType::kF8E4M3);
}

TEST(WeightsFp8Test, MissingScale) {
  TempDir dir;
  const std::string name = "model.layers.0.linear_attn.out_proj.weight_scale_inv";
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), Fp8Config(), Fp8Options([&](auto& ts) {
                                    ts.erase(
                                        std::remove_if(ts.begin(), ts.end(),
                                                       [&](auto& t) { return t.name == name; }),
                                        ts.end());
                                  }))
                  .ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kNotFound,
                      {name, "[2, 1]", "model.layers.0.linear_attn.out_proj.weight",
                       dir.File("model.safetensors")}));
}

TEST(WeightsFp8Test, WrongScaleShape) {
  TempDir dir;
  const std::string name = "model.layers.3.self_attn.o_proj.weight_scale_inv";
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), Fp8Config(), Fp8Options([&](auto& ts) {
                                    TinyTensor* t = FindTensor(ts, name);
                                    t->shape = {1, 2};
                                  }))
                  .ok());
  EXPECT_TRUE(
      IsError(LoadStatus(dir.path()), kInvalid,
              {name, "[1, 2]", "expected [2, 1]", "128x128", dir.File("model.safetensors")}));
}

TEST(WeightsFp8Test, NonFiniteScale) {
  TempDir dir;
  const std::string name = "model.layers.3.self_attn.o_proj.weight_scale_inv";
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), Fp8Config(), Fp8Options([&](auto& ts) {
                                    FindTensor(ts, name)->values[1] = INFINITY;
                                  }))
                  .ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid, {name, "non-finite", "block 1, 0"}));
}

TEST(WeightsFp8Test, UnquantisedWhereFp8Expected) {
  TempDir dir;
  const std::string name = "model.layers.2.mlp.experts.5.up_proj.weight";
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), Fp8Config(), Fp8Options([&](auto& ts) {
                                    TinyTensor* t = FindTensor(ts, name);
                                    t->dtype = DType::kBF16;
                                    t->raw_bytes.clear();
                                  }))
                  .ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid,
                      {name, "BF16", "expected F8_E4M3", "modules_to_not_convert"}));
}

TEST(WeightsFp8Test, Fp8WhereModulesToNotConvertSaysNo) {
  TempDir dir;
  ModelConfig c = Fp8Config();
  c.quantization.modules_to_not_convert.push_back("model.layers.1.linear_attn.out_proj");
  TinyCheckpointOptions opt = Fp8Options();
  opt.edit = [](std::vector<TinyTensor>& ts) { testing::QuantizeToFp8(Fp8Config(), ts); };
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), c, opt).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid,
                      {"model.layers.1.linear_attn.out_proj.weight", "F8_E4M3",
                       "modules_to_not_convert lists it"}));
}

TEST(WeightsFp8Test, Fp8TensorsWithoutQuantizationConfig) {
  TempDir dir;
  ModelConfig plain = Fp8Config();
  plain.quantization = {};
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), plain, Fp8Options()).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid,
                      {"model.layers.0.linear_attn.in_proj_qkvz.weight", "FP8",
                       "quantization_config", dir.File("model.safetensors")}));
}

TEST(WeightsFp8Test, UnownedExpertsScalesAreCheckedNotRead) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), Fp8Config(), Fp8Options()).ok());
  LoadOptions only;
  only.experts = std::vector<int64_t>{1, 6};
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path(), only);
  ASSERT_NE(w, nullptr);
  EXPECT_FALSE(w->layers[0].moe.experts[0].present());
  EXPECT_EQ(w->layers[0].moe.experts[6].gate_proj.dtype, DType::kF8E4M3);
  EXPECT_NE(w->layers[0].moe.experts[6].gate_proj.block_scale, nullptr);
}

TEST(WeightsTest, ConfigContradictsTensors) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig()).ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok());
  std::shared_ptr<const Checkpoint> shared(std::move(*ck));
  ModelConfig c = TinyConfig();
  c.hidden_size = 32;
  EXPECT_TRUE(IsError(ModelWeights::Bind(shared, c), kInvalid,
                      {"model.embed_tokens.weight", "[96, 64]", "[96, 32]"}));
  c = TinyConfig();
  c.num_hidden_layers = 3;
  c.layer_types.resize(3);
  EXPECT_TRUE(
      IsError(ModelWeights::Bind(shared, c), kInvalid, {"unexpected tensor", "model.layers.3."}));
  c = TinyConfig();
  c.num_experts = 16;
  EXPECT_TRUE(IsError(ModelWeights::Bind(shared, c), kInvalid,
                      {"model.layers.0.mlp.gate.weight", "[16, 64]"}));
  c = TinyConfig();
  c.layer_types[0] = LayerType::kFullAttention;
  EXPECT_TRUE(IsError(ModelWeights::Bind(shared, c), kNotFound,
                      {"model.layers.0.self_attn.q_proj.weight"}));
  c = TinyConfig();
  c.layer_types.clear();
  EXPECT_TRUE(IsError(ModelWeights::Bind(shared, c), kInvalid, {"layer_types"}));
  EXPECT_TRUE(IsError(ModelWeights::Bind(nullptr, TinyConfig()), kInvalid, {"null"}));
}

TEST(WeightsTest, DenseMlpLayers) {
  TempDir dir;
  ModelConfig c = TinyConfig();
  c.decoder_sparse_step = 2;  // layers 1 and 3 sparse
  c.mlp_only_layers = {3};    // ... but 3 dense
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), c).ok());
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path());
  ASSERT_NE(w, nullptr);
  const bool moe[] = {false, true, false, false};
  for (int i = 0; i < 4; ++i) {
    const LayerWeights& L = w->layers[i];
    EXPECT_EQ(L.is_moe, moe[i]) << i;
    EXPECT_EQ(L.mlp.present(), !moe[i]) << i;
    if (!moe[i]) {
      EXPECT_EQ(L.mlp.gate_proj.rows, c.intermediate_size);
      EXPECT_EQ(L.mlp.down_proj.cols, c.intermediate_size);
      EXPECT_TRUE(L.moe.experts.empty());
    }
  }
  // The dense naming is mlp.{gate,up,down}_proj: a MoE-named layer where dense is expected fails.
  TempDir dir2;
  ModelConfig moe_everywhere = TinyConfig();
  ASSERT_TRUE(WriteTinyCheckpoint(dir2.path(), moe_everywhere, NoConfig()).ok());
  ASSERT_TRUE(testing::WriteStringToFile(dir2.File("config.json"), ModelConfigToJson(c)).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir2.path()), kNotFound, {"model.layers.0.mlp.gate_proj.weight"}));
}

TEST(WeightsTest, TiedEmbeddings) {
  TempDir dir;
  ModelConfig c = TinyConfig();
  c.tie_word_embeddings = true;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), c).ok());
  std::unique_ptr<ModelWeights> w = LoadOk(dir.path());
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->lm_head.data, w->embed_tokens.data);
  EXPECT_EQ(w->lm_head.rows, c.vocab_size);
  // An untied checkpoint loaded with a tied config: lm_head.weight is unexpected.
  TempDir dir2;
  ASSERT_TRUE(WriteTinyCheckpoint(dir2.path(), TinyConfig(), NoConfig()).ok());
  ASSERT_TRUE(testing::WriteStringToFile(dir2.File("config.json"), ModelConfigToJson(c)).ok());
  EXPECT_TRUE(
      IsError(LoadStatus(dir2.path()), kInvalid, {"lm_head.weight", "tie_word_embeddings"}));
  // And the reverse: an untied config needs lm_head.weight.
  TempDir dir3;
  ASSERT_TRUE(WriteTinyCheckpoint(dir3.path(), c, NoConfig()).ok());
  ASSERT_TRUE(
      testing::WriteStringToFile(dir3.File("config.json"), ModelConfigToJson(TinyConfig())).ok());
  EXPECT_TRUE(IsError(LoadStatus(dir3.path()), kNotFound, {"lm_head.weight", dir3.path()}));
}

TEST(WeightsTest, LoadErrorsNameTheFile) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyCheckpoint(dir.path(), TinyConfig()).ok());
  // Bad config.json.
  ASSERT_TRUE(testing::WriteStringToFile(dir.File("config.json"), "{\"hidden_size\": true}").ok());
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kInvalid, {dir.File("config.json"), "hidden_size"}));
  std::filesystem::remove(dir.File("config.json"));
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), kNotFound, {dir.File("config.json")}));
  // Truncated weights.
  ASSERT_TRUE(
      testing::WriteStringToFile(dir.File("config.json"), ModelConfigToJson(TinyConfig())).ok());
  const std::string st = dir.File("model.safetensors");
  std::filesystem::resize_file(st, std::filesystem::file_size(st) - 1);
  EXPECT_TRUE(IsError(LoadStatus(dir.path()), absl::StatusCode::kDataLoss, {st, "truncated"}));
}

}  // namespace
}  // namespace nextserve
