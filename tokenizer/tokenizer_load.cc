// Reading tokenizer.json, vocab.json + merges.txt and tokenizer_config.json into a Tokenizer.
#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"

namespace nextserve::tokenizer {
namespace {

using json = nlohmann::json;

// Debian's Abseil has its own string_view type.
absl::string_view AV(std::string_view s) {
  return {s.data(), s.size()};
}

// Qwen2Tokenizer's split regex; the slow files (vocab.json + merges.txt) do not carry one.
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// GPT-2's, used by a ByteLevel pre-tokenizer with use_regex = true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return ss.str();
}

absl::StatusOr<json> ReadJson(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  return j;
}

bool FileExists(const std::string& path) {
  return std::ifstream(path).good();
}

absl::Status Unsupported(const std::string& source, std::string_view field, const json& value) {
  return absl::UnimplementedError(absl::StrCat(source, ": ", AV(field), " = ", value.dump(),
                                               " is not supported by this tokenizer"));
}

absl::Status BadField(const std::string& source, std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", AV(field), "' ", AV(what)));
}

bool IsNullOrEmpty(const json& j) {
  return j.is_null() || (j.is_string() && j.get<std::string>().empty());
}

absl::Status ParseNormalizer(const std::string& source, const json& j, bool* nfc) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = j.value("type", "");
  if (type == "NFC") {
    *nfc = true;
    return absl::OkStatus();
  }
  if (type == "Sequence" && j.contains("normalizers") && j["normalizers"].is_array()) {
    for (const json& n : j["normalizers"]) {
      if (absl::Status s = ParseNormalizer(source, n, nfc); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return Unsupported(source, "normalizer", j);
}

absl::Status ParsePreTokenizer(const std::string& source, const json& j, std::string* pattern,
                               bool* byte_level) {
  const std::string type = j.is_object() ? j.value("type", "") : "";
  if (type == "Sequence" && j.contains("pretokenizers") && j["pretokenizers"].is_array()) {
    for (const json& p : j["pretokenizers"]) {
      if (absl::Status s = ParsePreTokenizer(source, p, pattern, byte_level); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (type == "Split") {
    const json& pat = j.value("pattern", json());
    if (j.value("behavior", "") != "Isolated" || j.value("invert", false) || !pattern->empty()) {
      return Unsupported(source, "pre_tokenizer", j);
    }
    if (pat.contains("Regex") && pat["Regex"].is_string()) {
      *pattern = pat["Regex"].get<std::string>();
    } else if (pat.contains("String") && pat["String"].is_string()) {
      // A literal: escape every ASCII punctuation character for the regex engine.
      for (char c : pat["String"].get<std::string>()) {
        if (static_cast<unsigned char>(c) < 0x80 && !std::isalnum(static_cast<unsigned char>(c))) {
          pattern->push_back('\\');
        }
        pattern->push_back(c);
      }
    } else {
      return Unsupported(source, "pre_tokenizer.pattern", pat);
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    if (j.value("add_prefix_space", false)) return Unsupported(source, "pre_tokenizer", j);
    *byte_level = true;
    if (j.value("use_regex", true)) {
      if (!pattern->empty()) return Unsupported(source, "pre_tokenizer", j);
      *pattern = std::string(kGpt2Pattern);
    }
    return absl::OkStatus();
  }
  return Unsupported(source, "pre_tokenizer", j);
}

absl::StatusOr<AddedToken> ParseAddedToken(const std::string& source, const json& j, int64_t id) {
  if (!j.is_object() || !j.contains("content") || !j["content"].is_string()) {
    return BadField(source, "added_tokens",
                    absl::StrCat("entry for id ", id, " has no 'content' string"));
  }
  AddedToken t;
  t.id = static_cast<int32_t>(id);
  t.content = j["content"].get<std::string>();
  t.special = j.value("special", false);
  t.normalized = j.value("normalized", !t.special);
  if (j.value("lstrip", false) || j.value("rstrip", false) || j.value("single_word", false)) {
    return Unsupported(
        source, absl::StrCat("added token '", t.content, "' (lstrip/rstrip/single_word)"), j);
  }
  if (t.content.empty())
    return BadField(source, "added_tokens", absl::StrCat("id ", id, " has empty content"));
  return t;
}

}  // namespace

absl::StatusOr<Tokenizer::Spec> Tokenizer::ParseTokenizerJson(const std::string& path) {
  absl::StatusOr<json> root = ReadJson(path);
  if (!root.ok()) return root.status();
  const json& j = *root;
  Spec spec;
  spec.source = path;
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": top level must be an object"));
  if (absl::Status s = ParseNormalizer(path, j.value("normalizer", json()), &spec.nfc); !s.ok())
    return s;
  bool byte_level = false;
  if (absl::Status s = ParsePreTokenizer(path, j.value("pre_tokenizer", json()),
                                         &spec.split_pattern, &byte_level);
      !s.ok()) {
    return s;
  }
  if (!byte_level)
    return Unsupported(path, "pre_tokenizer (not byte-level)", j.value("pre_tokenizer", json()));
  const json& decoder = j.value("decoder", json());
  if (!decoder.is_null() && decoder.value("type", "") != "ByteLevel")
    return Unsupported(path, "decoder", decoder);

  const json& model = j.value("model", json());
  if (!model.is_object() || model.value("type", "BPE") != "BPE")
    return Unsupported(path, "model.type", model.value("type", json()));
  const json& dropout = model.value("dropout", json());
  if (!(dropout.is_null() || (dropout.is_number() && dropout.get<double>() == 0.0))) {
    return Unsupported(path, "model.dropout", dropout);
  }
  if (model.value("byte_fallback", false)) return Unsupported(path, "model.byte_fallback", true);
  for (const char* f : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!IsNullOrEmpty(model.value(f, json())))
      return Unsupported(path, absl::StrCat("model.", f), model[f]);
  }
  spec.ignore_merges = model.value("ignore_merges", false);
  if (model.contains("unk_token") && model["unk_token"].is_string())
    spec.unk_token = model["unk_token"].get<std::string>();

  const json& vocab = model.value("vocab", json());
  if (!vocab.is_object()) return BadField(path, "model.vocab", "must be an object");
  spec.vocab.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= INT32_MAX) {
      return BadField(path, "model.vocab",
                      absl::StrCat("id of '", token, "' is not a non-negative integer"));
    }
    spec.vocab.emplace_back(token, static_cast<int32_t>(id.get<int64_t>()));
  }
  const json& merges = model.value("merges", json());
  if (!merges.is_array()) return BadField(path, "model.merges", "must be an array");
  spec.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    // Two spellings in the wild: "a b" (older files) and ["a", "b"] (tokenizers >= 0.20).
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return BadField(path, absl::StrCat("model.merges[", i, "]"),
                        absl::StrCat("'", s, "' is not 'a b'"));
      }
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return BadField(path, absl::StrCat("model.merges[", i, "]"),
                      "is neither \"a b\" nor [\"a\", \"b\"]");
    }
  }
  const json& added = j.value("added_tokens", json::array());
  if (!added.is_array()) return BadField(path, "added_tokens", "must be an array");
  for (const json& a : added) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
        a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() >= INT32_MAX) {
      return BadField(path, "added_tokens", "has an entry without a valid 'id'");
    }
    absl::StatusOr<AddedToken> t = ParseAddedToken(path, a, a["id"].get<int64_t>());
    if (!t.ok()) return t.status();
    spec.added.push_back(*std::move(t));
  }
  return spec;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJson(
    const std::string& path, const TokenizerOptions& options) {
  absl::StatusOr<Spec> spec = ParseTokenizerJson(path);
  if (!spec.ok()) return spec.status();
  return Build(*std::move(spec), options);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocabAndMerges(
    const std::string& vocab_path, const std::string& merges_path, const std::string& config_path,
    const TokenizerOptions& options) {
  Spec spec;
  spec.source = vocab_path;
  spec.nfc = true;
  spec.split_pattern = std::string(kQwen2Pattern);
  absl::StatusOr<json> vocab = ReadJson(vocab_path);
  if (!vocab.ok()) return vocab.status();
  if (!vocab->is_object()) return BadField(vocab_path, "(top level)", "must be an object");
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= INT32_MAX) {
      return BadField(vocab_path, token, "is not mapped to a non-negative integer id");
    }
    spec.vocab.emplace_back(token, static_cast<int32_t>(id.get<int64_t>()));
  }
  absl::StatusOr<std::string> merges = ReadFile(merges_path);
  if (!merges.ok()) return merges.status();
  std::istringstream lines(*merges);
  std::string line;
  for (size_t n = 1; std::getline(lines, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (n == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(merges_path, ":", n, ": '", line, "' is not 'a b'"));
    }
    spec.merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }
  if (!config_path.empty()) {
    absl::StatusOr<json> config = ReadJson(config_path);
    if (!config.ok()) return config.status();
    const json& decoder = config->value("added_tokens_decoder", json::object());
    if (!decoder.is_object())
      return BadField(config_path, "added_tokens_decoder", "must be an object");
    for (const auto& [key, value] : decoder.items()) {
      int64_t id = -1;
      try {
        id = std::stoll(key);
      } catch (...) {
      }
      if (id < 0 || id >= INT32_MAX)
        return BadField(config_path, "added_tokens_decoder",
                        absl::StrCat("key '", key, "' is not an id"));
      absl::StatusOr<AddedToken> t = ParseAddedToken(config_path, value, id);
      if (!t.ok()) return t.status();
      spec.added.push_back(*std::move(t));
    }
    std::sort(spec.added.begin(), spec.added.end(),
              [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  }
  return Build(std::move(spec), options);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir,
                                                           const TokenizerOptions& options) {
  const std::string json_path = absl::StrCat(model_dir, "/tokenizer.json");
  if (FileExists(json_path)) return FromTokenizerJson(json_path, options);
  const std::string vocab = absl::StrCat(model_dir, "/vocab.json");
  const std::string merges = absl::StrCat(model_dir, "/merges.txt");
  if (FileExists(vocab) && FileExists(merges)) {
    const std::string config = absl::StrCat(model_dir, "/tokenizer_config.json");
    return FromVocabAndMerges(vocab, merges, FileExists(config) ? config : "", options);
  }
  return absl::NotFoundError(
      absl::StrCat(model_dir, ": no tokenizer.json, nor vocab.json + merges.txt"));
}

}  // namespace nextserve::tokenizer
