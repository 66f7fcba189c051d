// What the router knows about the model it serves, read from the model directory without loading
// any weights: config.json (vocabulary, context, eos, experts), generation_config.json (sampling
// defaults) and the tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace nextserve::router {

// Sampling defaults for fields a request leaves out.
struct SamplingDefaults {
  float temperature = 1.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
};

// Qwen3-Next-80B-A3B-Instruct's generation_config.json: used when the model directory has none.
SamplingDefaults Qwen3NextInstructDefaults();

struct ModelSpec {
  std::string name;        // the directory as given, or --model-name
  int64_t vocab_size = 0;  // the model's (embedding rows), >= the tokenizer's
  int64_t max_position_embeddings = 0;
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  // config.json's eos_token_id plus generation_config.json's, deduplicated.
  std::vector<int32_t> eos_token_ids;
  SamplingDefaults defaults;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
};

// Reads DIR/config.json, DIR/generation_config.json (optional) and the tokenizer files. Errors
// name the file and field.
absl::StatusOr<ModelSpec> LoadModelSpec(const std::string& dir);

}  // namespace nextserve::router
