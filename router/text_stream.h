// Token ids -> the text a client sees: incremental detokenization (whole UTF-8 characters only,
// special tokens left out) and stop strings. Text past a stop string is never released, and text
// that might be the start of a stop string is held back until it is known not to be.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace nextserve::router {

class TextStream {
 public:
  // `tokenizer` must outlive this object; `stops` are non-empty UTF-8 strings.
  TextStream(const tokenizer::Tokenizer& tokenizer, std::vector<std::string> stops);

  struct Piece {
    std::string text;  // released now
    bool stopped = false;
    std::string stop;  // the stop string that matched
  };
  // One generated token. Ids the tokenizer does not know (the embedding's padding rows) add no
  // text. With `match_stops` false (before min_tokens) text is released without matching. After
  // a stop, further calls return nothing.
  Piece Add(int32_t id, bool match_stops = true);
  // End of the stream: the rest of an unfinished character (as U+FFFD) and any held text.
  Piece Finish(bool match_stops = true);

  bool stopped() const { return stopped_; }

 private:
  Piece Release(bool match_stops);

  const tokenizer::Tokenizer& tokenizer_;
  tokenizer::IncrementalDetokenizer detok_;
  std::vector<std::string> stops_;
  std::string held_;  // decoded text not yet released
  bool stopped_ = false;
};

}  // namespace nextserve::router
