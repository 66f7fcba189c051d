// Slow: a long prompt through the whole model three ways — all at once (chunked delta rule across
// many chunks, blocked attention), in uneven chunks, and one token at a time (the recurrence and
// single-query attention against a growing cache) — gives the same logits at every position.
#include <cmath>
#include <filesystem>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/qwen3_next.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"

namespace nextserve {
namespace {

TEST(EngineLong, WholeChunkedAndTokenByTokenAgree) {
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  config->vocab_size = 512;
  config->hidden_size = 128;
  config->eos_token_ids = {0};
  const std::string dir =
      std::filesystem::temp_directory_path() / ("engine_long_" + std::to_string(getpid()));
  RandomCheckpointOptions options;
  options.dtype = DType::kF32;
  ASSERT_TRUE(WriteRandomCheckpoint(*config, dir, options).ok());
  auto weights = ModelWeights::Load(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto backend = kernels::MakeCpuBackend();
  Qwen3NextModel model(std::move(*weights), backend.get());

  const int64_t n = 700, vocab = config->vocab_size;
  std::vector<int32_t> prompt(n);
  for (int64_t i = 0; i < n; ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % vocab);
  auto run = [&](const std::vector<int64_t>& pieces) {
    auto state = model.NewSequence();
    std::vector<float> all;
    int64_t pos = 0;
    for (int64_t size : pieces) {
      SequenceInput in{state.get(), std::span<const int32_t>(prompt).subspan(pos, size), true};
      auto out = model.Forward({&in, 1});
      EXPECT_TRUE(out.ok()) << out.status();
      all.insert(all.end(), out->begin(), out->end());
      pos += size;
    }
    EXPECT_EQ(pos, n);
    return all;
  };
  const auto whole = run({n});
  const auto chunked = run({100, 64, 129, 1, 300, 106});
  const auto single = run(std::vector<int64_t>(n, 1));
  const auto [lo, hi] = std::minmax_element(whole.begin(), whole.end());
  const float tol = 1e-4f * (*hi - *lo);
  float worst_chunked = 0, worst_single = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    worst_chunked = std::max(worst_chunked, std::abs(whole[i] - chunked[i]));
    worst_single = std::max(worst_single, std::abs(whole[i] - single[i]));
  }
  EXPECT_LT(worst_chunked, tol);
  EXPECT_LT(worst_single, tol);
  EXPECT_GT(*hi - *lo, 1.0f);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace nextserve
