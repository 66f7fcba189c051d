// `nextserve plan` against figures computed by hand for the micro and small presets.
#include "cli/plan.h"

#include <cstdlib>

#include "gtest/gtest.h"
#include "tools/random_checkpoint.h"

namespace nextserve::cli {
namespace {

ModelConfig Preset(const std::string& name) {
  absl::StatusOr<ModelConfig> c = PresetConfig(name);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// micro: vocab 512, hidden 64, layers L L L F, 8 experts of 32, shared expert 32, bf16.
//   embed + lm_head: 2 * 512 * 64 = 65536 elements
//   linear layer: qkvz (2*32 + 2*64) x 64 = 12288, ba 8 x 64 = 512, out 64 x 64 = 4096
//   full layer: q 256 x 64 = 16384, k 64 x 64 = 4096, v 4096, o 64 x 128 = 8192
//   every layer: router 8 x 64 = 512, shared expert 3 * 32 * 64 = 6144, shared gate 64
//   backbone: 65536 + 3 * (16896 + 6720) + (32768 + 6720) = 175872 -> 351744 B in bf16
//   routed experts: 4 layers * E * 6144 elements -> 12288 B per expert and layer in bf16
//   fp32 small: final norm 64 + 4 * 128 norms + 3 * (conv 128*4 + 4 + 4 + 16) + 64 = 2248 -> 8992 B
TEST(PlanTest, MicroBf16ByHand) {
  const ModelConfig c = Preset("micro");
  PlanOptions o;
  o.ranks = {1, 2, 8};
  o.gpu_memory_bytes = 100'000'000;
  o.memory_utilization = 0.5;
  o.context = 1000;
  absl::StatusOr<MemoryPlan> p = ComputePlan(c, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_FALSE(p->fp8);
  EXPECT_EQ(p->kv_bytes_per_token, 1 * 2 * 2 * 32 * 4);                     // 512
  EXPECT_EQ(p->state_bytes_per_sequence, 3 * (4 * 16 * 16 + 3 * 128) * 4);  // 16896
  ASSERT_EQ(p->ranks.size(), 3u);
  const int64_t experts_bytes[] = {8 * 4 * 12288, 4 * 4 * 12288, 1 * 4 * 12288};
  for (int i = 0; i < 3; ++i) {
    const RankPlan& r = p->ranks[i];
    EXPECT_EQ(r.weights.f8, 0);
    EXPECT_EQ(r.weights.f8_scales, 0);
    EXPECT_EQ(r.weights.unquantized, 351744 + experts_bytes[i]) << r.ranks;
    EXPECT_EQ(r.weights.f32_small, 8992);
    const int64_t free = 50'000'000 - r.weights.total();
    EXPECT_EQ(r.free_bytes, free);
    EXPECT_EQ(r.sequences_at_context, free / (16896 + 1000 * 512));
    EXPECT_EQ(r.max_context_one_sequence, (free - 16896) / 512);
  }
  EXPECT_EQ(p->ranks[0].weights.total(), 351744 + 393216 + 8992);  // 753952
}

// The same model as an FP8 checkpoint that leaves lm_head, the routers, the shared-expert gates
// and in_proj_ba unquantised (as the official release does). Every FP8 matrix is one 128x128
// block except qkvz (192 rows) and q_proj (256 rows): two blocks each.
//   FP8 per linear layer: qkvz 12288 + out 4096 + shared 6144 = 22528 elements, 2 + 1 + 3 scales
//   FP8 full layer: 32768 + 6144 = 38912 elements, 2 + 1 + 1 + 1 + 3 scales
//   routed experts: 8 * 6144 = 49152 elements and 24 scales per layer (all 8 on one rank)
//   bf16: embed + lm_head 65536 + 4 * (router 512 + shared gate 64) + 3 * ba 512 = 69376 elements
TEST(PlanTest, MicroFp8ByHand) {
  ModelConfig c = Preset("micro");
  c.quantization.fp8 = true;
  c.quantization.modules_to_not_convert = {"lm_head", "mlp.gate", "mlp.shared_expert_gate",
                                           "linear_attn.in_proj_ba"};
  PlanOptions o;
  o.ranks = {1, 4};
  o.gpu_memory_bytes = 1 << 30;
  absl::StatusOr<MemoryPlan> p = ComputePlan(c, o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->fp8);
  const RankPlan& one = p->ranks[0];
  EXPECT_EQ(one.weights.f8, 3 * 22528 + 38912 + 4 * 49152);    // 303104 B
  EXPECT_EQ(one.weights.f8_scales, (3 * 6 + 8 + 4 * 24) * 4);  // 488 B
  EXPECT_EQ(one.weights.unquantized, 69376 * 2);
  EXPECT_EQ(one.weights.f32_small, 8992);
  const RankPlan& four = p->ranks[1];
  EXPECT_EQ(four.experts_on_rank, 2);
  EXPECT_EQ(four.weights.f8, 3 * 22528 + 38912 + 4 * 2 * 6144);
  EXPECT_EQ(four.weights.f8_scales, (3 * 6 + 8 + 4 * 6) * 4);
}

// small: 8 layers (F at 3 and 7), kv 2 x 256; DeltaNet 16 value heads of 128 x 128, conv_dim 4096.
TEST(PlanTest, SmallCachesByHand) {
  absl::StatusOr<MemoryPlan> p = ComputePlan(Preset("small"), {.gpu_memory_bytes = 1LL << 34});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->kv_bytes_per_token, 2 * 2 * 2 * 256 * 4);                        // 8192
  EXPECT_EQ(p->state_bytes_per_sequence, 6 * (16 * 128 * 128 + 3 * 4096) * 4);  // 6586368
}

// The committed configs of the real 80B model: FP8 halves every quantised matrix and leaves the
// rest as in bf16, and it is the variant that fits one H200 (141 GiB).
TEST(PlanTest, Real80BConfigsBf16AndFp8) {
  const char* src = std::getenv("NEXTSERVE_SOURCE_DIR");
  const std::string root = std::string(src ? src : ".") + "/tools/configs/";
  absl::StatusOr<ModelConfig> bf16 =
      LoadModelConfig(root + "qwen3-next-80b-a3b-instruct/config.json");
  absl::StatusOr<ModelConfig> fp8 =
      LoadModelConfig(root + "qwen3-next-80b-a3b-instruct-fp8/config.json");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  ASSERT_TRUE(fp8->quantization.fp8);
  PlanOptions o;
  o.ranks = {1, 8};
  o.gpu_memory_bytes = 141LL << 30;
  absl::StatusOr<MemoryPlan> a = ComputePlan(*bf16, o), b = ComputePlan(*fp8, o);
  ASSERT_TRUE(a.ok() && b.ok());
  for (int i = 0; i < 2; ++i) {
    const WeightBytes& x = a->ranks[i].weights;
    const WeightBytes& y = b->ranks[i].weights;
    EXPECT_EQ(2 * y.f8 + y.unquantized, x.unquantized);
    EXPECT_EQ(x.f32_small, y.f32_small);
    EXPECT_GT(y.f8, 5 * y.unquantized);  // experts and projections are the bulk
  }
  // 79.7e9 parameters without the MTP head (that the forward pass does not load).
  EXPECT_NEAR(a->ranks[0].weights.unquantized / 2 / 1e9, 79.7, 0.1);
  EXPECT_LT(a->ranks[0].free_bytes, 0);
  EXPECT_GT(b->ranks[0].free_bytes, 0);
  EXPECT_EQ(a->kv_bytes_per_token, 12 * 2 * 2 * 256 * 4);
  EXPECT_EQ(a->state_bytes_per_sequence, 36 * (32 * 128 * 128 + 3 * 8192) * 4);
}

TEST(PlanTest, DoesNotFitAndBadInput) {
  PlanOptions o;
  o.gpu_memory_bytes = 100'000;  // below micro's weights
  absl::StatusOr<MemoryPlan> p = ComputePlan(Preset("micro"), o);
  ASSERT_TRUE(p.ok());
  EXPECT_LT(p->ranks[0].free_bytes, 0);
  EXPECT_EQ(p->ranks[0].sequences_at_context, 0);
  EXPECT_NE(FormatPlan(Preset("micro"), *p, o).find("no fit"), std::string::npos);
  o.ranks = {9};  // more ranks than experts
  EXPECT_FALSE(ComputePlan(Preset("micro"), o).ok());
  EXPECT_EQ(*ParseByteSize("141GiB"), 141LL << 30);
  EXPECT_EQ(*ParseByteSize("80GB"), 80'000'000'000LL);
  EXPECT_EQ(*ParseByteSize("4096"), 4096);
  EXPECT_FALSE(ParseByteSize("lots").ok());
  EXPECT_FALSE(ParseByteSize("-3GiB").ok());
}

}  // namespace
}  // namespace nextserve::cli
