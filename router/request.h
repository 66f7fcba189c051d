// A client's GenerateRequest -> the work a rank runs: every field validated (InvalidArgument
// naming the field), the prompt tokenized or rendered with the chat template, absent sampling
// fields filled from the model's generation defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nextserve/internal/v1/rank.pb.h"
#include "nextserve/v1/inference.pb.h"
#include "router/model_spec.h"

namespace nextserve::router {

// Bounds on what one request may carry, beyond the sampling library's ranges.
struct RequestLimits {
  size_t max_request_id_bytes = 256;
  int max_stop_strings = 16;
  size_t max_stop_bytes = 256;
  int max_stop_token_ids = 64;
  int max_logit_bias = 1024;
  int max_chat_messages = 4096;
  int max_tools = 128;
};

struct ResolvedRequest {
  std::vector<int32_t> prompt_ids;
  int32_t max_tokens = 0;
  int32_t min_tokens = 0;
  std::vector<std::string> stop;    // stop strings, applied by the router
  internal::v1::Sampling sampling;  // what the rank gets, fully resolved
};

// The chat rendered with the model's template (tokens for special-token text included).
absl::StatusOr<std::vector<int32_t>> TokenizeChat(const v1::Chat& chat, const ModelSpec& model,
                                                  const RequestLimits& limits);
// Raw text: special-token text is not parsed (a client cannot forge a turn).
absl::StatusOr<std::vector<int32_t>> TokenizeText(const std::string& text, const char* field,
                                                  const ModelSpec& model);

// Ids back to text. One id rule everywhere (prompts, logit_bias, stop ids, sampling, here): an id
// is valid when it is in [0, model vocab_size). Ids past the tokenizer's table (the embedding's
// padding rows, e.g. Qwen's 151,669..151,935) have no text and decode to nothing, as in HF
// tokenizers and in the streamed text.
absl::StatusOr<std::string> DetokenizeIds(const google::protobuf::RepeatedField<int32_t>& ids,
                                          bool skip_special_tokens, const ModelSpec& model);

// `max_context` bounds prompt + max_tokens (the smaller of the model's and the ranks').
absl::StatusOr<ResolvedRequest> ResolveGenerate(const v1::GenerateRequest& request,
                                                const ModelSpec& model, int64_t max_context,
                                                const RequestLimits& limits = {});

// The generation defaults as the public API spells them (GetModelInfo).
v1::SamplingParams DefaultSampling(const ModelSpec& model);

}  // namespace nextserve::router
