// fp8_bench: the same weights as a bf16 and as a block-scaled FP8 checkpoint, prefill and decode
// tokens/s measured alternately in one process (best of --reps each), with FP8 / bf16 ratios.
// Alternating the two models in one run keeps a noisy machine from favouring either.
//
//   fp8_bench --bf16 DIR --fp8 DIR [--prompt 256] [--decode 16] [--reps 5]
// Make the pair: nextserve-make-model --preset small --dtype bf16 --out A, then
// python3 tools/make_fp8_golden.py --convert A --to B.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/flags.h"
#include "model/qwen3_next.h"
#include "model/weights.h"

namespace nextserve {
namespace {

using Clock = std::chrono::steady_clock;

struct Speed {
  double prefill_tps = 0, decode_tps = 0;
};

Speed Measure(Qwen3NextModel& model, const std::vector<int32_t>& prompt, int64_t decode_steps) {
  auto seq = model.NewSequence();
  SequenceInput in{seq.get(), prompt, false};
  const auto t0 = Clock::now();
  auto logits = model.Forward({&in, 1});
  const double prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<int32_t> next(1, 0);
  const auto t1 = Clock::now();
  for (int64_t step = 0; step < decode_steps; ++step) {
    next[0] =
        static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) - logits->begin());
    SequenceInput d{seq.get(), next, false};
    logits = model.Forward({&d, 1});
  }
  const double decode_s = std::chrono::duration<double>(Clock::now() - t1).count();
  return {prompt.size() / prefill_s, decode_steps / decode_s};
}

int Main(int argc, char** argv) {
  std::string bf16_dir, fp8_dir;
  int64_t prompt_len = 256, decode_steps = 16, reps = 5;
  cli::Flags flags("fp8_bench --bf16 DIR --fp8 DIR [--prompt N] [--decode N] [--reps N]");
  flags.String("bf16", &bf16_dir, "bf16 checkpoint");
  flags.String("fp8", &fp8_dir, "the same weights as an FP8 checkpoint");
  flags.Int("prompt", &prompt_len, "prefill length");
  flags.Int("decode", &decode_steps, "decode steps");
  flags.Int("reps", &reps, "alternating repetitions (best of each is reported)");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  if (bf16_dir.empty() || fp8_dir.empty() || prompt_len < 1 || reps < 1) {
    return cli::Flags::Report(absl::InvalidArgumentError("--bf16 and --fp8 are required"), flags);
  }
  auto backend = kernels::MakeCpuBackend();
  std::vector<std::unique_ptr<Qwen3NextModel>> models;
  for (const std::string& dir : {bf16_dir, fp8_dir}) {
    auto w = ModelWeights::Load(dir);
    if (!w.ok()) {
      std::fprintf(stderr, "%s: %s\n", dir.c_str(), w.status().ToString().c_str());
      return 1;
    }
    std::printf("%s: stored %s (%ld FP8 matrices)\n", dir.c_str(),
                std::string(DTypeName((*w)->stored_dtype)).c_str(), (*w)->fp8_matrices);
    models.push_back(std::make_unique<Qwen3NextModel>(std::move(*w), backend.get()));
  }
  const int64_t vocab = models[0]->config().vocab_size;
  std::vector<int32_t> prompt(prompt_len);
  for (int64_t i = 0; i < prompt_len; ++i) prompt[i] = static_cast<int32_t>((i * 7919) % vocab);
  for (auto& m : models) (void)Measure(*m, prompt, 2);  // fault the mapped weights in
  Speed best[2];
  for (int64_t r = 0; r < reps; ++r) {
    for (int i = 0; i < 2; ++i) {
      const Speed s = Measure(*models[i], prompt, decode_steps);
      best[i].prefill_tps = std::max(best[i].prefill_tps, s.prefill_tps);
      best[i].decode_tps = std::max(best[i].decode_tps, s.decode_tps);
    }
  }
  std::printf("prefill %ld tokens: bf16 %.1f tok/s, fp8 %.1f tok/s, fp8/bf16 %.2f\n", prompt_len,
              best[0].prefill_tps, best[1].prefill_tps, best[1].prefill_tps / best[0].prefill_tps);
  std::printf("decode  %ld steps:  bf16 %.1f tok/s, fp8 %.1f tok/s, fp8/bf16 %.2f\n", decode_steps,
              best[0].decode_tps, best[1].decode_tps, best[1].decode_tps / best[0].decode_tps);
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Main(argc, argv);
}
