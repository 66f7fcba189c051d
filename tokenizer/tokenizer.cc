#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "tokenizer/utf8.h"

namespace nextserve::tokenizer {
namespace {

// GPT-2's byte <-> printable character map, from the character side: the code point each byte
// is spelled with in a byte-level vocabulary.
struct ByteLevelAlphabet {
  ByteLevelAlphabet() {
    std::fill(std::begin(byte_of), std::end(byte_of), -1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const int cp = printable ? b : 256 + n++;
      byte_of[cp] = b;
    }
  }
  int byte_of[512];
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* a = new ByteLevelAlphabet();
  return *a;
}

// The bytes HF's ByteLevel decoder turns a token's spelling into: each character mapped back to
// its byte, or, if any character is outside the alphabet (some added tokens), the spelling's
// own UTF-8.
std::string SpellingToBytes(std::string_view spelling) {
  const ByteLevelAlphabet& a = Alphabet();
  std::string out;
  out.reserve(spelling.size());
  for (size_t i = 0; i < spelling.size();) {
    const auto c0 = static_cast<unsigned char>(spelling[i]);
    int cp = -1;
    if (c0 < 0x80) {
      cp = c0;
      i += 1;
    } else if ((c0 & 0xE0) == 0xC0 && i + 1 < spelling.size()) {
      cp = ((c0 & 0x1F) << 6) | (static_cast<unsigned char>(spelling[i + 1]) & 0x3F);
      i += 2;
    }
    if (cp < 0 || cp >= 512 || a.byte_of[cp] < 0) return std::string(spelling);
    out.push_back(static_cast<char>(a.byte_of[cp]));
  }
  return out;
}

std::atomic<uint64_t> next_cache_owner{1};

// Pre-tokens repeat (words, indentation, punctuation), so each thread keeps their ids. Entries
// are tagged with the tokenizer they belong to; using another tokenizer on the thread clears it.
struct PieceCache {
  static constexpr size_t kMaxPiece = 64;
  static constexpr size_t kMaxEntries = size_t{1} << 17;
  uint64_t owner = 0;
  absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> entries;  // -> (offset, count)
  std::vector<int32_t> ids;
};

PieceCache& ThreadCache(uint64_t owner) {
  thread_local PieceCache cache;
  if (cache.owner != owner || cache.entries.size() >= PieceCache::kMaxEntries) {
    cache.owner = owner;
    cache.entries.clear();
    cache.ids.clear();
  }
  return cache;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Build(Spec spec,
                                                            const TokenizerOptions& options) {
  const std::string& src = spec.source;
  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  tok->options_ = options;
  int32_t max_id = -1;
  for (const auto& [s, id] : spec.vocab) max_id = std::max(max_id, id);
  for (const AddedToken& t : spec.added) max_id = std::max(max_id, t.id);
  if (max_id < 0) return absl::InvalidArgumentError(absl::StrCat(src, ": empty vocabulary"));
  tok->token_bytes_.assign(max_id + 1, std::string());
  tok->special_.assign(max_id + 1, 0);

  std::vector<std::string> model_bytes(max_id + 1);
  tok->spelling_to_id_.reserve(spec.vocab.size() + spec.added.size());
  for (const auto& [spelling, id] : spec.vocab) {
    if (!tok->spelling_to_id_.emplace(spelling, id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(src, ": token '", spelling, "' appears twice"));
    }
    model_bytes[id] = SpellingToBytes(spelling);
    tok->token_bytes_[id] = model_bytes[id];
  }
  std::vector<BpeModel::Merge> merges;
  merges.reserve(spec.merges.size());
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const auto& [a, b] = spec.merges[i];
    auto ia = tok->spelling_to_id_.find(a);
    auto ib = tok->spelling_to_id_.find(b);
    auto ic = tok->spelling_to_id_.find(absl::StrCat(a, b));
    if (ia == tok->spelling_to_id_.end() || ib == tok->spelling_to_id_.end() ||
        ic == tok->spelling_to_id_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(src, ": merge ", i, " ('", a, "' + '", b,
                       "') uses a token that is not in the vocabulary"));
    }
    merges.push_back({ia->second, ib->second, ic->second});
  }
  int32_t unk_id = -1;
  if (spec.unk_token) {
    auto it = tok->spelling_to_id_.find(*spec.unk_token);
    if (it != tok->spelling_to_id_.end()) unk_id = it->second;
  }
  absl::StatusOr<BpeModel> bpe = BpeModel::Create(model_bytes, merges, spec.ignore_merges, unk_id);
  if (!bpe.ok()) return bpe.status();
  tok->bpe_.emplace(*std::move(bpe));

  for (AddedToken& t : spec.added) {
    tok->token_bytes_[t.id] = SpellingToBytes(t.content);
    tok->special_[t.id] = t.special;
    tok->spelling_to_id_[t.content] = t.id;  // HF looks added tokens up first
    tok->added_.push_back(std::move(t));
  }
  if (spec.nfc) {
    absl::StatusOr<NfcNormalizer> nfc = NfcNormalizer::Create();
    if (!nfc.ok()) return nfc.status();
    tok->nfc_.emplace(*nfc);
  }
  for (const AddedToken& t : tok->added_) {
    // A "normalized" added token is looked for in normalised text, so in its normalised form.
    std::string text = t.content, storage;
    if (t.normalized && tok->nfc_) {
      absl::StatusOr<std::string_view> n = tok->nfc_->Normalize(t.content, &storage);
      if (!n.ok()) return n.status();
      text = std::string(*n);
    }
    const int pass = t.normalized ? 1 : 0;
    const auto first = static_cast<unsigned char>(text[0]);
    tok->added_by_byte_[pass][first].push_back({std::move(text), t.id, t.special});
    tok->any_added_[pass] = true;
  }
  for (auto& pass : tok->added_by_byte_) {
    for (auto& list : pass) {
      std::stable_sort(list.begin(), list.end(), [](const AddedMatcher& a, const AddedMatcher& b) {
        return a.text.size() > b.text.size();
      });
    }
  }
  absl::StatusOr<Regex> split = Regex::Compile(spec.split_pattern, src);
  if (!split.ok()) return split.status();
  tok->split_ = *std::move(split);
  tok->cache_owner_ = next_cache_owner.fetch_add(1);
  return tok;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  auto it = spelling_to_id_.find(absl::string_view(token.data(), token.size()));
  if (it == spelling_to_id_.end()) return std::nullopt;
  return it->second;
}

std::optional<Tokenizer::Match> Tokenizer::FindAdded(std::string_view text, size_t from,
                                                     bool normalized, bool specials) const {
  const int pass = normalized ? 1 : 0;
  if (!any_added_[pass]) return std::nullopt;
  const auto& by_byte = added_by_byte_[pass];
  for (size_t i = from; i < text.size(); ++i) {
    const auto& candidates = by_byte[static_cast<unsigned char>(text[i])];
    for (const AddedMatcher& t : candidates) {  // longest first
      if (t.special && !specials) continue;
      if (text.compare(i, t.text.size(), t.text) == 0) return Match{i, i + t.text.size(), t.id};
    }
  }
  return std::nullopt;
}

void Tokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.size() > PieceCache::kMaxPiece) {
    bpe_->Encode(piece, out);
    return;
  }
  PieceCache& cache = ThreadCache(cache_owner_);
  if (auto it = cache.entries.find(absl::string_view(piece.data(), piece.size()));
      it != cache.entries.end()) {
    const auto [offset, count] = it->second;
    out->insert(out->end(), cache.ids.begin() + offset, cache.ids.begin() + offset + count);
    return;
  }
  const size_t before = out->size();
  bpe_->Encode(piece, out);
  const auto offset = static_cast<uint32_t>(cache.ids.size());
  cache.ids.insert(cache.ids.end(), out->begin() + before, out->end());
  cache.entries.emplace(std::string(piece),
                        std::make_pair(offset, static_cast<uint32_t>(out->size() - before)));
}

absl::Status Tokenizer::EncodeText(std::string_view text, std::vector<int32_t>* out) const {
  return split_.Split(text, [&](size_t b, size_t e) { EncodePiece(text.substr(b, e - b), out); });
}

absl::Status Tokenizer::EncodeNormalized(std::string_view segment, bool specials,
                                         std::vector<int32_t>* out) const {
  if (segment.empty()) return absl::OkStatus();
  std::string storage;
  std::string_view text = segment;
  if (nfc_) {
    absl::StatusOr<std::string_view> n = nfc_->Normalize(segment, &storage);
    if (!n.ok()) return n.status();
    text = *n;
  }
  // Added tokens flagged "normalized" are looked for in the normalised text.
  size_t pos = 0;
  while (true) {
    const std::optional<Match> m = FindAdded(text, pos, /*normalized=*/true, specials);
    const size_t end = m ? m->begin : text.size();
    if (end > pos) {
      if (absl::Status s = EncodeText(text.substr(pos, end - pos), out); !s.ok()) return s;
    }
    if (!m) return absl::OkStatus();
    out->push_back(m->id);
    pos = m->end;
  }
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       const EncodeOptions& options) const {
  if (text.size() > options_.max_input_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input is ", text.size(), " bytes, more than the limit of ", options_.max_input_bytes));
  }
  if (absl::Status s = ValidateUtf8(text); !s.ok()) return s;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  // Added tokens are matched in the raw text first, as HF does; the text between them is
  // normalised and split on its own.
  size_t pos = 0;
  while (true) {
    const std::optional<Match> m =
        FindAdded(text, pos, /*normalized=*/false, options.parse_special);
    const size_t end = m ? m->begin : text.size();
    if (absl::Status s = EncodeNormalized(text.substr(pos, end - pos), options.parse_special, &out);
        !s.ok()) {
      return s;
    }
    if (!m) break;
    out.push_back(m->id);
    pos = m->end;
  }
  return out;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special) const {
  std::string out;
  Utf8StreamDecoder decoder;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    // HF silently drops unknown ids; a server must say so instead.
    if (!InRange(id) || (token_bytes_[id].empty())) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " at position ", i,
                                                     " is not in the vocabulary (ids 0..",
                                                     vocab_size() - 1, ")"));
    }
    if (skip_special && special_[id]) continue;
    decoder.Feed(token_bytes_[id], &out);
  }
  decoder.Finish(&out);
  return out;
}

}  // namespace nextserve::tokenizer
