#include "model/checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace nextserve {
namespace {

using json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Shard names come from a file we do not control: keep them inside the checkpoint directory.
bool IsSafeShardName(const std::string& name) {
  if (name.empty() || name.front() == '/') return false;
  size_t start = 0;
  while (start <= name.size()) {
    const size_t slash = std::min(name.find('/', start), name.size());
    const std::string_view part(name.data() + start, slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = slash + 1;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir, " does not exist"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint path ", dir, " is not a directory"));
  }
  auto ckpt = std::make_unique<Checkpoint>();
  ckpt->dir_ = dir;
  const std::string single = dir + "/" + kSingleFile;
  const std::string index_path = dir + "/" + kIndexFile;

  // Same preference as transformers: a single model.safetensors wins over an index.
  if (IsRegularFile(single)) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(single);
    if (!f.ok()) return f.status();
    for (const TensorInfo& t : (*f)->tensors()) ckpt->by_name_.emplace(t.name, &t);
    ckpt->files_.push_back(*std::move(f));
    return ckpt;
  }
  if (!IsRegularFile(index_path)) {
    return absl::NotFoundError(
        absl::StrCat("no ", kSingleFile, " or ", kIndexFile, " in checkpoint directory ", dir));
  }

  std::ifstream in(index_path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) return absl::DataLossError(absl::StrCat("cannot read ", index_path));
  const json index = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object"));
  }
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": missing or non-object field 'weight_map'"));
  }
  // tensor -> shard, and the distinct shards in sorted order (each opened once).
  std::map<std::string, std::vector<std::string>> tensors_by_shard;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map['", it.key(), "'] must be a file name string"));
    }
    const std::string& shard = it.value().get_ref<const std::string&>();
    if (!IsSafeShardName(shard)) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": weight_map['", it.key(), "'] = '", shard, "' is not a file inside ", dir));
    }
    tensors_by_shard[shard].push_back(it.key());
  }
  if (tensors_by_shard.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map is empty"));
  }
  for (const auto& [shard, names] : tensors_by_shard) {
    const std::string path = dir + "/" + shard;
    if (!IsRegularFile(path)) {
      return absl::NotFoundError(absl::StrCat(index_path, " names shard ", shard, " (for tensor '",
                                              names.front(), "'), but ", path, " does not exist"));
    }
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
    if (!f.ok()) return f.status();
    for (const std::string& name : names) {
      if ((*f)->Find(name) == nullptr) {
        return absl::DataLossError(absl::StrCat(index_path, " maps tensor '", name, "' to ", path,
                                                ", which does not contain it"));
      }
    }
    ckpt->files_.push_back(*std::move(f));
  }
  // Every shard tensor must be the one the index points at: a tensor in two shards or one the
  // index omits means the shards and the index do not belong together.
  for (const auto& file : ckpt->files_) {
    for (const TensorInfo& t : file->tensors()) {
      auto entry = wm->find(t.name);
      if (entry == wm->end()) {
        return absl::DataLossError(absl::StrCat("tensor '", t.name, "' in ", file->path(),
                                                " is not listed in ", index_path));
      }
      const std::string owner = dir + "/" + entry->get_ref<const std::string&>();
      if (owner != file->path()) {
        return absl::DataLossError(absl::StrCat("tensor '", t.name, "' is present in both ",
                                                file->path(), " and ", owner, " (", index_path,
                                                " maps it to the latter)"));
      }
      ckpt->by_name_.emplace(t.name, &t);
    }
  }
  return ckpt;
}

const TensorInfo* Checkpoint::Find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (const auto& [name, info] : by_name_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace nextserve
