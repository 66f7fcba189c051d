#include "model/npy.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "tests/unit/model/status_matchers.h"
#include "tests/unit/model/tiny_checkpoint.h"

namespace nextserve {
namespace {

using ::nextserve::testing::IsError;
using ::nextserve::testing::TempDir;
using ::nextserve::testing::WriteStringToFile;
constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

const float kValues[6] = {1.5f, -2.f, 3.25f, 0.f, 4.f, -0.5f};

// What numpy.lib.format.write_array writes for a (2, 3) '<f4' array (checked against numpy 2.4).
std::string NumpyFile(int major, const std::string& dict, const void* data, size_t nbytes) {
  const size_t preamble = major == 1 ? 10 : 12;
  std::string header = dict;
  header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  const size_t n = header.size();
  out += static_cast<char>(n & 0xff);
  out += static_cast<char>(n >> 8);
  if (major == 2) out += std::string(2, '\0');
  out += header;
  out.append(static_cast<const char*>(data), nbytes);
  return out;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const char kDict[] = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

TEST(NpyTest, WritesExactlyWhatNumpyWrites) {
  TempDir dir;
  ASSERT_TRUE(WriteNpyF32(dir.File("a.npy"), {2, 3}, kValues).ok());
  const std::string got = ReadAll(dir.File("a.npy"));
  EXPECT_EQ(got, NumpyFile(1, kDict, kValues, sizeof kValues));
  EXPECT_EQ(got.size(), 152u);  // numpy's file is 152 bytes: 128-byte header + 24 data
}

TEST(NpyTest, ReadsVersion1And2) {
  TempDir dir;
  for (int major : {1, 2}) {
    const std::string path = dir.File(major == 1 ? "v1.npy" : "v2.npy");
    ASSERT_TRUE(WriteStringToFile(path, NumpyFile(major, kDict, kValues, sizeof kValues)).ok());
    absl::StatusOr<NpyArray> a = ReadNpyF32(path);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(a->data, std::vector<float>(kValues, kValues + 6));
  }
}

TEST(NpyTest, RoundTripShapes) {
  TempDir dir;
  const std::vector<std::vector<int64_t>> shapes = {{6}, {1, 2, 3}, {}, {0, 4}, {3, 2}};
  for (const auto& shape : shapes) {
    const std::string path = dir.File("r.npy");
    ASSERT_TRUE(WriteNpyF32(path, shape, kValues).ok());
    absl::StatusOr<NpyArray> a = ReadNpyF32(path);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->shape, shape);
    size_t n = 1;
    for (int64_t d : shape) n *= d;
    EXPECT_EQ(a->data, std::vector<float>(kValues, kValues + n));
  }
  // Header spelling details numpy may use: double quotes, no trailing comma, 1-D tuple.
  const std::string path = dir.File("q.npy");
  ASSERT_TRUE(WriteStringToFile(
                  path, NumpyFile(1, R"({"shape": (6,), "fortran_order": False, "descr": "<f4"})",
                                  kValues, sizeof kValues))
                  .ok());
  absl::StatusOr<NpyArray> a = ReadNpyF32(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, std::vector<int64_t>{6});
}

TEST(NpyTest, Errors) {
  TempDir dir;
  const std::string p = dir.File("bad.npy");
  EXPECT_TRUE(IsError(ReadNpyF32(dir.File("missing.npy")), absl::StatusCode::kNotFound,
                      {dir.File("missing.npy")}));
  auto check = [&](const std::string& contents, std::initializer_list<std::string> needles) {
    ASSERT_TRUE(WriteStringToFile(p, contents).ok());
    std::vector<std::string> all(needles);
    all.push_back(p);
    absl::StatusOr<NpyArray> a = ReadNpyF32(p);
    for (const std::string& n : all)
      EXPECT_TRUE(IsError(a, kInvalid, {n})) << contents.substr(0, 80);
  };
  check("not an npy file at all", {"not a .npy"});
  check(NumpyFile(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", kValues, 24),
        {"<f8"});
  check(NumpyFile(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }", kValues, 24),
        {">f4"});
  check(NumpyFile(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", kValues, 24),
        {"<i8"});
  check(NumpyFile(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", kValues, 24),
        {"Fortran"});
  check(NumpyFile(1, kDict, kValues, 20), {"20 bytes", "needs 24"});
  check(NumpyFile(1, kDict, kValues, 24) + "xx", {"needs 24"});
  check(NumpyFile(1, "{'descr': '<f4', 'shape': (2, 3), }", kValues, 24), {"malformed"});
  check(NumpyFile(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", kValues, 24),
        {"malformed"});
  check(NumpyFile(1,
                  "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }",
                  kValues, 24),
        {"overflow"});
  std::string v3 = NumpyFile(2, kDict, kValues, 24);
  v3[6] = 3;
  check(v3, {"version 3.0"});
  std::string cut = NumpyFile(1, kDict, kValues, 24).substr(0, 40);
  check(cut, {"truncated"});
}

}  // namespace
}  // namespace nextserve
