#include "model/expert_placement.h"

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace nextserve {

ExpertPlacement ExpertPlacement::Contiguous(int64_t experts, int ranks) {
  ExpertPlacement p;
  p.ranks_ = ranks;
  for (int64_t e = 0; e < experts; ++e) p.owner_.push_back(static_cast<int>(e * ranks / experts));
  return p;
}

absl::StatusOr<ExpertPlacement> ExpertPlacement::FromFile(const std::string& path, int64_t experts,
                                                          int ranks) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open expert placement file ", path));
  ExpertPlacement p;
  p.ranks_ = ranks;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    absl::string_view text = line;
    if (auto hash = text.find('#'); hash != absl::string_view::npos) text = text.substr(0, hash);
    text = absl::StripAsciiWhitespace(text);
    if (text.empty()) continue;
    int rank;
    if (!absl::SimpleAtoi(text, &rank) || rank < 0 || rank >= ranks) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_no, ": '", text, "' is not a rank in [0, ", ranks, ")"));
    }
    p.owner_.push_back(rank);
  }
  if (p.experts() != experts) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": places ", p.experts(), " experts, the model has ", experts));
  }
  return p;
}

std::vector<int64_t> ExpertPlacement::ExpertsOf(int rank) const {
  std::vector<int64_t> out;
  for (int64_t e = 0; e < experts(); ++e) {
    if (owner_[e] == rank) out.push_back(e);
  }
  return out;
}

}  // namespace nextserve
