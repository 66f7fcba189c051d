#include "router/text_stream.h"

#include <algorithm>

namespace nextserve::router {

TextStream::TextStream(const tokenizer::Tokenizer& tokenizer, std::vector<std::string> stops)
    : tokenizer_(tokenizer), detok_(tokenizer, /*skip_special=*/true), stops_(std::move(stops)) {}

TextStream::Piece TextStream::Add(int32_t id, bool match_stops) {
  if (stopped_) return {};
  if (tokenizer_.InRange(id)) {
    absl::StatusOr<std::string> text = detok_.Add(id);
    if (text.ok()) held_ += *text;
  }
  return Release(match_stops);
}

TextStream::Piece TextStream::Finish(bool match_stops) {
  if (stopped_) return {};
  held_ += detok_.Finish();
  Piece piece = Release(match_stops);
  piece.text += held_;  // nothing more can complete a stop string
  held_.clear();
  return piece;
}

TextStream::Piece TextStream::Release(bool match_stops) {
  Piece piece;
  if (!match_stops || stops_.empty()) {
    piece.text = std::move(held_);
    held_.clear();
    return piece;
  }
  // The earliest complete match wins (the longest at the same position).
  size_t best = std::string::npos;
  const std::string* best_stop = nullptr;
  for (const std::string& stop : stops_) {
    const size_t at = held_.find(stop);
    if (at == std::string::npos) continue;
    if (at < best || (at == best && stop.size() > best_stop->size())) {
      best = at;
      best_stop = &stop;
    }
  }
  if (best_stop != nullptr) {
    piece.text = held_.substr(0, best);
    piece.stopped = true;
    piece.stop = *best_stop;
    stopped_ = true;
    held_.clear();
    return piece;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string. Stop strings are
  // UTF-8, so such a suffix starts on a character boundary.
  size_t keep_from = held_.size();
  for (const std::string& stop : stops_) {
    const size_t longest = std::min(held_.size(), stop.size() - 1);
    for (size_t len = longest; len > 0; --len) {
      if (held_.compare(held_.size() - len, len, stop, 0, len) == 0) {
        keep_from = std::min(keep_from, held_.size() - len);
        break;
      }
    }
  }
  piece.text = held_.substr(0, keep_from);
  held_.erase(0, keep_from);
  return piece;
}

}  // namespace nextserve::router
