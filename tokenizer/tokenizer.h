// The Qwen byte-level BPE tokenizer: text -> ids and ids -> text, identical to Hugging Face
// tokenizers on the same tokenizer.json. Thread-safe: Encode/Decode are const and share nothing
// mutable but a per-thread cache.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/regex.h"

namespace nextserve::tokenizer {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;     // e.g. <|im_start|>; Qwen's <tool_call>, <think> ... are not
  bool normalized = false;  // matched in the normalised text rather than the raw input
};

struct TokenizerOptions {
  // Encode refuses longer inputs (a request this large is a client error, not work to do).
  size_t max_input_bytes = size_t{64} << 20;
};

struct EncodeOptions {
  // Whether the text of special tokens (<|im_start|>, <|endoftext|>, ...) in the input becomes
  // those tokens. Off by default so that user text cannot forge a turn; the chat template's own
  // output is encoded with it on. Non-special added tokens (<tool_call>, <think>) are always
  // matched, as in HF tokenizers (this flag is HF's `encode_special_tokens` inverted).
  bool parse_special = false;
};

class Tokenizer {
 public:
  // From a model directory: tokenizer.json if present, else vocab.json + merges.txt (+ the added
  // tokens of tokenizer_config.json).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir,
                                                         const TokenizerOptions& options = {});
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJson(
      const std::string& path, const TokenizerOptions& options = {});
  // `config_path` may be empty. The split regex and NFC are Qwen2Tokenizer's (the slow files
  // carry neither).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocabAndMerges(
      const std::string& vocab_path, const std::string& merges_path, const std::string& config_path,
      const TokenizerOptions& options = {});

  // Errors: InvalidArgument for invalid UTF-8 or an input over max_input_bytes. Empty -> no ids.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options = {}) const;
  // Errors: InvalidArgument naming the first id out of range. Invalid UTF-8 that the ids spell is
  // rendered with U+FFFD, as HF does.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special = false) const;

  // The bytes id stands for when decoded ("" for a hole in the id space); id must be in range.
  std::string_view TokenBytes(int32_t id) const { return token_bytes_[id]; }
  bool IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id]; }
  bool InRange(int32_t id) const { return id >= 0 && id < vocab_size(); }
  // By the vocabulary's own spelling (byte-level form, e.g. "Ġworld") or an added token's text.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // One past the largest id (151,669 for Qwen; the model's embedding is padded beyond it).
  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  const std::string& split_pattern() const { return split_.pattern(); }

 private:
  // What a model file describes, before the tables are built.
  struct Spec {
    std::string source;                                  // file name, for messages
    std::vector<std::pair<std::string, int32_t>> vocab;  // byte-level spelling -> id
    std::vector<std::pair<std::string, std::string>> merges;
    std::vector<AddedToken> added;
    std::string split_pattern;
    bool nfc = false;
    bool ignore_merges = false;
    std::optional<std::string> unk_token;
  };
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Build(Spec spec,
                                                          const TokenizerOptions& options);
  static absl::StatusOr<Spec> ParseTokenizerJson(const std::string& path);

  // Leftmost-longest search for added tokens; `specials` says whether special ones count.
  struct Match {
    size_t begin, end;
    int32_t id;
  };
  std::optional<Match> FindAdded(std::string_view text, size_t from, bool normalized,
                                 bool specials) const;
  absl::Status EncodeNormalized(std::string_view text, bool specials,
                                std::vector<int32_t>* out) const;
  absl::Status EncodeText(std::string_view text, std::vector<int32_t>* out) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;

  TokenizerOptions options_;
  Regex split_;
  std::optional<NfcNormalizer> nfc_;
  std::optional<BpeModel> bpe_;
  std::vector<std::string> token_bytes_;  // by id: the bytes the decoder produces
  std::vector<char> special_;             // by id
  absl::flat_hash_map<std::string, int32_t> spelling_to_id_;
  std::vector<AddedToken> added_;
  // Added tokens by first byte, longest first, for the raw and the normalised pass.
  struct AddedMatcher {
    std::string text;
    int32_t id;
    bool special;
  };
  std::vector<AddedMatcher> added_by_byte_[2][256];
  bool any_added_[2] = {false, false};
  uint64_t cache_owner_ = 0;  // tags this instance's entries in the per-thread piece cache
};

}  // namespace nextserve::tokenizer
