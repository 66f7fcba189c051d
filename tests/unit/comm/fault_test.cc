// The watchdog under mpirun: a rank that stops answering, exits or is killed makes the others fail
// with DEADLINE_EXCEEDED within the timeout plus a margin (never a hang), naming the rank; with
// plain mpirun, a dead rank makes mpirun end the whole job at once.
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace {

struct JobResult {
  int exit_code = -1;
  double seconds = 0;
  std::string output;
  std::map<int, std::map<std::string, std::string>> results;  // rank -> key -> value
};

// Runs the fault worker on 3 ranks; `extra` goes to mpirun.
JobResult RunJob(const std::string& scenario, int timeout_ms, const std::string& extra) {
  const char* bin = std::getenv("NEXTSERVE_BIN_DIR");
  const std::string cmd = std::string("timeout 60 ") + NEXTSERVE_MPIRUN + " " + extra + " -np 3 " +
                          (bin ? bin : ".") + "/comm_fault_worker " + scenario + " " +
                          std::to_string(timeout_ms) + " 2>&1";
  JobResult run;
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return run;
  std::array<char, 4096> buf;
  while (fgets(buf.data(), buf.size(), pipe) != nullptr) run.output += buf.data();
  const int status = pclose(pipe);
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  for (absl::string_view line : absl::StrSplit(run.output, '\n')) {
    size_t at = line.find("RESULT ");
    if (at == absl::string_view::npos) continue;
    line.remove_prefix(at + 7);
    std::map<std::string, std::string> kv;
    const size_t msg = line.find(" msg=");
    if (msg != absl::string_view::npos) kv["msg"] = std::string(line.substr(msg + 5));
    for (absl::string_view f : absl::StrSplit(line.substr(0, msg), ' ')) {
      std::pair<std::string, std::string> p = absl::StrSplit(f, absl::MaxSplits('=', 1));
      kv[p.first] = p.second;
    }
    int rank = -1;
    if (absl::SimpleAtoi(kv["rank"], &rank)) run.results[rank] = kv;
  }
  return run;
}

// Ranks 0 and 2 fail with DEADLINE_EXCEEDED after about the timeout, naming rank 1 with `why`,
// and fail again at once (the communicator is poisoned).
void ExpectSurvivorsTimedOut(const JobResult& run, int timeout_ms, const std::string& why) {
  for (int rank : {0, 2}) {
    ASSERT_TRUE(run.results.count(rank)) << "rank " << rank << " did not report:\n" << run.output;
    std::map<std::string, std::string> r = run.results.at(rank);
    EXPECT_EQ(r["code"], "DEADLINE_EXCEEDED") << run.output;
    int elapsed = 0, again = 0;
    ASSERT_TRUE(absl::SimpleAtoi(r["elapsed_ms"], &elapsed));
    ASSERT_TRUE(absl::SimpleAtoi(r["again_ms"], &again));
    EXPECT_GE(elapsed, timeout_ms);
    EXPECT_LT(elapsed, timeout_ms + 1500) << "the watchdog fired late";
    EXPECT_LT(again, 50) << "a poisoned communicator must fail at once";
    EXPECT_EQ(r["again_same"], "1");
    EXPECT_NE(r["msg"].find(why), std::string::npos) << r["msg"];
    EXPECT_NE(r["msg"].find("AllToAllV"), std::string::npos) << r["msg"];
  }
}

constexpr int kTimeoutMs = 1000;

TEST(Watchdog, RankThatNeverEntersTimesOutTheOthers) {
  JobResult run = RunJob("skip", kTimeoutMs, "");
  ExpectSurvivorsTimedOut(run, kTimeoutMs, "not yet in this collective: rank 1");
  EXPECT_LT(run.seconds, 20);
}

// --enable-recovery: mpirun lets the survivors run on, so only the watchdog can end their wait.
TEST(Watchdog, RankThatExitsTimesOutTheOthers) {
  JobResult run = RunJob("exit", kTimeoutMs, "--enable-recovery");
  ExpectSurvivorsTimedOut(run, kTimeoutMs, "exited: rank 1");
  EXPECT_LT(run.seconds, 20);
}

TEST(Watchdog, KilledRankTimesOutTheOthers) {
  JobResult run = RunJob("kill", kTimeoutMs, "--enable-recovery");
  ExpectSurvivorsTimedOut(run, kTimeoutMs, "exited: rank 1");
  EXPECT_LT(run.seconds, 20);
}

// Plain mpirun: a killed rank ends the job (survivors are terminated) long before a 30 s watchdog.
TEST(Watchdog, PlainMpirunEndsTheJobWhenARankIsKilled) {
  JobResult run = RunJob("kill", 30000, "");
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_LT(run.seconds, 15) << run.output;
  EXPECT_TRUE(run.results.empty()) << "survivors should have been terminated:\n" << run.output;
}

}  // namespace
