// A Hugging Face model directory's tensors: model.safetensors, or shards listed by
// model.safetensors.index.json. All files are memory-mapped.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "model/safetensors.h"

namespace nextserve {

class Checkpoint {
 public:
  // Errors name the directory, the file and the tensor: missing files, an index that points at a
  // shard lacking the tensor, a tensor present in two shards, a shard tensor the index omits.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const TensorInfo* Find(std::string_view name) const;
  std::vector<std::string> TensorNames() const;  // sorted
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, const TensorInfo*> by_name_;
};

}  // namespace nextserve
