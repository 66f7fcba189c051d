#include "model/safetensors.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "tests/unit/model/status_matchers.h"
#include "tests/unit/model/tiny_checkpoint.h"

namespace nextserve {
namespace {

using ::nextserve::testing::IsError;
using ::nextserve::testing::TempDir;
using ::nextserve::testing::WriteStringToFile;
constexpr auto kDataLoss = absl::StatusCode::kDataLoss;
constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

// A file image with a hand-written header and `data_size` zero bytes of data.
std::string Image(const std::string& header, size_t data_size = 0) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_size, '\0');
}

TEST(SafetensorsTest, WriterImageParsesBack) {
  SafetensorsWriter w;
  const float v[6] = {1, 2, 3, 4, 5, 6};
  w.AddFloat("b", DType::kF32, {2, 3}, v);
  w.AddFloat("a", DType::kBF16, {3}, v);
  w.Add("c", DType::kF8E4M3, {5}, std::string(5, '\x38'));
  w.Add("empty", DType::kF16, {0, 4}, "");
  const std::string image = w.Serialize();
  uint64_t n;
  std::memcpy(&n, image.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "data section must start 8-byte aligned";
  EXPECT_NE(image.find("\"__metadata__\":{\"format\":\"pt\"}"), std::string::npos);
  absl::StatusOr<std::vector<TensorHeaderEntry>> e = ParseSafetensorsImage(image, "mem");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->size(), 4u);
  // Sorted by name and packed back to back (the reference library rejects gaps).
  EXPECT_EQ((*e)[0].name, "a");
  EXPECT_EQ((*e)[0].dtype, DType::kBF16);
  EXPECT_EQ((*e)[0].begin, 0u);
  EXPECT_EQ((*e)[0].end, 6u);
  EXPECT_EQ((*e)[1].name, "b");
  EXPECT_EQ((*e)[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ((*e)[1].begin, 6u);
  EXPECT_EQ((*e)[1].end, 30u);
  EXPECT_EQ((*e)[2].name, "c");
  EXPECT_EQ((*e)[2].dtype, DType::kF8E4M3);
  EXPECT_EQ((*e)[3].name, "empty");
  EXPECT_EQ((*e)[3].begin, (*e)[3].end);
  EXPECT_EQ(image.size(), 8 + n + 35);
}

TEST(SafetensorsTest, FileRoundTripEachDtype) {
  TempDir dir;
  std::vector<float> values(37);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * static_cast<float>(i) - 3.f;
  SafetensorsWriter w;
  w.AddFloat("t.f32", DType::kF32, {37}, values.data());
  w.AddFloat("t.f16", DType::kF16, {37}, values.data());
  w.AddFloat("t.bf16", DType::kBF16, {1, 37}, values.data());
  std::string f8;
  for (int i = 0; i < 37; ++i) f8.push_back(static_cast<char>(i));
  w.Add("t.f8", DType::kF8E4M3, {37}, f8);
  const std::string path = dir.File("x.safetensors");
  ASSERT_TRUE(w.WriteFile(path).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->path(), path);
  EXPECT_EQ((*f)->tensors().size(), 4u);
  EXPECT_EQ((*f)->mapping_size(), std::filesystem::file_size(path));
  for (const char* name : {"t.f32", "t.f16", "t.bf16"}) {
    const TensorInfo* t = (*f)->Find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->numel(), 37);
    EXPECT_EQ(*t->file, path);
    EXPECT_GE(t->data, (*f)->mapping());
    EXPECT_LE(t->data + t->nbytes, (*f)->mapping() + (*f)->mapping_size());
    std::vector<float> back(37);
    ConvertToF32(t->dtype, t->data, back.data(), 37);
    EXPECT_EQ(back, values) << name;  // all values exact in every dtype
  }
  const TensorInfo* t8 = (*f)->Find("t.f8");
  ASSERT_NE(t8, nullptr);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(t8->data), t8->nbytes), f8);
  EXPECT_EQ((*f)->Find("missing"), nullptr);
}

TEST(SafetensorsTest, WriterRejectsBadTensors) {
  TempDir dir;
  SafetensorsWriter dup;
  dup.Add("x", DType::kF32, {1}, std::string(4, '\0'));
  dup.Add("x", DType::kF32, {1}, std::string(4, '\0'));
  EXPECT_TRUE(IsError(dup.WriteFile(dir.File("a")), kInvalid, {"duplicate", "'x'"}));
  SafetensorsWriter size;
  size.Add("y", DType::kF16, {3}, std::string(4, '\0'));
  EXPECT_TRUE(IsError(size.WriteFile(dir.File("b")), kInvalid, {"'y'", "needs 6 bytes"}));
}

TEST(SafetensorsTest, MetadataAndWhitespacePadding) {
  // Padding spaces after the JSON and arbitrary metadata are accepted.
  const std::string h =
      R"({"__metadata__": {"format": "pt", "x": "y"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})"
      "      ";
  absl::StatusOr<std::vector<TensorHeaderEntry>> e = ParseSafetensorsImage(Image(h, 8), "mem");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->size(), 1u);
  EXPECT_EQ((*e)[0].name, "w");
}

TEST(SafetensorsTest, RejectsCorruptHeaders) {
  const std::string kFile = "/m/x.safetensors";
  struct Case {
    const char* what;
    std::string header;
    size_t data;
    absl::StatusCode code;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"garbage", "\x01\x02not json", 0, kDataLoss, {"not valid JSON"}},
      {"truncated json", R"({"w": {"dtype": "F32")", 0, kDataLoss, {"JSON"}},
      {"array", "[1, 2]", 0, kDataLoss, {"object"}},
      {"entry not object", R"({"w": 3})", 0, kDataLoss, {"'w'", "not an object"}},
      {"missing dtype",
       R"({"w": {"shape": [1], "data_offsets": [0, 4]}})",
       4,
       kDataLoss,
       {"'w'", "dtype"}},
      {"missing shape",
       R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})",
       4,
       kDataLoss,
       {"'w'", "shape"}},
      {"missing offsets",
       R"({"w": {"dtype": "F32", "shape": [1]}})",
       4,
       kDataLoss,
       {"'w'", "data_offsets"}},
      {"negative dim",
       R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
       4,
       kDataLoss,
       {"'w'", "negative"}},
      {"float dim",
       R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})",
       4,
       kDataLoss,
       {"'w'", "non-integer"}},
      {"overflow",
       R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})",
       4,
       kDataLoss,
       {"'w'", "overflows"}},
      {"overflow bytes",
       R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 4]}})",
       4,
       kDataLoss,
       {"'w'", "overflows"}},
      {"nbytes mismatch",
       R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})",
       8,
       kDataLoss,
       {"'w'", "needs 8"}},
      {"outside data",
       R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       8,
       kDataLoss,
       {"'w'", "past the data"}},
      {"reversed",
       R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}})",
       8,
       kDataLoss,
       {"'w'"}},
      {"negative offset",
       R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})",
       8,
       kDataLoss,
       {"'w'", "data_offsets"}},
      {"three offsets",
       R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})",
       8,
       kDataLoss,
       {"'w'"}},
      {"overlap",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       12,
       kDataLoss,
       {"'b'", "overlap", "'a'"}},
      {"duplicate",
       R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
       8,
       kDataLoss,
       {"duplicate", "'a'"}},
      {"I64",
       R"({"ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})",
       8,
       kInvalid,
       {"'ids'", "I64", "unsupported"}},
      {"unknown dtype",
       R"({"w": {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 1]}})",
       8,
       kInvalid,
       {"'w'", "Q4_K", "unknown"}},
      {"metadata type", R"({"__metadata__": 3})", 0, kDataLoss, {"__metadata__"}},
  };
  for (const Case& c : cases) {
    absl::Status s = ParseSafetensorsImage(Image(c.header, c.data), kFile).status();
    ::testing::AssertionResult r = IsError(s, c.code, {kFile});
    for (const std::string& n : c.needles) {
      if (r) r = IsError(s, c.code, {n});
    }
    EXPECT_TRUE(r) << c.what;
  }
  // Header length fields that do not fit the file.
  std::string big = Image("{}");
  big[0] = 100;
  EXPECT_TRUE(IsError(ParseSafetensorsImage(big, kFile), kDataLoss, {kFile, "header length 100"}));
  std::string huge = Image("{}");
  huge[7] = 0x7f;
  EXPECT_TRUE(IsError(ParseSafetensorsImage(huge, kFile), kDataLoss, {kFile, "limit"}));
  EXPECT_TRUE(IsError(ParseSafetensorsImage("abc", kFile), kDataLoss, {kFile, "3 bytes"}));
  // Directly through the header API too.
  EXPECT_TRUE(IsError(ParseSafetensorsHeader("{", 0, kFile), kDataLoss, {kFile}));
}

TEST(SafetensorsTest, OpenRejectsTruncatedAndCorruptFiles) {
  TempDir dir;
  SafetensorsWriter w;
  std::vector<float> v(1000, 1.f);
  w.AddFloat("first", DType::kF32, {1000}, v.data());
  w.AddFloat("second", DType::kF32, {1000}, v.data());
  const std::string path = dir.File("t.safetensors");
  ASSERT_TRUE(w.WriteFile(path).ok());
  // Cut into the last tensor: an error naming it, not SIGBUS on a later read.
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
  EXPECT_TRUE(IsError(SafetensorsFile::Open(path), kDataLoss, {path, "'second'", "truncated"}));
  // Cut into the header.
  std::filesystem::resize_file(path, 20);
  EXPECT_TRUE(IsError(SafetensorsFile::Open(path), kDataLoss, {path, "header length"}));
  std::filesystem::resize_file(path, 3);
  EXPECT_TRUE(IsError(SafetensorsFile::Open(path), kDataLoss, {path, "3 bytes"}));
  std::filesystem::resize_file(path, 0);
  EXPECT_TRUE(IsError(SafetensorsFile::Open(path), kDataLoss, {path, "0 bytes"}));
  ASSERT_TRUE(WriteStringToFile(path, Image("this is not json", 0)).ok());
  EXPECT_TRUE(IsError(SafetensorsFile::Open(path), kDataLoss, {path, "JSON"}));
  EXPECT_TRUE(IsError(SafetensorsFile::Open(dir.File("nope.safetensors")),
                      absl::StatusCode::kNotFound, {dir.File("nope.safetensors")}));
  EXPECT_TRUE(IsError(SafetensorsFile::Open(dir.path()), kInvalid, {dir.path(), "regular file"}));
}

TEST(SafetensorsTest, ScopedNoReadaheadIsHarmless) {
  TempDir dir;
  SafetensorsWriter w;
  std::vector<float> v(5000, 2.f);
  w.AddFloat("x", DType::kF32, {5000}, v.data());
  ASSERT_TRUE(w.WriteFile(dir.File("x.safetensors")).ok());
  auto f = SafetensorsFile::Open(dir.File("x.safetensors"));
  ASSERT_TRUE(f.ok());
  const TensorInfo* t = (*f)->Find("x");
  std::vector<float> out(5000);
  {
    ScopedNoReadahead guard(t->data + 3, t->nbytes - 7);  // unaligned range
    ConvertToF32(DType::kF32, t->data, out.data(), 5000);
  }
  EXPECT_EQ(out, v);
  ScopedNoReadahead null_guard(nullptr, 0);
}

}  // namespace
}  // namespace nextserve
