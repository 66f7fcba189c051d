#include "model/npy.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace nextserve {
namespace {

constexpr char kMagic[] = "\x93NUMPY";  // 6 bytes

// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2,
// 3), }. This parses exactly what numpy writes: string keys, and string / True / False / int-tuple
// values.
class HeaderParser {
 public:
  explicit HeaderParser(std::string_view s) : s_(s) {}

  bool Parse(std::map<std::string, std::string>* strings, std::map<std::string, bool>* bools,
             std::vector<int64_t>* shape, bool* has_shape) {
    Skip();
    if (!Eat('{')) return false;
    while (true) {
      Skip();
      if (Eat('}')) break;
      std::string key;
      if (!String(&key)) return false;
      Skip();
      if (!Eat(':')) return false;
      Skip();
      if (Peek() == '\'' || Peek() == '"') {
        std::string v;
        if (!String(&v)) return false;
        (*strings)[key] = v;
      } else if (Match("True")) {
        (*bools)[key] = true;
      } else if (Match("False")) {
        (*bools)[key] = false;
      } else if (Eat('(')) {
        if (key != "shape") return false;
        *has_shape = true;
        shape->clear();
        while (true) {
          Skip();
          if (Eat(')')) break;
          int64_t d;
          if (!Int(&d)) return false;
          shape->push_back(d);
          Skip();
          if (Eat(',')) continue;
          Skip();
          if (!Eat(')')) return false;
          break;
        }
      } else {
        return false;
      }
      Skip();
      if (Eat(',')) continue;
      Skip();
      if (!Eat('}')) return false;
      break;
    }
    Skip();
    return pos_ == s_.size();
  }

 private:
  char Peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  bool Eat(char c) {
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }
  bool Match(std::string_view w) {
    if (s_.substr(pos_, w.size()) != w) return false;
    pos_ += w.size();
    return true;
  }
  void Skip() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t')) ++pos_;
  }
  bool String(std::string* out) {
    const char q = Peek();
    if (q != '\'' && q != '"') return false;
    ++pos_;
    const size_t end = s_.find(q, pos_);
    if (end == std::string_view::npos) return false;
    *out = std::string(s_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return true;
  }
  bool Int(int64_t* out) {
    const size_t start = pos_;
    int64_t v = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, s_[pos_] - '0', &v)) {
        return false;
      }
      ++pos_;
    }
    *out = v;
    return pos_ > start;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<NpyArray> ReadNpyF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream buf;
  buf << in.rdbuf();
  const std::string file = buf.str();
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (file.size() < 10 || file.compare(0, 6, kMagic, 6) != 0) return bad("not a .npy file");
  const int major = static_cast<unsigned char>(file[6]);
  const int minor = static_cast<unsigned char>(file[7]);
  size_t header_len, header_start;
  if (major == 1 && minor == 0) {
    header_len = static_cast<unsigned char>(file[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(file[9])) << 8);
    header_start = 10;
  } else if (major == 2 && minor == 0) {
    if (file.size() < 12) return bad("truncated .npy header");
    header_len = 0;
    for (int i = 3; i >= 0; --i)
      header_len = (header_len << 8) | static_cast<unsigned char>(file[8 + i]);
    header_start = 12;
  } else {
    return bad(absl::StrCat("unsupported .npy version ", major, ".", minor, " (want 1.0 or 2.0)"));
  }
  if (header_len > file.size() - header_start) return bad("truncated .npy header");
  std::map<std::string, std::string> strings;
  std::map<std::string, bool> bools;
  NpyArray out;
  bool has_shape = false;
  HeaderParser parser(std::string_view(file).substr(header_start, header_len));
  if (!parser.Parse(&strings, &bools, &out.shape, &has_shape) || !has_shape ||
      !strings.count("descr") || !bools.count("fortran_order")) {
    return bad("malformed .npy header dict");
  }
  if (strings["descr"] != "<f4") {
    return bad(absl::StrCat("dtype '", strings["descr"], "' is not supported (want '<f4')"));
  }
  if (bools["fortran_order"]) return bad("Fortran-order arrays are not supported");
  uint64_t numel = 1;
  for (int64_t d : out.shape) {
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
        numel > (uint64_t{1} << 60)) {
      return bad("shape overflows");
    }
  }
  const size_t data_start = header_start + header_len;
  if (file.size() - data_start != numel * 4) {
    return bad(absl::StrCat("data is ", file.size() - data_start, " bytes but shape (",
                            absl::StrJoin(out.shape, ", "), ") of float32 needs ", numel * 4));
  }
  out.data.resize(numel);
  if (numel > 0) std::memcpy(out.data.data(), file.data() + data_start, numel * 4);
  return out;
}

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const float* data) {
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": negative dimension"));
    numel *= static_cast<uint64_t>(d);
  }
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  // numpy pads with spaces and ends with '\n' so that the data starts 64-byte aligned.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  if (header.size() > 65535)
    return absl::InvalidArgumentError(absl::StrCat(path, ": shape too long"));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot create ", path));
  out.write(kMagic, 6);
  const char version[2] = {1, 0};
  out.write(version, 2);
  const char len[2] = {static_cast<char>(header.size() & 0xff),
                       static_cast<char>(header.size() >> 8)};
  out.write(len, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(numel * 4));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

}  // namespace nextserve
