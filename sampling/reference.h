// The slow, obviously-correct version of one sampling step that the tests hold Sampler to (the
// llm.c habit): whole-row copies, one full sort, double precision after the logit transforms.
// Same definitions as sampler.h, written the way the HF/vLLM code reads. Not for production use.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "sampling/params.h"

namespace nextserve::sampling {

// The distribution a step draws from (one-hot on the argmax for greedy), for a request whose
// prompt and generated tokens so far are given.
std::vector<double> ReferenceProbabilities(std::span<const float> logits,
                                           const SamplingParams& params,
                                           std::span<const int32_t> prompt,
                                           std::span<const int32_t> output,
                                           std::span<const int32_t> eos_token_ids = {});

}  // namespace nextserve::sampling
