// Batching invariance through the whole stack: requests sent concurrently (so that the ranks
// batch them together, with chunked prefill) give exactly the tokens each gives alone.
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

class BatchingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = TestModelDir();
    ASSERT_TRUE(dir.ok()) << dir.status();
    // A small per-step token budget so that long prompts are prefilled in several chunks.
    // Exact compute: under load a prompt is prefilled in other pieces than alone, and the pieces'
    // attention and delta-rule sums differ in the last bits; f32 keeps those bits from ever
    // reaching a token here, while bf16's rounding of activations now and then turns one into a
    // different token (its matrix products themselves are batch-invariant: bf16_linear_test).
    auto cluster =
        Cluster::Start(*dir, {.ranks = 2,
                              .rank_args = {"--kv-blocks", "256", "--state-slots", "16",
                                            "--max-batch-tokens", "64", "--compute", "f32"}});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    client_ = sdk::Client::Create(cluster_->router_address());
  }

  // Prompts of different lengths (1 to 150 tokens) from random ids.
  static std::vector<v1::GenerateRequest> Requests(bool sampled) {
    std::mt19937 rng(11);
    std::vector<v1::GenerateRequest> out;
    for (int len : {1, 5, 17, 40, 64, 150, 9, 33}) {
      std::vector<int32_t> ids(len);
      for (int32_t& id : ids) id = static_cast<int32_t>(rng() % (kTestVocab - 3));
      v1::GenerateRequest req = IdsRequest(ids, 16);
      req.set_ignore_eos(true);
      if (sampled) {
        req.mutable_sampling()->set_temperature(0.9f);
        req.mutable_sampling()->set_top_p(0.95f);
        req.mutable_sampling()->set_seed(1000 + len);
      } else {
        req.mutable_sampling()->set_temperature(0.0f);
      }
      out.push_back(req);
    }
    return out;
  }

  void CheckInvariance(bool sampled) {
    const std::vector<v1::GenerateRequest> requests = Requests(sampled);
    std::vector<std::vector<int32_t>> alone;
    for (const auto& req : requests) {
      absl::StatusOr<sdk::GenerateResult> r = client_->Generate(req);
      ASSERT_TRUE(r.ok()) << r.status() << cluster_->Logs();
      ASSERT_EQ(r->token_ids.size(), 16u);
      alone.push_back(r->token_ids);
    }
    for (int round = 0; round < 2; ++round) {
      std::vector<absl::StatusOr<sdk::GenerateResult>> together(requests.size(),
                                                                absl::UnknownError(""));
      std::vector<std::thread> threads;
      for (size_t i = 0; i < requests.size(); ++i) {
        threads.emplace_back([&, i] { together[i] = client_->Generate(requests[i]); });
      }
      for (auto& t : threads) t.join();
      for (size_t i = 0; i < requests.size(); ++i) {
        ASSERT_TRUE(together[i].ok()) << together[i].status();
        EXPECT_EQ(together[i]->token_ids, alone[i])
            << "request " << i << " (prompt length " << requests[i].token_ids().ids_size()
            << "), round " << round;
      }
    }
  }

  static Cluster* cluster_;
  std::unique_ptr<sdk::Client> client_;
};
Cluster* BatchingTest::cluster_ = nullptr;

TEST_F(BatchingTest, GreedyConcurrentEqualsAlone) {
  CheckInvariance(/*sampled=*/false);
}
TEST_F(BatchingTest, SeededSamplingConcurrentEqualsAlone) {
  CheckInvariance(/*sampled=*/true);
}

TEST_F(BatchingTest, TextAndChatPromptsStreamWholeCharacters) {
  v1::GenerateRequest req;
  auto* m = req.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("héllo wörld ✓");
  req.set_max_tokens(24);
  req.set_ignore_eos(true);
  Collected c = Collect(*client_->StartGenerate(req));
  ASSERT_TRUE(c.status.ok()) << c.status;
  ASSERT_TRUE(c.final.has_value());
  EXPECT_EQ(c.final->usage().completion_tokens(), 24);
  EXPECT_EQ(c.tokens().size(), 24u);
  // The streamed text is what the tokenizer makes of the ids (special tokens left out), and every
  // delta is valid UTF-8 on its own (protobuf would refuse to parse it otherwise).
  auto text = client_->Detokenize(c.tokens(), /*skip_special_tokens=*/true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(c.text(), *text);
}

}  // namespace
}  // namespace nextserve::testing
