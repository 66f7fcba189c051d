// nextserve-run as a user runs it: on a golden checkpoint it prints the reference's greedy tokens
// and writes the logits of every prompt position and generated step; bad arguments are usage
// errors.
#include <sys/wait.h>

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
  int exit_code;
  std::string out;  // stdout + stderr
};

CommandResult RunCommand(const std::string& args) {
  const std::string cmd =
      std::string(std::getenv("NEXTSERVE_BIN_DIR")) + "/nextserve-run " + args + " 2>&1";
  CommandResult run{-1, ""};
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return run;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) run.out.append(buf, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::string Golden(const std::string& name) {
  return std::string(std::getenv("NEXTSERVE_SOURCE_DIR")) + "/tests/golden/data/" + name;
}

std::string Join(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

TEST(OfflineCli, PrintsReferenceGreedyTokensAndWritesLogits) {
  const std::string dir = Golden("dense_mix");  // the sharded checkpoint
  std::ifstream in(dir + "/golden.json");
  const auto golden = nlohmann::json::parse(in);
  const auto& greedy = golden["greedy"][1];
  const auto prompt = golden["prompts"][greedy["prompt"].get<size_t>()].get<std::vector<int32_t>>();
  const auto tokens = greedy["tokens"].get<std::vector<int32_t>>();
  const std::string npy = (std::filesystem::temp_directory_path() /
                           ("offline_cli_" + std::to_string(getpid()) + ".npy"))
                              .string();
  const CommandResult run =
      RunCommand("--model " + dir + " --prompt-ids " + Join(prompt) + " --max-tokens " +
                 std::to_string(tokens.size()) + " --ignore-eos --logits-out " + npy);
  ASSERT_EQ(run.exit_code, 0) << run.out;
  EXPECT_EQ(run.out, Join(tokens) + "\n");
  auto logits = ReadNpyF32(npy);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const int64_t vocab =
      golden.contains("vocab_size") ? golden["vocab_size"].get<int64_t>() : logits->shape[1];
  ASSERT_EQ(logits->shape,
            (std::vector<int64_t>{static_cast<int64_t>(prompt.size() + tokens.size() - 1), vocab}));
  // The prompt rows equal the recorded prompt logits (same tolerance as the golden tests).
  auto ref = ReadNpyF32(dir + "/" +
                        golden["prompt_logits"][greedy["prompt"].get<size_t>()].get<std::string>());
  ASSERT_TRUE(ref.ok());
  const auto [lo, hi] = std::minmax_element(ref->data.begin(), ref->data.end());
  for (size_t i = 0; i < ref->data.size(); ++i) {
    ASSERT_NEAR(logits->data[i], ref->data[i], 1e-4 * (*hi - *lo)) << "element " << i;
  }
  std::filesystem::remove(npy);
}

TEST(OfflineCli, BadArgumentsAreUsageErrors) {
  const std::string dir = Golden("gqa");
  for (const std::string& args :
       {std::string("--prompt-ids 1,2"), "--model " + dir, "--model " + dir + " --prompt-ids 1,x",
        "--model " + dir + " --prompt-ids 1 --max-tokens 0",
        "--model " + dir + " --prompt-ids 1 --no-such-flag",
        "--model " + dir + " --prompt-ids 1 --max-tokens"}) {
    const CommandResult run = RunCommand(args);
    EXPECT_EQ(run.exit_code, 2) << args << "\n" << run.out;
    EXPECT_NE(run.out.find("usage: nextserve-run"), std::string::npos) << args;
  }
}

TEST(OfflineCli, BadModelOrTokenIsAClearError) {
  CommandResult run = RunCommand("--model /nonexistent/model --prompt-ids 1");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("/nonexistent/model"), std::string::npos) << run.out;
  run = RunCommand("--model " + Golden("gqa") + " --prompt-ids 1,999999");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.out.find("token id 999999"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace nextserve
