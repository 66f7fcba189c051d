#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace nextserve {
namespace {

using json = nlohmann::json;

// Same limit as the reference implementation: a larger header is a corrupt length field.
constexpr uint64_t kMaxHeaderSize = 100u << 20;

// safetensors dtypes that exist but that nextserve does not load.
constexpr std::string_view kKnownUnsupported[] = {
    "BOOL", "U8",  "I8",      "I16",     "U16", "I32",     "U32",     "I64",
    "U64",  "F64", "F8_E5M2", "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2", "C64"};

// absl here is built with its own string_view, which std::string_view does not convert to.
absl::string_view AV(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

absl::Status Corrupt(std::string_view source, std::string_view what) {
  return absl::DataLossError(absl::StrCat(AV(source), ": ", AV(what)));
}
absl::Status CorruptTensor(std::string_view source, std::string_view tensor,
                           std::string_view what) {
  return absl::DataLossError(absl::StrCat(AV(source), ": tensor '", AV(tensor), "': ", AV(what)));
}

uint64_t ReadLe64(const void* p) {
  unsigned char b[8];
  std::memcpy(b, p, 8);
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// JSON string for a tensor name; invalid UTF-8 is replaced rather than thrown on.
std::string JsonString(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<TensorHeaderEntry> ParseEntry(const std::string& name, const json& v,
                                             uint64_t data_size, std::string_view source) {
  TensorHeaderEntry e;
  e.name = name;
  if (!v.is_object()) return CorruptTensor(source, name, "header entry is not an object");
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) {
    return CorruptTensor(source, name, "missing or non-string \"dtype\"");
  }
  const std::string& dtype_name = dt->get_ref<const std::string&>();
  std::optional<DType> dtype = DTypeFromName(dtype_name);
  if (!dtype) {
    const bool known = std::find(std::begin(kKnownUnsupported), std::end(kKnownUnsupported),
                                 dtype_name) != std::end(kKnownUnsupported);
    return absl::InvalidArgumentError(
        absl::StrCat(AV(source), ": tensor '", name, "': ", known ? "unsupported" : "unknown",
                     " dtype \"", dtype_name, "\" (supported: F32, F16, BF16, F8_E4M3)"));
  }
  e.dtype = *dtype;

  auto shape = v.find("shape");
  if (shape == v.end() || !shape->is_array()) {
    return CorruptTensor(source, name, "missing or non-list \"shape\"");
  }
  uint64_t numel = 1;
  for (const json& d : *shape) {
    if (d.is_number_integer() && !d.is_number_unsigned()) {
      return CorruptTensor(source, name,
                           absl::StrCat("negative dimension in shape ", shape->dump()));
    }
    if (!d.is_number_unsigned()) {
      return CorruptTensor(source, name,
                           absl::StrCat("non-integer dimension in shape ", shape->dump()));
    }
    const uint64_t x = d.get<uint64_t>();
    if (x > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, x, &numel)) {
      return CorruptTensor(source, name, absl::StrCat("shape ", shape->dump(), " overflows"));
    }
    e.shape.push_back(static_cast<int64_t>(x));
  }
  uint64_t nbytes;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(e.dtype)), &nbytes) ||
      numel > static_cast<uint64_t>(INT64_MAX)) {
    return CorruptTensor(source, name, absl::StrCat("shape ", shape->dump(), " overflows"));
  }

  auto offsets = v.find("data_offsets");
  if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return CorruptTensor(source, name,
                         "\"data_offsets\" must be a list of two non-negative integers");
  }
  e.begin = (*offsets)[0].get<uint64_t>();
  e.end = (*offsets)[1].get<uint64_t>();
  if (e.begin > e.end) {
    return CorruptTensor(
        source, name,
        absl::StrCat("data_offsets [", e.begin, ", ", e.end, "] end before they begin"));
  }
  if (e.end > data_size) {
    return CorruptTensor(
        source, name,
        absl::StrCat("data_offsets [", e.begin, ", ", e.end, "] run past the data section (",
                     data_size, " bytes; file truncated?)"));
  }
  if (e.end - e.begin != nbytes) {
    return CorruptTensor(
        source, name,
        absl::StrCat("data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin,
                     " bytes but ", dtype_name, " ", ShapeString(e.shape), " needs ", nbytes));
  }
  return e;
}

}  // namespace

absl::StatusOr<std::vector<TensorHeaderEntry>> ParseSafetensorsHeader(std::string_view header_json,
                                                                      uint64_t data_size,
                                                                      std::string_view source) {
  // nlohmann keeps the last of duplicate keys; a duplicate tensor name must be an error, so the
  // parse callback tracks the keys of every open object.
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string duplicate;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get_ref<const std::string&>()).second &&
            duplicate.empty()) {
          duplicate = parsed.get_ref<const std::string&>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  json root;
  try {
    root =
        json::parse(header_json.begin(), header_json.end(), callback, /*allow_exceptions=*/false);
  } catch (const std::exception& e) {  // the non-throwing parse should not get here; be safe
    return Corrupt(source, absl::StrCat("header JSON: ", e.what()));
  }
  if (root.is_discarded()) return Corrupt(source, "header is not valid JSON");
  if (!root.is_object()) {
    return Corrupt(source, absl::StrCat("header must be a JSON object, got ", root.type_name()));
  }
  if (!duplicate.empty()) {
    return Corrupt(source, absl::StrCat("duplicate key '", duplicate, "' in header"));
  }
  std::vector<TensorHeaderEntry> entries;
  entries.reserve(root.size());
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object() && !it.value().is_null()) {
        return Corrupt(source, "\"__metadata__\" must be an object");
      }
      continue;
    }
    absl::StatusOr<TensorHeaderEntry> e = ParseEntry(it.key(), it.value(), data_size, source);
    if (!e.ok()) return e.status();
    entries.push_back(*std::move(e));
  }
  // Overlap check on non-empty ranges, in data order.
  std::vector<const TensorHeaderEntry*> by_offset;
  for (const TensorHeaderEntry& e : entries) {
    if (e.end > e.begin) by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return CorruptTensor(
          source, by_offset[i]->name,
          absl::StrCat("data_offsets [", by_offset[i]->begin, ", ", by_offset[i]->end,
                       "] overlap tensor '", by_offset[i - 1]->name, "' [", by_offset[i - 1]->begin,
                       ", ", by_offset[i - 1]->end, "]"));
    }
  }
  return entries;  // sorted by name (nlohmann objects are ordered maps)
}

absl::StatusOr<std::vector<TensorHeaderEntry>> ParseSafetensorsImage(std::string_view image,
                                                                     std::string_view source) {
  if (image.size() < 8) {
    return Corrupt(source, absl::StrCat("file is ", image.size(),
                                        " bytes, shorter than the 8-byte header length"));
  }
  const uint64_t n = ReadLe64(image.data());
  if (n > kMaxHeaderSize) {
    return Corrupt(
        source, absl::StrCat("header length ", n, " exceeds the ", kMaxHeaderSize, "-byte limit"));
  }
  if (n > image.size() - 8) {
    return Corrupt(source, absl::StrCat("header length ", n, " exceeds the file size ",
                                        image.size(), " (file truncated?)"));
  }
  return ParseSafetensorsHeader(image.substr(8, n), image.size() - 8 - n, source);
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

ScopedNoReadahead::ScopedNoReadahead(const void* data, size_t nbytes) {
  if (data == nullptr || nbytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + nbytes + page - 1) & ~(page - 1);
  if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_RANDOM) == 0) {
    begin_ = reinterpret_cast<void*>(begin);
    length_ = end - begin;
  }
}

ScopedNoReadahead::~ScopedNoReadahead() {
  if (begin_ != nullptr) madvise(begin_, length_, MADV_NORMAL);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot open safetensors file ", path));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    close(fd);
    return Corrupt(path,
                   absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* base = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  close(fd);  // the mapping keeps the file open
  if (base == MAP_FAILED) {
    return absl::ErrnoToStatus(map_err, absl::StrCat("cannot mmap ", path));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->base_ = static_cast<std::byte*>(base);
  file->size_ = size;

  uint64_t header_size;
  {
    ScopedNoReadahead no_ra(base, 8);
    header_size = ReadLe64(base);
  }
  if (header_size > kMaxHeaderSize || header_size > size - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_size, " exceeds the file size ",
                                      size, " (file truncated or not safetensors?)"));
  }
  // Only the header pages are read here; the data section is sized from the file, so a truncated
  // file fails the offset checks instead of raising SIGBUS later.
  absl::StatusOr<std::vector<TensorHeaderEntry>> entries;
  {
    ScopedNoReadahead no_ra(base, 8 + header_size);
    entries = ParseSafetensorsHeader(
        std::string_view(reinterpret_cast<const char*>(file->base_) + 8, header_size),
        size - 8 - header_size, path);
  }
  if (!entries.ok()) return entries.status();
  const std::byte* data = file->base_ + 8 + header_size;
  file->tensors_.reserve(entries->size());
  for (TensorHeaderEntry& e : *entries) {
    TensorInfo t;
    t.name = std::move(e.name);
    t.dtype = e.dtype;
    t.shape = std::move(e.shape);
    t.data = data + e.begin;
    t.nbytes = static_cast<size_t>(e.end - e.begin);
    t.file = &file->path_;
    file->index_.emplace(t.name, file->tensors_.size());
    file->tensors_.push_back(std::move(t));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (base_ != nullptr) munmap(base_, size_);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::string bytes) {
  tensors_.push_back({std::move(name), dtype, std::move(shape), std::move(bytes)});
}

void SafetensorsWriter::AddFloat(std::string name, DType dtype, std::vector<int64_t> shape,
                                 const float* values) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d < 0 ? 0 : d);
  std::string bytes(n * DTypeSize(dtype), '\0');
  switch (dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(bytes.data(), values, n * 4);
      break;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = F32ToF16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      break;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = F32ToBf16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      break;
    case DType::kF8E4M3:
      if (error_.ok()) {
        error_ = absl::InvalidArgumentError(
            absl::StrCat("SafetensorsWriter::AddFloat(", name, "): F8_E4M3 needs raw bytes (Add)"));
      }
      break;
  }
  Add(std::move(name), dtype, std::move(shape), std::move(bytes));
}

std::string SafetensorsWriter::Serialize() const {
  std::vector<const Pending*> sorted;
  for (const Pending& p : tensors_) sorted.push_back(&p);
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const Pending* a, const Pending* b) { return a->name < b->name; });
  std::string header = R"({"__metadata__":{"format":"pt"})";
  uint64_t offset = 0;
  for (const Pending* p : sorted) {
    absl::StrAppend(&header, ",", JsonString(p->name), ":{\"dtype\":\"", AV(DTypeName(p->dtype)),
                    "\",\"shape\":[", absl::StrJoin(p->shape, ","), "],\"data_offsets\":[", offset,
                    ",", offset + p->bytes.size(), "]}");
    offset += p->bytes.size();
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + header.size() + offset);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += header;
  for (const Pending* p : sorted) out += p->bytes;
  return out;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path) const {
  if (!error_.ok()) return error_;
  std::unordered_set<std::string> names;
  for (const Pending& p : tensors_) {
    if (!names.insert(p.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("SafetensorsWriter: duplicate tensor '", p.name, "' for ", path));
    }
    uint64_t n = 1;
    for (int64_t d : p.shape) {
      if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) {
        return absl::InvalidArgumentError(absl::StrCat("SafetensorsWriter: tensor '", p.name,
                                                       "' has bad shape ", ShapeString(p.shape)));
      }
    }
    if (n * DTypeSize(p.dtype) != p.bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SafetensorsWriter: tensor '", p.name, "' ", AV(DTypeName(p.dtype)), " ",
          ShapeString(p.shape), " needs ", n * DTypeSize(p.dtype), " bytes, got ", p.bytes.size()));
    }
  }
  const std::string image = Serialize();
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot create ", path));
  }
  size_t done = 0;
  while (done < image.size()) {
    const ssize_t w = write(fd, image.data() + done, image.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("cannot write ", path));
    }
    done += static_cast<size_t>(w);
  }
  if (close(fd) != 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot close ", path));
  }
  return absl::OkStatus();
}

}  // namespace nextserve
