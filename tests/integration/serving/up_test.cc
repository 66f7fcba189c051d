// `nextserve up` as a user runs it: a killed rank (kill -9) does not stop the cluster. The
// supervisor restarts it on its port (expert-parallel: the whole mpirun group), the router keeps
// serving on the other rank meanwhile and takes the restarted one back; SIGTERM then stops the
// router first, then the ranks, `up` exits 0 and none of its processes is left.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "sdk/cpp/client.h"
#include "sdk/cpp/local_cluster.h"
#include "tests/integration/serving/cluster.h"
#include "tests/integration/serving/stream_util.h"

namespace nextserve::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The processes whose parent is `pid`, with their command lines.
std::vector<std::pair<pid_t, std::string>> ChildrenOf(pid_t pid) {
  std::vector<std::pair<pid_t, std::string>> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = ReadFile(entry.path() / "stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
    if (fields.size() < 2 || std::atoi(fields[1].c_str()) != pid) continue;
    std::string cmdline = ReadFile(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    out.emplace_back(std::stoi(name), cmdline);
  }
  return out;
}

std::vector<pid_t> RankProcesses(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& [pid, cmd] : ChildrenOf(parent)) {
    if (absl::StrContains(cmd, "nextserve-rank")) out.push_back(pid);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Running (a zombie is dead: mpirun may exit before reaping its ranks, which init then reaps).
bool Alive(pid_t pid) {
  const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  const size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

// `nextserve up` as a child process, its stdout and stderr (and its children's) in files.
class Up {
 public:
  explicit Up(std::vector<std::string> flags) {
    dir_ = (std::filesystem::temp_directory_path() / absl::StrCat("nextserve_up_test_", getpid()))
               .string();
    std::filesystem::create_directories(dir_);
    const char* bin = std::getenv("NEXTSERVE_BIN_DIR");
    std::vector<std::string> argv = {absl::StrCat(bin != nullptr ? bin : "build/bin", "/nextserve"),
                                     "up"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const std::string out = dir_ + "/stdout", err = dir_ + "/stderr";
    pid_ = fork();
    if (pid_ == 0) {
      dup2(open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), STDOUT_FILENO);
      dup2(open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), STDERR_FILENO);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Up() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);  // its children get SIGTERM (PR_SET_PDEATHSIG)
      waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  pid_t pid() const { return pid_; }
  bool Running() { return pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == 0; }
  std::string Stderr() const { return ReadFile(dir_ + "/stderr"); }
  std::string Output() const {
    return ReadFile(dir_ + "/stdout") + "\n--- stderr ---\n" + Stderr();
  }
  // SIGTERM, then its exit status (-1 if it has not exited within `timeout`).
  int Terminate(absl::Duration timeout) {
    kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + timeout;
    int status = 0;
    while (absl::Now() < deadline) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
};

bool WaitRouterSees(sdk::Client& client, int ranks, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::ModelInfo> info = client.GetModelInfo({.timeout = absl::Seconds(1)});
    if (info.ok() && info->ranks() == ranks) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// Waits until `get` returns something other than `old` with `n` entries.
template <typename F>
std::vector<pid_t> WaitNewPids(F get, const std::vector<pid_t>& old, size_t n,
                               absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<pid_t> now;
  while (absl::Now() < deadline) {
    now = get();
    if (now.size() == n && now != old) return now;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return now;
}

std::vector<std::string> UpFlags(const std::string& model, int port, const std::string& mode) {
  return {"--model",
          model,
          "--mode",
          mode,
          "--ranks",
          "2",
          "--threads",
          "1",
          "--port",
          std::to_string(port),
          "--kv-blocks",
          "256",
          "--state-slots",
          "16",
          "--max-restart-backoff-s",
          "2"};
}

// Stops `up` and checks the order and that nothing is left.
void ExpectCleanStop(Up& up, const std::vector<pid_t>& processes) {
  EXPECT_EQ(up.Terminate(absl::Seconds(60)), 0) << up.Output();
  for (pid_t p : processes)
    EXPECT_FALSE(Alive(p)) << "process " << p
                           << " outlived up: " << ReadFile(absl::StrCat("/proc/", p, "/stat"));
  const std::string err = up.Stderr();
  const size_t router_stop = err.find("nextserve-router: signal 15");
  // After the stop began: a group that lost a rank had its others stopped by mpirun before.
  const size_t rank_stop =
      err.find("nextserve-rank 0: signal 15", err.find("nextserve up: stopping"));
  ASSERT_NE(router_stop, std::string::npos) << err;
  ASSERT_NE(rank_stop, std::string::npos) << err;
  EXPECT_LT(router_stop, rank_stop) << "the router must stop before the ranks\n" << err;
}

TEST(Up, ReplicaKilledIsRestartedWhileTheOtherKeepsServing) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const int port = sdk::FreeLoopbackPort();
  Up up(UpFlags(*dir, port, "replicas"));
  const std::string router = absl::StrCat("127.0.0.1:", port);
  ASSERT_TRUE(sdk::WaitForServing(router, absl::Seconds(60)).ok()) << up.Output();
  auto client = sdk::Client::Create(router);
  ASSERT_TRUE(WaitRouterSees(*client, 2, absl::Seconds(30))) << up.Output();
  const std::vector<pid_t> ranks = RankProcesses(up.pid());
  ASSERT_EQ(ranks.size(), 2u) << up.Output();

  // Four long streams, two per rank; then one rank dies.
  std::vector<std::unique_ptr<sdk::GenerateStream>> streams;
  v1::GenerateResponse r;
  for (int i = 0; i < 4; ++i) {
    v1::GenerateRequest req = IdsRequest({7, 8, 9, i}, 300);
    req.set_ignore_eos(true);
    streams.push_back(client->StartGenerate(req, {.timeout = absl::Seconds(60)}));
  }
  for (auto& s : streams) ASSERT_TRUE(s->Next(&r)) << up.Output();
  ASSERT_EQ(kill(ranks[0], SIGKILL), 0);

  // The other rank's streams run to their end; the lost rank's end UNAVAILABLE (or, where the
  // router moves requests of a lost rank to another, run to their end too).
  int ok = 0, unavailable = 0;
  for (auto& s : streams) {
    Collected c = Collect(*s);
    if (c.status.ok()) {
      ++ok;
      ASSERT_TRUE(c.final.has_value());
      EXPECT_EQ(c.tokens().size() + 1, 300u);
    } else {
      EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable) << c.status;
      ++unavailable;
    }
  }
  EXPECT_GE(ok, 2);
  EXPECT_EQ(ok + unavailable, 4);
  EXPECT_TRUE(up.Running()) << up.Output();

  // Restarted (a new process), taken back by the router, and serving.
  const std::vector<pid_t> restarted =
      WaitNewPids([&] { return RankProcesses(up.pid()); }, ranks, 2, absl::Seconds(30));
  ASSERT_EQ(restarted.size(), 2u) << up.Output();
  EXPECT_NE(restarted, ranks);
  ASSERT_TRUE(WaitRouterSees(*client, 2, absl::Seconds(30))) << up.Output();
  for (int i = 0; i < 4; ++i) {
    auto result =
        client->Generate(IdsRequest({1, 2, i}, 8), nullptr, {.timeout = absl::Seconds(30)});
    EXPECT_TRUE(result.ok()) << result.status();
  }
  const std::string err = up.Stderr();
  EXPECT_TRUE(absl::StrContains(err, "was killed by signal 9")) << err;
  EXPECT_TRUE(absl::StrContains(err, "restarting it in")) << err;
  EXPECT_TRUE(absl::StrContains(err, "is serving again")) << err;

  std::vector<pid_t> all = restarted;
  for (const auto& [pid, cmd] : ChildrenOf(up.pid())) all.push_back(pid);
  ExpectCleanStop(up, all);
}

TEST(Up, ExpertParallelGroupIsRestartedWholeWhenOneRankDies) {
  absl::StatusOr<std::string> dir = TestModelDir();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const int port = sdk::FreeLoopbackPort();
  Up up(UpFlags(*dir, port, "expert-parallel"));
  const std::string router = absl::StrCat("127.0.0.1:", port);
  ASSERT_TRUE(sdk::WaitForServing(router, absl::Seconds(60)).ok()) << up.Output();
  auto client = sdk::Client::Create(router);
  ASSERT_TRUE(WaitRouterSees(*client, 2, absl::Seconds(30))) << up.Output();
  auto mpirun = [&] {
    std::vector<pid_t> out;
    for (const auto& [pid, cmd] : ChildrenOf(up.pid())) {
      if (absl::StrContains(cmd, "mpirun")) out.push_back(pid);
    }
    return out;
  };
  const std::vector<pid_t> group = mpirun();
  ASSERT_EQ(group.size(), 1u) << up.Output();
  const std::vector<pid_t> ranks = RankProcesses(group[0]);
  ASSERT_EQ(ranks.size(), 2u) << up.Output();

  // One rank of the group dies: its communicator is broken, so the whole group starts again.
  ASSERT_EQ(kill(ranks[1], SIGKILL), 0);
  const std::vector<pid_t> new_group = WaitNewPids(mpirun, group, 1, absl::Seconds(30));
  ASSERT_EQ(new_group.size(), 1u) << up.Output();
  EXPECT_NE(new_group, group);
  EXPECT_TRUE(up.Running()) << up.Output();
  ASSERT_TRUE(WaitRouterSees(*client, 2, absl::Seconds(60))) << up.Output();
  const std::vector<pid_t> new_ranks = RankProcesses(new_group[0]);
  EXPECT_EQ(new_ranks.size(), 2u);
  for (pid_t old : ranks) EXPECT_FALSE(Alive(old)) << "rank " << old << " of the old group";
  auto result = client->Generate(IdsRequest({1, 2, 3}, 8), nullptr, {.timeout = absl::Seconds(30)});
  EXPECT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(absl::StrContains(up.Stderr(), "restarted expert-parallel group")) << up.Stderr();

  std::vector<pid_t> all = new_ranks;
  for (const auto& [pid, cmd] : ChildrenOf(up.pid())) all.push_back(pid);
  ExpectCleanStop(up, all);
}

}  // namespace
}  // namespace nextserve::testing
