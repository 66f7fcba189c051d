#include "sdk/cpp/local_cluster.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sdk/cpp/client.h"

namespace nextserve::sdk {
namespace {

std::string Describe(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "stopped";
}

}  // namespace

bool PortIsFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool free = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return free;
}

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

absl::Status LocalCluster::Spawn(Child& child, const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env) {
  if (!options_.log_dir.empty())
    child.log =
        absl::StrCat(options_.log_dir, "/", child.name.substr(0, child.name.find(' ')), ".log");
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_copy = env;  // putenv keeps the pointers
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork failed for ", child.name));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);     // no orphans, even if the parent is killed
    if (getppid() != parent) _exit(127);  // the parent is already gone
    setpgid(0, 0);
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, nullptr);  // the parent may block signals it waits for
    if (!child.log.empty()) {
      const int fd = open(child.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
      }
    }
    for (std::string& e : env_copy) putenv(e.data());
    execv(args[0], args.data());
    std::fprintf(stderr, "cannot run %s\n", args[0]);
    _exit(127);
  }
  child.pid = pid;
  return absl::OkStatus();
}

absl::Status LocalCluster::WaitServing(Child& child, absl::Time deadline) {
  for (;;) {
    int status = 0;
    if (child.pid > 0 && waitpid(child.pid, &status, WNOHANG) == child.pid) {
      child.pid = -1;
      return absl::UnavailableError(
          absl::StrCat(child.name, " ", Describe(status), " while starting\n", Logs()));
    }
    if (options_.cancelled && options_.cancelled()) return absl::CancelledError("start cancelled");
    absl::Status s = WaitForServing(child.address, absl::Milliseconds(200));
    if (s.ok()) return s;
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(child.name, ": ", s.message(), "\n", Logs()));
    }
  }
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(LocalClusterOptions options) {
  std::unique_ptr<LocalCluster> c(new LocalCluster);
  c->options_ = options;
  std::vector<std::string> rank_addresses;
  if (options.expert_parallel && options.ranks > 1) {
    // One mpirun for the group; rank r listens on base + r.
    int base = 0;
    for (int attempt = 0; attempt < 50 && base == 0; ++attempt) {
      const int candidate = FreeLoopbackPort();
      bool all_free = candidate > 0 && candidate + options.ranks < 65536;
      for (int r = 1; r < options.ranks && all_free; ++r) all_free = PortIsFree(candidate + r);
      if (all_free) base = candidate;
    }
    if (base == 0) return absl::UnavailableError("no run of free loopback ports for the ranks");
    for (int i = 0; i < options.ranks; ++i) {
      Child& rank = c->ranks_.emplace_back();
      rank.address = absl::StrCat("127.0.0.1:", base + i);
      rank.name = absl::StrCat("rank", i, " (", rank.address, ")");
      rank_addresses.push_back(rank.address);
    }
    std::vector<std::string> argv = {"/usr/bin/mpirun",
                                     "--allow-run-as-root",
                                     "--oversubscribe",
                                     "--mca",
                                     "btl_vader_single_copy_mechanism",
                                     "none",
                                     "-np",
                                     std::to_string(options.ranks),
                                     options.bin_dir + "/" + options.rank_binary,
                                     "--model",
                                     options.model_dir,
                                     "--host",
                                     "127.0.0.1",
                                     "--port",
                                     std::to_string(base)};
    argv.insert(argv.end(), options.rank_args.begin(), options.rank_args.end());
    c->ranks_[0].name = absl::StrCat("expert-parallel group (mpirun -np ", options.ranks,
                                     ", ports ", base, "..", base + options.ranks - 1, ")");
    if (absl::Status s = c->Spawn(c->ranks_[0], argv, options.rank_env); !s.ok()) return s;
  }
  for (int i = 0; i < options.ranks && !(options.expert_parallel && options.ranks > 1); ++i) {
    const int port = FreeLoopbackPort();
    Child& rank = c->ranks_.emplace_back();
    rank.address = absl::StrCat("127.0.0.1:", port);
    rank.name = absl::StrCat("rank", i, " (", rank.address, ")");
    std::vector<std::string> argv = {options.bin_dir + "/" + options.rank_binary,
                                     "--model",
                                     options.model_dir,
                                     "--host",
                                     "127.0.0.1",
                                     "--port",
                                     std::to_string(port),
                                     "--rank-id",
                                     std::to_string(i)};
    argv.insert(argv.end(), options.rank_args.begin(), options.rank_args.end());
    if (absl::Status s = c->Spawn(rank, argv, options.rank_env); !s.ok()) return s;
    rank_addresses.push_back(rank.address);
  }
  const int router_port = options.router_port > 0 ? options.router_port : FreeLoopbackPort();
  const std::string host = options.router_host == "0.0.0.0" ? "127.0.0.1" : options.router_host;
  c->router_.address = absl::StrCat(host, ":", router_port);
  c->router_.name = absl::StrCat("router (", c->router_.address, ")");
  std::vector<std::string> argv = {options.bin_dir + "/nextserve-router",
                                   "--model",
                                   options.model_dir,
                                   "--ranks",
                                   absl::StrJoin(rank_addresses, ","),
                                   "--host",
                                   options.router_host,
                                   "--port",
                                   std::to_string(router_port)};
  argv.insert(argv.end(), options.router_args.begin(), options.router_args.end());
  if (absl::Status s = c->Spawn(c->router_, argv, {}); !s.ok()) return s;

  const absl::Time deadline = absl::Now() + options.start_timeout;
  for (Child& rank : c->ranks_) {
    if (absl::Status s = c->WaitServing(rank, deadline); !s.ok()) return s;
  }
  if (absl::Status s = c->WaitServing(c->router_, deadline); !s.ok()) return s;
  std::unique_ptr<Client> client = Client::Create(c->router_.address);
  for (;;) {
    absl::StatusOr<v1::ModelInfo> info = client->GetModelInfo({.timeout = absl::Seconds(1)});
    if (info.ok() && info->ranks() == options.ranks) return c;
    if (options.cancelled && options.cancelled()) return absl::CancelledError("start cancelled");
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("the router does not see every rank\n", c->Logs()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void LocalCluster::StopGroup(const std::vector<Child*>& group) {
  for (Child* c : group) {
    if (c->pid > 0) {
      kill(c->pid, SIGCONT);  // in case it was stopped
      kill(c->pid, SIGTERM);
    }
  }
  const absl::Time deadline = absl::Now() + options_.stop_grace;
  for (Child* c : group) {
    while (c->pid > 0 && waitpid(c->pid, nullptr, WNOHANG) != c->pid) {
      if (absl::Now() > deadline) {
        std::fprintf(stderr, "%s did not stop within %s; killing it\n", c->name.c_str(),
                     absl::FormatDuration(options_.stop_grace).c_str());
        kill(c->pid, SIGKILL);
        waitpid(c->pid, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    c->pid = -1;
  }
}

void LocalCluster::Stop() {
  StopGroup({&router_});
  std::vector<Child*> ranks;
  for (Child& r : ranks_) ranks.push_back(&r);
  StopGroup(ranks);
}

void LocalCluster::SignalRank(int i, int signal) {
  if (ranks_[i].pid > 0) kill(ranks_[i].pid, signal);
}

void LocalCluster::KillRank(int i) {
  Child& c = ranks_[i];
  if (c.pid <= 0) return;
  kill(c.pid, SIGKILL);
  waitpid(c.pid, nullptr, 0);
  c.pid = -1;
}

std::optional<std::string> LocalCluster::CheckExited() {
  std::vector<Child*> all = {&router_};
  for (Child& r : ranks_) all.push_back(&r);
  for (Child* c : all) {
    int status = 0;
    if (c->pid > 0 && waitpid(c->pid, &status, WNOHANG) == c->pid) {
      c->pid = -1;
      return absl::StrCat(c->name, " ", Describe(status));
    }
  }
  return std::nullopt;
}

std::string LocalCluster::Logs() const {
  std::string out;
  std::vector<const Child*> all;
  for (const Child& r : ranks_) all.push_back(&r);
  all.push_back(&router_);
  for (const Child* c : all) {
    if (c->log.empty()) continue;
    std::ifstream in(c->log);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    if (text.size() > 3000) text = "..." + text.substr(text.size() - 3000);
    absl::StrAppend(&out, "--- ", c->name, " ---\n", text, "\n");
  }
  return out;
}

}  // namespace nextserve::sdk
