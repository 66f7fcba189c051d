#include "tokenizer/bpe.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace nextserve::tokenizer {
namespace {

// A random merge table over a 4-letter alphabet: the two merge algorithms must agree on every
// string, including long ones with many equal-rank candidates.
TEST(BpeModel, ScanAndHeapAgree) {
  std::mt19937 rng(7);
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(std::string(1, static_cast<char>(b)));
  std::vector<BpeModel::Merge> merges;
  const std::string letters = "abcd";
  std::vector<int32_t> pool = {'a', 'b', 'c', 'd'};
  for (int i = 0; i < 300; ++i) {
    const int32_t l = pool[rng() % pool.size()], r = pool[rng() % pool.size()];
    const std::string s = tokens[l] + tokens[r];
    if (s.size() > 12) continue;
    tokens.push_back(s);
    const auto id = static_cast<int32_t>(tokens.size() - 1);
    merges.push_back({l, r, id});
    pool.push_back(id);
  }
  absl::StatusOr<BpeModel> bpe = BpeModel::Create(tokens, merges, false, -1);
  ASSERT_TRUE(bpe.ok()) << bpe.status();
  for (int iter = 0; iter < 3000; ++iter) {
    std::string piece;
    for (int i = 1 + rng() % (iter % 10 == 0 ? 400 : 40); i > 0; --i)
      piece.push_back(letters[rng() % 4]);
    std::vector<int32_t> scan, heap;
    bpe->Encode(piece, &scan, BpeModel::Algorithm::kScan);
    bpe->Encode(piece, &heap, BpeModel::Algorithm::kHeap);
    ASSERT_EQ(scan, heap) << piece;
    std::string joined;
    for (int32_t id : scan) joined += tokens[id];
    ASSERT_EQ(joined, piece);
  }
}

TEST(BpeModel, LowestRankFirstLeftmostOnTies) {
  // tokens: bytes, then "aa" (rank 0), "ab" (rank 1)
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(std::string(1, static_cast<char>(b)));
  tokens.push_back("aa");
  tokens.push_back("ab");
  absl::StatusOr<BpeModel> bpe =
      BpeModel::Create(tokens, {{'a', 'a', 256}, {'a', 'b', 257}}, false, -1);
  ASSERT_TRUE(bpe.ok());
  for (auto algo : {BpeModel::Algorithm::kScan, BpeModel::Algorithm::kHeap}) {
    std::vector<int32_t> ids;
    bpe->Encode("aaab", &ids, algo);  // aa first (rank 0, leftmost), then a+b
    EXPECT_EQ(ids, (std::vector<int32_t>{256, 257}));
    ids.clear();
    bpe->Encode("aaa", &ids, algo);
    EXPECT_EQ(ids, (std::vector<int32_t>{256, 'a'}));
  }
}

}  // namespace
}  // namespace nextserve::tokenizer
