#include "model/checkpoint.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "tests/unit/model/status_matchers.h"
#include "tests/unit/model/tiny_checkpoint.h"

namespace nextserve {
namespace {

using ::nextserve::testing::IsError;
using ::nextserve::testing::TempDir;
using ::nextserve::testing::WriteStringToFile;
constexpr auto kDataLoss = absl::StatusCode::kDataLoss;
constexpr auto kNotFound = absl::StatusCode::kNotFound;
constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

absl::Status WriteShard(const std::string& path, const std::vector<std::string>& names) {
  SafetensorsWriter w;
  for (const std::string& n : names) {
    const float v[2] = {1.f, static_cast<float>(n.size())};
    w.AddFloat(n, DType::kF32, {2}, v);
  }
  return w.WriteFile(path);
}

TEST(CheckpointTest, SingleFile) {
  TempDir dir;
  ASSERT_TRUE(WriteShard(dir.File("model.safetensors"), {"b", "a", "c"}).ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->dir(), dir.path());
  EXPECT_EQ((*ck)->files().size(), 1u);
  EXPECT_EQ((*ck)->TensorNames(), (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_NE((*ck)->Find("b"), nullptr);
  EXPECT_EQ(*(*ck)->Find("b")->file, dir.File("model.safetensors"));
  EXPECT_EQ((*ck)->Find("zz"), nullptr);
}

TEST(CheckpointTest, ShardedWithIndexOpensEachShardOnce) {
  TempDir dir;
  ASSERT_TRUE(WriteShard(dir.File("s1.safetensors"), {"a", "b"}).ok());
  ASSERT_TRUE(WriteShard(dir.File("s2.safetensors"), {"c"}).ok());
  ASSERT_TRUE(WriteShard(dir.File("unused.safetensors"), {"zzz"}).ok());  // not in the index
  ASSERT_TRUE(WriteStringToFile(dir.File("model.safetensors.index.json"),
                                R"({"metadata": {"total_size": 24}, "weight_map": {
                                   "a": "s1.safetensors", "c": "s2.safetensors",
                                   "b": "s1.safetensors"}})")
                  .ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->files().size(), 2u);
  EXPECT_EQ((*ck)->TensorNames(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(*(*ck)->Find("a")->file, dir.File("s1.safetensors"));
  EXPECT_EQ(*(*ck)->Find("c")->file, dir.File("s2.safetensors"));
}

TEST(CheckpointTest, TinyCheckpointShards) {
  TempDir dir;
  testing::TinyCheckpointOptions opt;
  opt.num_shards = 3;
  ASSERT_TRUE(testing::WriteTinyCheckpoint(dir.path(), testing::TinyConfig(), opt).ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->files().size(), 3u);
  EXPECT_NE((*ck)->Find("model.layers.3.self_attn.q_proj.weight"), nullptr);
}

TEST(CheckpointTest, Errors) {
  EXPECT_TRUE(IsError(Checkpoint::Open("/nonexistent/ckpt"), kNotFound, {"/nonexistent/ckpt"}));
  TempDir dir;
  // Empty directory.
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kNotFound,
                      {dir.path(), "model.safetensors", "model.safetensors.index.json"}));
  // A file, not a directory.
  ASSERT_TRUE(WriteStringToFile(dir.File("plain"), "x").ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.File("plain")), kInvalid, {dir.File("plain")}));

  const std::string index = dir.File("model.safetensors.index.json");
  ASSERT_TRUE(WriteShard(dir.File("s1.safetensors"), {"a", "b"}).ok());
  ASSERT_TRUE(WriteShard(dir.File("s2.safetensors"), {"b", "c"}).ok());

  ASSERT_TRUE(WriteStringToFile(index, "{not json").ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kInvalid, {index}));
  ASSERT_TRUE(WriteStringToFile(index, R"({"metadata": {}})").ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kInvalid, {index, "weight_map"}));
  ASSERT_TRUE(WriteStringToFile(index, R"({"weight_map": {"a": 3}})").ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kInvalid, {index, "'a'"}));
  ASSERT_TRUE(WriteStringToFile(index, R"({"weight_map": {"a": "../s1.safetensors"}})").ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kInvalid, {index, "../s1.safetensors"}));

  // Index names a shard file that does not exist.
  ASSERT_TRUE(
      WriteStringToFile(index, R"({"weight_map": {"a": "s1.safetensors", "x": "s9.safetensors"}})")
          .ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kNotFound, {index, "s9.safetensors", "'x'"}));
  // Index maps a tensor to a shard that lacks it.
  ASSERT_TRUE(
      WriteStringToFile(
          index,
          R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s1.safetensors"}})")
          .ok());
  EXPECT_TRUE(
      IsError(Checkpoint::Open(dir.path()), kDataLoss, {index, "'c'", dir.File("s1.safetensors")}));
  // Tensor b in both shards.
  ASSERT_TRUE(
      WriteStringToFile(
          index,
          R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}})")
          .ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kDataLoss,
                      {"'b'", "both", dir.File("s1.safetensors"), dir.File("s2.safetensors")}));
  // A shard tensor the index omits.
  ASSERT_TRUE(WriteStringToFile(index, R"({"weight_map": {"a": "s1.safetensors"}})").ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kDataLoss,
                      {"'b'", dir.File("s1.safetensors"), "not listed", index}));
  // A corrupt shard: the error names the shard.
  ASSERT_TRUE(WriteStringToFile(dir.File("s1.safetensors"), "garbage!garbage").ok());
  ASSERT_TRUE(WriteStringToFile(index, R"({"weight_map": {"a": "s1.safetensors"}})").ok());
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), kDataLoss, {dir.File("s1.safetensors")}));
}

}  // namespace
}  // namespace nextserve
