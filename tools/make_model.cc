// nextserve-make-model: writes a random Qwen3-Next checkpoint of a named shape.
//   nextserve-make-model --out DIR [--preset tiny|small] [--dtype bf16|f16|f32] [--seed N]
#include <cstdio>
#include <string>

#include "cli/flags.h"
#include "tools/random_checkpoint.h"

int main(int argc, char** argv) {
  std::string out, preset = "tiny", dtype_name = "bf16";
  int64_t seed = 1;
  nextserve::cli::Flags flags(
      "nextserve-make-model --out DIR [--preset tiny|small] [--dtype bf16|f16|f32] [--seed N]");
  flags.String("out", &out, "directory to write config.json and model.safetensors into");
  flags.String("preset", &preset, "model shape: tiny (default job) or small (benchmarks)");
  flags.String("dtype", &dtype_name, "stored dtype: bf16 (default), f16 or f32");
  flags.Int("seed", &seed, "random seed (default 1)");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return nextserve::cli::Flags::Report(s, flags);
  if (out.empty()) {
    return nextserve::cli::Flags::Report(absl::InvalidArgumentError("--out is required"), flags);
  }
  nextserve::RandomCheckpointOptions options;
  options.seed = static_cast<uint64_t>(seed);
  if (dtype_name == "bf16") {
    options.dtype = nextserve::DType::kBF16;
  } else if (dtype_name == "f16") {
    options.dtype = nextserve::DType::kF16;
  } else if (dtype_name == "f32") {
    options.dtype = nextserve::DType::kF32;
  } else {
    std::fprintf(stderr, "error: --dtype must be bf16, f16 or f32, not '%s'\n", dtype_name.c_str());
    return 2;
  }
  auto config = nextserve::PresetConfig(preset);
  if (!config.ok()) {
    std::fprintf(stderr, "error: %s\n", config.status().ToString().c_str());
    return 2;
  }
  if (auto s = nextserve::WriteRandomCheckpoint(*config, out, options); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s (preset %s, %s)\n", out.c_str(), preset.c_str(), dtype_name.c_str());
  return 0;
}
