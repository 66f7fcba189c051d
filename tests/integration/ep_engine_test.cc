// Run under `mpirun -np R`: the serving engine as one expert-parallel group. Requests land on some
// ranks and not others (all on rank 0; spread unevenly with an idle rank), and every request gets
// the tokens a single process holding all experts gives it. Nothing deadlocks; the group stops
// together.
#include <chrono>
#include <string>
#include <vector>

#include "comm/mpi_session.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/expert_placement.h"
#include "model/weights.h"
#include "worker/engine.h"

namespace nextserve::worker {
namespace {

using namespace std::chrono_literals;

comm::MpiSession* session = nullptr;

std::string Checkpoint() {
  return std::string(std::getenv("NEXTSERVE_SOURCE_DIR")) + "/tests/golden/data/gqa";
}

SubmitSpec Spec(const std::string& id, int64_t prompt_len, int64_t max_tokens, int seed) {
  SubmitSpec s;
  s.id = id;
  for (int64_t i = 0; i < prompt_len; ++i)
    s.prompt.push_back(static_cast<int32_t>((seed * 37 + i * 11) % 256));
  s.max_tokens = max_tokens;
  s.sampling.temperature = seed % 2 ? 0.0f : 0.7f;
  s.sampling.seed = seed;
  return s;
}

std::vector<int32_t> Drain(OutputChannel& ch) {
  std::vector<int32_t> tokens;
  RankOutput out;
  while (ch.Pop(&out, 60s)) {
    tokens.insert(tokens.end(), out.tokens.begin(), out.tokens.end());
    if (out.finish != Finish::kNone) break;
  }
  return tokens;
}

// This rank's requests in each scenario.
std::vector<SubmitSpec> Requests(int scenario, int rank) {
  std::vector<SubmitSpec> specs;
  if (scenario == 0) {  // everything on rank 0
    if (rank == 0) {
      for (int i = 0; i < 3; ++i)
        specs.push_back(Spec("a" + std::to_string(i), 10 + 40 * i, 12, i + 1));
    }
  } else if (rank != 1) {  // uneven, rank 1 idle
    for (int i = 0; i <= rank; ++i) {
      specs.push_back(Spec("b" + std::to_string(rank) + "_" + std::to_string(i), 5 + 30 * i + rank,
                           10, 10 * rank + i));
    }
  }
  return specs;
}

TEST(ExpertParallelEngine, ShardedGroupGivesSingleProcessTokens) {
  auto test_comm =
      session->WorldCommunicator(60000ms);  // the test's own sync, apart from the engine's
  ASSERT_TRUE(test_comm.ok()) << test_comm.status();
  const int rank = (*test_comm)->rank(), ranks = (*test_comm)->size();
  auto backend = kernels::MakeCpuBackend();
  EngineOptions options;
  options.cache = {16, 256, 16};
  options.scheduler = {64, 16};

  for (int scenario = 0; scenario < 2; ++scenario) {
    const auto specs = Requests(scenario, rank);
    std::vector<std::vector<int32_t>> want;
    {
      auto all = ModelWeights::Load(Checkpoint());
      ASSERT_TRUE(all.ok()) << all.status();
      Engine alone(std::move(*all), backend.get(), options);
      for (const auto& s : specs) want.push_back(Drain(**alone.Submit(s)));
    }
    ASSERT_TRUE((*test_comm)->Barrier().ok());

    auto group_comm = session->WorldCommunicator(20000ms);
    ASSERT_TRUE(group_comm.ok());
    auto config = LoadModelConfig(Checkpoint() + "/config.json");
    const auto placement = ExpertPlacement::Contiguous(config->num_experts, ranks);
    LoadOptions load;
    load.experts = placement.ExpertsOf(rank);
    auto mine = ModelWeights::Load(Checkpoint(), load);
    ASSERT_TRUE(mine.ok()) << mine.status();
    {
      Engine group(std::move(*mine), backend.get(), options, group_comm->get(), placement);
      std::vector<std::shared_ptr<OutputChannel>> channels;
      for (const auto& s : specs) {
        auto ch = group.Submit(s);
        ASSERT_TRUE(ch.ok()) << ch.status();
        channels.push_back(*ch);
      }
      for (size_t i = 0; i < specs.size(); ++i) {
        EXPECT_EQ(Drain(*channels[i]), want[i]) << "rank " << rank << " request " << specs[i].id;
      }
      // Everyone finished its own work; then the group stops together.
      ASSERT_TRUE((*test_comm)->Barrier().ok());
    }
    ASSERT_TRUE((*test_comm)->Barrier().ok());
  }
}

}  // namespace
}  // namespace nextserve::worker

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto s = nextserve::comm::MpiSession::Start();
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
    return 1;
  }
  nextserve::worker::session = s->get();
  return RUN_ALL_TESTS();
}
