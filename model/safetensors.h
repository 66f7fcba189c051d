// Memory-mapped safetensors files: header parsing (fuzzed), tensor lookup, and a writer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/dtype.h"

namespace nextserve {

// One entry of a safetensors header; offsets are relative to the start of the data section.
struct TensorHeaderEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Parses the JSON header of a safetensors file and checks every entry against the data section
// (known dtype, non-negative shape, nbytes == product(shape) * dtype size, offsets inside the data,
// no overlapping tensors). `__metadata__` is accepted and ignored. Errors name `source` and the
// tensor.
absl::StatusOr<std::vector<TensorHeaderEntry>> ParseSafetensorsHeader(std::string_view header_json,
                                                                      uint64_t data_size,
                                                                      std::string_view source);
// Parses a whole file image (8-byte little-endian header length, header, data). For fuzzing and
// tests.
absl::StatusOr<std::vector<TensorHeaderEntry>> ParseSafetensorsImage(std::string_view image,
                                                                     std::string_view source);

// A tensor inside a mapped file. `data` may be unaligned (safetensors offsets are arbitrary).
struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  const std::string* file = nullptr;  // path of the file holding it (owned by the SafetensorsFile)
  int64_t numel() const;
};

// A read-only mmap of one .safetensors file. Nothing is read beyond the header until a tensor's
// bytes are touched.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(std::string_view name) const;
  // The mapped range, for tests that check which pages were touched.
  const std::byte* mapping() const { return base_; }
  size_t mapping_size() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::byte* base_ = nullptr;
  size_t size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

// While alive, page faults in [data, data + nbytes) of a file mapping read only the faulting
// pages (MADV_RANDOM), so reading a header or a small tensor does not make the kernel's mmap
// read-around pull in neighbouring tensors (e.g. experts this process does not own). Restores
// MADV_NORMAL. A hint only: failures are ignored.
class ScopedNoReadahead {
 public:
  ScopedNoReadahead(const void* data, size_t nbytes);
  ~ScopedNoReadahead();
  ScopedNoReadahead(const ScopedNoReadahead&) = delete;
  ScopedNoReadahead& operator=(const ScopedNoReadahead&) = delete;

 private:
  void* begin_ = nullptr;
  size_t length_ = 0;
};

// Builds a safetensors file in memory and writes it: tensors sorted by name and packed back to
// back (the reference safetensors library rejects gaps), header padded with spaces so that the data
// section starts 8-byte aligned, `__metadata__: {"format": "pt"}` (transformers checks it).
// Serialize() writes whatever was added (tests use it to build bad files); WriteFile() first checks
// names are unique and byte counts match the shapes.
class SafetensorsWriter {
 public:
  void Add(std::string name, DType dtype, std::vector<int64_t> shape, std::string bytes);
  // Converts fp32 values to `dtype` (F32, F16 or BF16) before storing.
  void AddFloat(std::string name, DType dtype, std::vector<int64_t> shape, const float* values);
  absl::Status WriteFile(const std::string& path) const;
  std::string Serialize() const;

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<Pending> tensors_;
  absl::Status error_;  // first AddFloat misuse, reported by WriteFile
};

}  // namespace nextserve
