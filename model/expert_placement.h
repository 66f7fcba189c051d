// Which rank of an expert-parallel group holds each routed expert. Contiguous by default (rank r
// owns a block); loadable from a file so that a load-aware placement can replace it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace nextserve {

class ExpertPlacement {
 public:
  // Expert e goes to rank floor(e * ranks / experts): blocks that differ in size by at most one.
  static ExpertPlacement Contiguous(int64_t experts, int ranks);
  // A text file with one rank number per line, line e for expert e ('#' starts a comment).
  static absl::StatusOr<ExpertPlacement> FromFile(const std::string& path, int64_t experts,
                                                  int ranks);

  int owner(int64_t expert) const { return owner_[expert]; }
  int ranks() const { return ranks_; }
  int64_t experts() const { return static_cast<int64_t>(owner_.size()); }
  std::vector<int64_t> ExpertsOf(int rank) const;  // ascending

 private:
  std::vector<int> owner_;
  int ranks_ = 1;
};

}  // namespace nextserve
