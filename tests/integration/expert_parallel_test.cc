// Expert parallelism end to end: `mpirun -np R nextserve-run` with the routed experts sharded over
// R ranks (R = 1..4, including R that does not divide the expert count; ranks 1.. have no requests
// of their own) prints the reference's greedy tokens and logits within the golden tolerance of R
// = 1.
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/npy.h"
#include "nlohmann/json.hpp"

namespace nextserve {
namespace {

struct CommandResult {
  int exit_code = -1;
  std::string out;
};

CommandResult RunShell(const std::string& cmd) {
  CommandResult r;
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.out.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string Join(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

struct Case {
  std::string checkpoint;
  int ranks;
};

class ExpertParallelTest : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertParallelTest, ShardedRunMatchesSingleProcess) {
  const auto [checkpoint, ranks] = GetParam();
  const std::string dir =
      std::string(std::getenv("NEXTSERVE_SOURCE_DIR")) + "/tests/golden/data/" + checkpoint;
  std::ifstream in(dir + "/golden.json");
  const auto golden = nlohmann::json::parse(in);
  const auto& greedy = golden["greedy"][3];  // the longest prompt: several delta-rule chunks
  const auto prompt = golden["prompts"][greedy["prompt"].get<size_t>()].get<std::vector<int32_t>>();
  const auto tokens = greedy["tokens"].get<std::vector<int32_t>>();
  const std::string npy =
      (std::filesystem::temp_directory_path() /
       ("ep_" + checkpoint + "_" + std::to_string(ranks) + "_" + std::to_string(getpid()) + ".npy"))
          .string();
  const std::string cmd =
      "mpirun --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none -x "
      "OMP_NUM_THREADS=1 -np " +
      std::to_string(ranks) + " " + std::getenv("NEXTSERVE_BIN_DIR") + "/nextserve-run --model " +
      dir + " --prompt-ids " + Join(prompt) + " --max-tokens " + std::to_string(tokens.size()) +
      " --ignore-eos --logits-out " + npy;
  const CommandResult r = RunShell(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find(Join(tokens) + "\n"), std::string::npos) << r.out;
  // Prompt rows against the reference, generated rows against the reference's greedy logits.
  auto got = ReadNpyF32(npy);
  ASSERT_TRUE(got.ok()) << got.status();
  auto ref_prompt = ReadNpyF32(
      dir + "/" + golden["prompt_logits"][greedy["prompt"].get<size_t>()].get<std::string>());
  auto ref_greedy = ReadNpyF32(dir + "/" + greedy["logits"].get<std::string>());
  ASSERT_TRUE(ref_prompt.ok() && ref_greedy.ok());
  const int64_t vocab = ref_prompt->shape[1], t = ref_prompt->shape[0];
  ASSERT_EQ(got->shape, (std::vector<int64_t>{t + static_cast<int64_t>(tokens.size()) - 1, vocab}));
  std::vector<float> ref = ref_prompt->data;  // rows: prompt positions, then greedy rows 1..
  ref.insert(ref.end(), ref_greedy->data.begin() + vocab, ref_greedy->data.end());
  const auto [lo, hi] = std::minmax_element(ref.begin(), ref.end());
  float worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(got->data[i] - ref[i]));
  EXPECT_LE(worst, 1e-4f * (*hi - *lo));
  std::filesystem::remove(npy);
}

INSTANTIATE_TEST_SUITE_P(Ranks, ExpertParallelTest,
                         ::testing::Values(Case{"gqa", 1}, Case{"gqa", 2}, Case{"gqa", 3},
                                           Case{"gqa", 4}, Case{"dense_mix", 3}, Case{"bf16", 4}),
                         [](const auto& info) {
                           return info.param.checkpoint + "_R" + std::to_string(info.param.ranks);
                         });

}  // namespace
}  // namespace nextserve
