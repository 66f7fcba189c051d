// The forward pass on a block-scaled FP8 checkpoint equals the same model stored in fp32 with the
// dequantised weights (fp8 * block scale): prefill rows (GEMM tile path) and decode rows
// (few-rows kernel), with matrices of several 128x128 blocks, partial ones included.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/qwen3_next.h"
#include "model/weights.h"
#include "tests/unit/model/tiny_checkpoint.h"

namespace nextserve {
namespace {

using testing::TempDir;
using testing::TinyCheckpointOptions;
using testing::TinyTensor;

ModelConfig Fp8Config() {
  ModelConfig c = testing::TinyConfig();
  c.hidden_size = 160;
  c.shared_expert_intermediate_size = 136;
  c.quantization.fp8 = true;
  c.quantization.modules_to_not_convert = {"lm_head", "mlp.gate", "mlp.shared_expert_gate",
                                           "linear_attn.in_proj_ba"};
  return c;
}

// Logits of every position of `prompt`, then of `decode` more tokens fed one at a time.
std::vector<float> ForwardLogits(const std::string& dir, const std::vector<int32_t>& prompt,
                                 int decode) {
  auto weights = ModelWeights::Load(dir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return {};
  auto backend = kernels::MakeCpuBackend();
  Qwen3NextModel model(std::move(*weights), backend.get());
  auto state = model.NewSequence();
  SequenceInput in{state.get(), prompt, true};
  auto out = model.Forward({&in, 1});
  EXPECT_TRUE(out.ok()) << out.status();
  std::vector<float> all = *out;
  for (int i = 0; i < decode; ++i) {
    const std::vector<int32_t> tok = {static_cast<int32_t>((7 * i + 3) % 96)};
    SequenceInput step{state.get(), tok, true};
    auto o = model.Forward({&step, 1});
    EXPECT_TRUE(o.ok()) << o.status();
    all.insert(all.end(), o->begin(), o->end());
  }
  return all;
}

TEST(EngineFp8Test, EqualsDequantisedFp32Model) {
  const ModelConfig fp8_config = Fp8Config();
  TempDir fp8_dir, f32_dir;
  TinyCheckpointOptions fp8;
  fp8.seed = 11;
  fp8.edit = [&](std::vector<TinyTensor>& ts) { testing::QuantizeToFp8(fp8_config, ts); };
  ASSERT_TRUE(testing::WriteTinyCheckpoint(fp8_dir.path(), fp8_config, fp8).ok());
  // The same values in fp32: QuantizeToFp8 leaves the dequantised weights in `values`.
  ModelConfig plain = fp8_config;
  plain.quantization = {};
  TinyCheckpointOptions f32;
  f32.seed = 11;
  f32.edit = [&](std::vector<TinyTensor>& ts) {
    testing::QuantizeToFp8(fp8_config, ts);
    std::vector<TinyTensor> kept;
    for (TinyTensor& t : ts) {
      if (t.name.find("_scale_inv") != std::string::npos) continue;
      if (t.dtype == DType::kBF16) {  // the unquantised matrices: keep their bf16 rounding
        for (float& v : t.values) v = Bf16ToF32(F32ToBf16(v));
      }
      if (t.shape.size() == 2) t.dtype = DType::kF32;
      t.raw_bytes.clear();
      kept.push_back(std::move(t));
    }
    ts = std::move(kept);
  };
  ASSERT_TRUE(testing::WriteTinyCheckpoint(f32_dir.path(), plain, f32).ok());

  std::vector<int32_t> prompt(40);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 37 + 5) % 96);
  const std::vector<float> got = ForwardLogits(fp8_dir.path(), prompt, 6);
  const std::vector<float> want = ForwardLogits(f32_dir.path(), prompt, 6);
  ASSERT_EQ(got.size(), want.size());
  ASSERT_EQ(got.size(), (40u + 6u) * 96u);
  float lo = want[0], hi = want[0], worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    lo = std::min(lo, want[i]);
    hi = std::max(hi, want[i]);
    worst = std::max(worst, std::abs(got[i] - want[i]));
  }
  ASSERT_GT(hi - lo, 1e-3f);  // the logits are not flat
  EXPECT_LE(worst, 1e-4f * (hi - lo)) << "range " << hi - lo;
}

}  // namespace
}  // namespace nextserve
