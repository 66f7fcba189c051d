// The CUDA backend's host-side planning (kernels/cuda/cuda_plan.h), on the CPU: the GEMM path per
// row count and dtype, and the MoE permutation maps the backend uploads, against hand-worked
// cases and their error cases.
#include "kernels/cuda/cuda_plan.h"

#include <vector>

#include "gtest/gtest.h"

namespace nextserve::kernels::cuda {
namespace {

TEST(CudaPlan, LinearPathByRowsAndDtype) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
    EXPECT_EQ(ChooseLinearPath(1, d), LinearPath::kFewRows);
    EXPECT_EQ(ChooseLinearPath(kFewRowsMax, d), LinearPath::kFewRows);
  }
  EXPECT_EQ(ChooseLinearPath(kFewRowsMax + 1, DType::kBF16), LinearPath::kLtHalfInputs);
  EXPECT_EQ(ChooseLinearPath(4096, DType::kF16), LinearPath::kLtHalfInputs);
  EXPECT_EQ(ChooseLinearPath(kFewRowsMax + 1, DType::kF32), LinearPath::kLtF32);
  EXPECT_EQ(ChooseLinearPath(kFewRowsMax + 1, DType::kF8E4M3), LinearPath::kLtF32);
}

// 3 tokens, top 2 of 4 experts; experts 0,1 on rank 0, 2 on rank 1, 3 on rank 2 (rank 3: none).
TEST(CudaPlan, DispatchGroupsByRankTokensInOrder) {
  const std::vector<int32_t> ids{0, 1,   // token 0: rank 0 only (one record for two experts)
                                 1, 3,   // token 1: ranks 0 and 2
                                 2, 3};  // token 2: ranks 1 and 2
  const std::vector<int32_t> owner{0, 0, 1, 2};
  DispatchPlan plan;
  ASSERT_TRUE(PlanDispatch(ids, 3, 2, owner, 4, plan).ok());
  EXPECT_EQ(plan.records_to, (std::vector<int64_t>{2, 1, 2, 0}));
  EXPECT_EQ(plan.token_of, (std::vector<int32_t>{0, 1, 2, 1, 2}));
  EXPECT_EQ(plan.rank_of, (std::vector<int32_t>{0, 0, 1, 2, 2}));
  // Nothing to send.
  ASSERT_TRUE(PlanDispatch({}, 0, 2, owner, 4, plan).ok());
  EXPECT_EQ(plan.records_to, (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_TRUE(plan.token_of.empty());
}

TEST(CudaPlan, DispatchRejectsBadIdsAndOwners) {
  DispatchPlan plan;
  const std::vector<int32_t> owner{0, 1};
  absl::Status st = PlanDispatch(std::vector<int32_t>{0, 5}, 1, 2, owner, 2, plan);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("expert 5"), std::string::npos) << st;
  st = PlanDispatch(std::vector<int32_t>{0, 1}, 1, 2, std::vector<int32_t>{0, 7}, 2, plan);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("rank 7"), std::string::npos) << st;
}

// 3 records, 2 slots each, 4 experts (expert 2 held but idle).
TEST(CudaPlan, GroupByExpertPairsAscendingByExpertRecordsInOrder) {
  const std::vector<int32_t> slots{3, -1,  //
                                   0, 3,   //
                                   0, 1};
  const bool held[4] = {true, true, true, true};
  std::vector<int32_t> pair_of(6, -7);
  std::vector<int64_t> offsets(5, -7);
  ASSERT_TRUE(PlanGroupByExpert(slots, 3, 2, 4, held, pair_of, offsets).ok());
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 2, 3, 3, 5}));
  // Expert 0: records 1, 2 -> pairs 0, 1; expert 1: record 2 -> 2; expert 3: records 0, 1 -> 3, 4.
  EXPECT_EQ(pair_of, (std::vector<int32_t>{3, -1, 0, 4, 1, 2}));
}

TEST(CudaPlan, GroupByExpertDataLossNamesTheExpert) {
  std::vector<int32_t> pair_of(2);
  std::vector<int64_t> offsets(3);
  const bool held[2] = {true, false};
  absl::Status st = PlanGroupByExpert(std::vector<int32_t>{0, 1}, 1, 2, 2, held, pair_of, offsets);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("expert 1, which this rank does not hold"), std::string::npos) << st;
  for (int32_t bad : {2, -2}) {
    st = PlanGroupByExpert(std::vector<int32_t>{0, bad}, 1, 2, 2, held, pair_of, offsets);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << bad;
    EXPECT_NE(st.message().find("outside [0, 2)"), std::string::npos) << st;
  }
}

TEST(CudaPlan, RecordsByTokenCsrInRecordOrder) {
  const std::vector<int32_t> token_of{2, 0, 2, 1, 0};
  std::vector<int32_t> offsets, list;
  ASSERT_TRUE(PlanRecordsByToken(token_of, 4, offsets, list).ok());
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 2, 3, 5, 5}));  // token 3: sent nowhere
  EXPECT_EQ(list, (std::vector<int32_t>{1, 4, 3, 0, 2}));
  const absl::Status st = PlanRecordsByToken(std::vector<int32_t>{0, 4}, 4, offsets, list);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("token 4"), std::string::npos) << st;
}

}  // namespace
}  // namespace nextserve::kernels::cuda
