#include "router/model_spec.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace nextserve::router {
namespace {

using json = nlohmann::json;

absl::StatusOr<json> ReadJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  return j;
}

absl::Status BadField(const std::string& path, const char* field, const char* what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": '", field, "' ", what));
}

// A positive integer field; `fallback` when absent (-1: required).
absl::StatusOr<int64_t> PositiveInt(const json& j, const std::string& path, const char* field,
                                    int64_t fallback) {
  if (!j.contains(field)) {
    if (fallback < 0) return BadField(path, field, "is missing");
    return fallback;
  }
  if (!j[field].is_number_integer() || j[field].get<int64_t>() <= 0) {
    return BadField(path, field, "must be a positive integer");
  }
  return j[field].get<int64_t>();
}

// eos_token_id: an integer or a list of integers.
absl::Status AppendEos(const json& j, const std::string& path, std::vector<int32_t>* out) {
  if (!j.contains("eos_token_id") || j["eos_token_id"].is_null()) return absl::OkStatus();
  const json& e = j["eos_token_id"];
  const json list = e.is_array() ? e : json::array({e});
  for (const json& id : list) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return BadField(path, "eos_token_id", "must be a token id or a list of them");
    }
    const int32_t v = id.get<int32_t>();
    if (std::find(out->begin(), out->end(), v) == out->end()) out->push_back(v);
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status ReadNumber(const json& j, const std::string& path, const char* field, T* out) {
  if (!j.contains(field) || j[field].is_null()) return absl::OkStatus();
  if (!j[field].is_number()) return BadField(path, field, "must be a number");
  *out = j[field].get<T>();
  return absl::OkStatus();
}

}  // namespace

SamplingDefaults Qwen3NextInstructDefaults() {
  return {
      .temperature = 0.7f, .top_p = 0.8f, .top_k = 20, .min_p = 0.0f, .repetition_penalty = 1.0f};
}

absl::StatusOr<ModelSpec> LoadModelSpec(const std::string& dir) {
  ModelSpec spec;
  spec.name = dir;
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  absl::StatusOr<json> config = ReadJson(config_path);
  if (!config.ok()) return config.status();
  // Qwen3-Next keeps everything at the top level; multimodal configs nest it in text_config.
  const json& c = config->contains("text_config") ? (*config)["text_config"] : *config;
  absl::StatusOr<int64_t> vocab = PositiveInt(c, config_path, "vocab_size", -1);
  if (!vocab.ok()) return vocab.status();
  if (*vocab > INT32_MAX) return BadField(config_path, "vocab_size", "must fit in int32");
  spec.vocab_size = *vocab;
  absl::StatusOr<int64_t> ctx = PositiveInt(c, config_path, "max_position_embeddings", 32768);
  if (!ctx.ok()) return ctx.status();
  spec.max_position_embeddings = *ctx;
  absl::StatusOr<int64_t> experts = PositiveInt(c, config_path, "num_experts", 512);
  if (!experts.ok()) return experts.status();
  spec.num_experts = *experts;
  absl::StatusOr<int64_t> topk = PositiveInt(c, config_path, "num_experts_per_tok", 10);
  if (!topk.ok()) return topk.status();
  spec.num_experts_per_tok = *topk;
  if (absl::Status s = AppendEos(c, config_path, &spec.eos_token_ids); !s.ok()) return s;

  // generation_config.json overrides the neutral defaults field by field (as vLLM does); without
  // the file, the Qwen3-Next Instruct recommendations apply.
  const std::string gen_path = (std::filesystem::path(dir) / "generation_config.json").string();
  if (std::filesystem::exists(gen_path)) {
    absl::StatusOr<json> gen = ReadJson(gen_path);
    if (!gen.ok()) return gen.status();
    SamplingDefaults& d = spec.defaults;
    for (absl::Status s : {ReadNumber(*gen, gen_path, "temperature", &d.temperature),
                           ReadNumber(*gen, gen_path, "top_p", &d.top_p),
                           ReadNumber(*gen, gen_path, "top_k", &d.top_k),
                           ReadNumber(*gen, gen_path, "min_p", &d.min_p),
                           ReadNumber(*gen, gen_path, "repetition_penalty", &d.repetition_penalty),
                           AppendEos(*gen, gen_path, &spec.eos_token_ids)}) {
      if (!s.ok()) return s;
    }
  } else {
    spec.defaults = Qwen3NextInstructDefaults();
  }
  for (int32_t id : spec.eos_token_ids) {
    if (id >= spec.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, ": eos_token_id ", id, " is outside the vocabulary (", spec.vocab_size, ")"));
    }
  }

  absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> tok = tokenizer::Tokenizer::Load(dir);
  if (!tok.ok()) return tok.status();
  spec.tokenizer = *std::move(tok);
  if (spec.tokenizer->vocab_size() > spec.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": the tokenizer has ", spec.tokenizer->vocab_size(),
                     " ids but config.json's vocab_size is ", spec.vocab_size));
  }
  return spec;
}

}  // namespace nextserve::router
