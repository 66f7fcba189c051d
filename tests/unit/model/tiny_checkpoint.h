// Tiny random Qwen3-Next checkpoints for tests: config.json + safetensors (single file or shards
// with an index), with the exact tensor names and shapes ModelWeights::Bind expects.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/config.h"
#include "base/dtype.h"

namespace nextserve::testing {

// A small but complete config: 4 layers (layer 3 full attention, the rest Gated DeltaNet), 8
// experts, every dimension distinct enough that a swapped shape is caught.
ModelConfig TinyConfig();

struct TinyTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<float> values;  // numel values (ignored when raw_bytes is set)
  std::string raw_bytes;      // stored as is when non-empty (e.g. F8 data)
};

// The tensors of a checkpoint for `config`, in Bind's naming, with deterministic random values:
// large matrices ~ N(0, 0.02) in `dtype`, (1 + w) norm weights ~ N(0, 0.1), the gated norm
// ~ 1 + N(0, 0.1), A_log ~ U(0, 2.7), dt_bias ~ N(0, 0.5), conv1d ~ N(0, 0.3), in `small_dtype`.
std::vector<TinyTensor> MakeTinyTensors(const ModelConfig& config, DType dtype = DType::kBF16,
                                        DType small_dtype = DType::kF32, uint64_t seed = 1);

struct TinyCheckpointOptions {
  DType dtype = DType::kBF16;       // large matrices
  DType small_dtype = DType::kF32;  // norms, conv1d, dt_bias, A_log
  uint64_t seed = 1;
  bool include_mtp = false;  // adds a few mtp.* tensors (Bind must skip them)
  int num_shards = 1;        // > 1: model-0000i-of-0000n.safetensors + model.safetensors.index.json
  bool write_config = true;  // config.json from ModelConfigToJson(config)
  // Applied to the tensor list before writing (drop, add, reshape, retype tensors).
  std::function<void(std::vector<TinyTensor>&)> edit;
};

// Writes the checkpoint into `dir` (created if needed).
absl::Status WriteTinyCheckpoint(const std::string& dir, const ModelConfig& config,
                                 const TinyCheckpointOptions& options = {});

// Block-scaled FP8 as transformers' fine-grained FP8 stores it: every 2-D `*.weight` other than
// the embedding whose module `config.quantization` does not leave unquantised becomes F8_E4M3
// (per 128x128 block: scale = amax / 448, fp8 = round(w / scale)) plus `<name>_scale_inv` (F32,
// [ceil(rows / 128), ceil(cols / 128)]). `values` keep the dequantised weights, fp8 * scale.
void QuantizeToFp8(const ModelConfig& config, std::vector<TinyTensor>& tensors);

// Finds a tensor in a list (nullptr if absent).
TinyTensor* FindTensor(std::vector<TinyTensor>& tensors, const std::string& name);

// A fresh directory under $TMPDIR (default /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes a whole file.
absl::Status WriteStringToFile(const std::string& path, const std::string& contents);

}  // namespace nextserve::testing
