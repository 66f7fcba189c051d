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
#include <filesystem>
#include <fstream>
#include <iterator>
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

// A process as /proc shows it: its parent, state letter and start time (which tells a reused pid).
struct ProcInfo {
  pid_t ppid = -1;
  char state = '?';
  std::string start_time;
};

std::optional<ProcInfo> ReadProc(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos || close + 2 >= stat.size()) return std::nullopt;
  std::istringstream fields(stat.substr(close + 2));
  std::vector<std::string> f;
  for (std::string field; fields >> field && f.size() < 20;) f.push_back(field);
  if (f.size() < 20) return std::nullopt;
  return ProcInfo{.ppid = std::atoi(f[1].c_str()), .state = f[0][0], .start_time = f[19]};
}

// The processes whose parent is `parent`, with their start times.
std::vector<std::pair<pid_t, std::string>> ChildrenOf(pid_t parent) {
  std::vector<std::pair<pid_t, std::string>> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = std::atoi(name.c_str());
    if (std::optional<ProcInfo> p = ReadProc(pid); p.has_value() && p->ppid == parent)
      out.emplace_back(pid, p->start_time);
  }
  return out;
}

// Still running (not gone, not a zombie) and the same process (same start time).
bool StillRunning(pid_t pid, const std::string& start_time) {
  std::optional<ProcInfo> p = ReadProc(pid);
  return p.has_value() && p->start_time == start_time && p->state != 'Z' && p->state != 'X';
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

absl::Status LocalCluster::Spawn(Child& child) {
  if (!options_.log_dir.empty() && child.log.empty())
    child.log =
        absl::StrCat(options_.log_dir, "/", child.name.substr(0, child.name.find(' ')), ".log");
  std::vector<char*> args;
  for (const std::string& a : child.argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_copy = child.env;  // putenv keeps the pointers
  // A restarted child appends to its log, so that the log of the death before stays readable.
  const int log_flags = O_WRONLY | O_CREAT | (child.restarts > 0 ? O_APPEND : O_TRUNC);
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
      const int fd = open(child.log.c_str(), log_flags, 0644);
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
  // Also here: a signal to the group right after fork must not miss the child.
  setpgid(pid, pid);
  child.pid = pid;
  child.started = absl::Now();
  return absl::OkStatus();
}

std::optional<int> LocalCluster::ReapIfExited(Child& child) {
  if (child.pid <= 0) return std::nullopt;
  siginfo_t info{};
  // WNOWAIT: the zombie keeps the pid (and so the process group id) reserved while we kill what
  // it left in its group. (OpenMPI gives each rank its own group; they end with their mpirun.)
  if (waitid(P_PID, child.pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0)
    return std::nullopt;
  kill(-child.pid, SIGKILL);
  int status = 0;
  waitpid(child.pid, &status, 0);
  child.pid = -1;
  return status;
}

absl::Status LocalCluster::WaitServing(Child& child, absl::Time deadline) {
  for (;;) {
    std::optional<int> status;
    {
      std::lock_guard lock(mu_);
      status = ReapIfExited(child);
    }
    if (status.has_value()) {
      return absl::UnavailableError(
          absl::StrCat(child.name, " ", Describe(*status), " while starting\n", Logs()));
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
    Child& group = c->ranks_[0];
    group.argv = {"/usr/bin/mpirun",
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
    group.argv.insert(group.argv.end(), options.rank_args.begin(), options.rank_args.end());
    group.env = options.rank_env;
    group.name = absl::StrCat("expert-parallel group (mpirun -np ", options.ranks, ", ports ", base,
                              "..", base + options.ranks - 1, ")");
    std::lock_guard lock(c->mu_);
    if (absl::Status s = c->Spawn(group); !s.ok()) return s;
  }
  for (int i = 0; i < options.ranks && !(options.expert_parallel && options.ranks > 1); ++i) {
    const int port = FreeLoopbackPort();
    Child& rank = c->ranks_.emplace_back();
    rank.address = absl::StrCat("127.0.0.1:", port);
    rank.name = absl::StrCat("rank", i, " (", rank.address, ")");
    rank.argv = {options.bin_dir + "/" + options.rank_binary,
                 "--model",
                 options.model_dir,
                 "--host",
                 "127.0.0.1",
                 "--port",
                 std::to_string(port),
                 "--rank-id",
                 std::to_string(i)};
    rank.argv.insert(rank.argv.end(), options.rank_args.begin(), options.rank_args.end());
    rank.env = options.rank_env;
    std::lock_guard lock(c->mu_);
    if (absl::Status s = c->Spawn(rank); !s.ok()) return s;
    rank_addresses.push_back(rank.address);
  }
  const int router_port = options.router_port > 0 ? options.router_port : FreeLoopbackPort();
  const std::string host = options.router_host == "0.0.0.0" ? "127.0.0.1" : options.router_host;
  Child& router = c->router_;
  router.address = absl::StrCat(host, ":", router_port);
  router.name = absl::StrCat("router (", router.address, ")");
  router.argv = {options.bin_dir + "/nextserve-router",
                 "--model",
                 options.model_dir,
                 "--ranks",
                 absl::StrJoin(rank_addresses, ","),
                 "--host",
                 options.router_host,
                 "--port",
                 std::to_string(router_port)};
  router.argv.insert(router.argv.end(), options.router_args.begin(), options.router_args.end());
  {
    std::lock_guard lock(c->mu_);
    if (absl::Status s = c->Spawn(router); !s.ok()) return s;
  }

  const absl::Time deadline = absl::Now() + options.start_timeout;
  for (Child& rank : c->ranks_) {
    if (absl::Status s = c->WaitServing(rank, deadline); !s.ok()) return s;
  }
  if (absl::Status s = c->WaitServing(c->router_, deadline); !s.ok()) return s;
  std::unique_ptr<Client> client = Client::Create(c->router_.address);
  for (;;) {
    absl::StatusOr<v1::ModelInfo> info = client->GetModelInfo({.timeout = absl::Seconds(1)});
    if (info.ok() && info->ranks() == options.ranks) break;
    if (options.cancelled && options.cancelled()) return absl::CancelledError("start cancelled");
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("the router does not see every rank\n", c->Logs()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (options.restart.enabled) c->supervisor_ = std::thread([c = c.get()] { c->Supervise(); });
  return c;
}

std::vector<LocalCluster::Child*> LocalCluster::Children() {
  std::vector<Child*> all = {&router_};
  for (Child& r : ranks_) {
    if (!r.argv.empty()) all.push_back(&r);
  }
  return all;
}

void LocalCluster::Log(const std::string& line) const {
  if (options_.restart.log) {
    options_.restart.log(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

void LocalCluster::ScheduleRestart(Child& c, const std::string& death) {
  const RestartPolicy& policy = options_.restart;
  const absl::Time now = absl::Now();
  const absl::Duration ran = now - c.started;
  c.quick_deaths = ran < policy.stable_after ? c.quick_deaths + 1 : 0;
  absl::Duration backoff = policy.initial_backoff;
  for (int k = 1; k < c.quick_deaths && backoff < policy.max_backoff; ++k) backoff *= 2;
  backoff = std::min(backoff, policy.max_backoff);
  c.restart_at = now + backoff;
  std::string line = absl::StrCat("supervisor: ", c.name, " ", death, " after ",
                                  absl::FormatDuration(absl::Trunc(ran, absl::Milliseconds(1))),
                                  "; restarting it in ", absl::FormatDuration(backoff));
  if (c.quick_deaths >= 2) {
    absl::StrAppend(&line, " (crash loop: its last ", c.quick_deaths, " runs each ended within ",
                    absl::FormatDuration(policy.stable_after), "; the wait doubles up to ",
                    absl::FormatDuration(policy.max_backoff), ")");
  }
  Log(line);
}

void LocalCluster::Supervise() {
  std::unique_lock lock(mu_);
  // Alive until the children are stopped: PR_SET_PDEATHSIG fires when the *thread* that forked a
  // child ends, so the children this thread restarted would get SIGTERM out of order.
  for (; !exited_;
       wake_.wait_for(lock, std::chrono::milliseconds(50), [this] { return exited_; })) {
    if (stopping_) continue;
    const absl::Time now = absl::Now();
    std::vector<Child*> unconfirmed;
    for (Child* c : Children()) {
      if (std::optional<int> status = ReapIfExited(*c)) {
        ScheduleRestart(*c, Describe(*status));
      } else if (c->pid <= 0 && c->restart_at != absl::InfinitePast() && now >= c->restart_at) {
        c->restart_at = absl::InfinitePast();
        ++c->restarts;
        if (absl::Status s = Spawn(*c); !s.ok()) {
          Log(absl::StrCat("supervisor: ", s.message()));
          c->restart_at = now + options_.restart.max_backoff;
        } else {
          c->confirmed = false;
          Log(absl::StrCat("supervisor: restarted ", c->name, " (pid ", c->pid, ", restart ",
                           c->restarts, ")"));
        }
      } else if (c->pid > 0 && !c->confirmed) {
        unconfirmed.push_back(c);
      }
    }
    // Health checks without the lock: a rank may take seconds to load its model.
    if (!unconfirmed.empty()) {
      std::vector<std::pair<Child*, pid_t>> checks;
      for (Child* c : unconfirmed) checks.emplace_back(c, c->pid);
      lock.unlock();
      std::vector<bool> serving;
      for (auto& [c, pid] : checks)
        serving.push_back(WaitForServing(c->address, absl::Milliseconds(50)).ok());
      lock.lock();
      for (size_t k = 0; k < checks.size(); ++k) {
        Child* c = checks[k].first;
        if (serving[k] && c->pid == checks[k].second && !c->confirmed) {
          c->confirmed = true;
          Log(absl::StrCat(
              "supervisor: ", c->name, " is serving again, ",
              absl::FormatDuration(absl::Trunc(absl::Now() - c->started, absl::Milliseconds(1))),
              " after its restart"));
        }
      }
    }
  }
}

void LocalCluster::StopGroup(const std::vector<Child*>& group) {
  std::lock_guard lock(mu_);
  // What the children started: mpirun's ranks have process groups of their own and may still be
  // exiting when mpirun is gone; waited for below, so that nothing outlives Stop().
  std::vector<std::pair<pid_t, std::string>> grandchildren;
  for (Child* c : group) {
    if (c->pid <= 0) continue;
    for (auto& g : ChildrenOf(c->pid)) grandchildren.push_back(std::move(g));
  }
  for (Child* c : group) {
    if (c->pid > 0) {
      kill(c->pid, SIGCONT);  // in case it was stopped
      kill(c->pid, SIGTERM);
    }
  }
  const absl::Time deadline = absl::Now() + options_.stop_grace;
  for (Child* c : group) {
    while (c->pid > 0 && !ReapIfExited(*c).has_value()) {
      const bool hurry = options_.cancelled && options_.cancelled();
      if (absl::Now() > deadline || hurry) {
        std::fprintf(
            stderr, "%s did not stop %s; killing it\n", c->name.c_str(),
            hurry ? "before a second interrupt"
                  : absl::StrCat("within ", absl::FormatDuration(options_.stop_grace)).c_str());
        kill(-c->pid, SIGKILL);
        waitpid(c->pid, nullptr, 0);
        c->pid = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    c->restart_at = absl::InfinitePast();
  }
  for (const auto& [pid, start_time] : grandchildren) {
    while (StillRunning(pid, start_time)) {
      if (absl::Now() > deadline) {
        std::fprintf(stderr, "process %d (started by a child) did not stop; killing it\n", pid);
        kill(pid, SIGKILL);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

void LocalCluster::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;  // the supervisor restarts nothing from here on
  }
  StopGroup({&router_});
  std::vector<Child*> ranks;
  for (Child& r : ranks_) ranks.push_back(&r);
  StopGroup(ranks);
  {
    std::lock_guard lock(mu_);
    exited_ = true;
    wake_.notify_all();
  }
  if (supervisor_.joinable()) supervisor_.join();
}

pid_t LocalCluster::router_pid() const {
  std::lock_guard lock(mu_);
  return router_.pid;
}

pid_t LocalCluster::rank_pid(int i) const {
  std::lock_guard lock(mu_);
  return (options_.expert_parallel ? ranks_[0] : ranks_[i]).pid;
}

int LocalCluster::rank_restarts(int i) const {
  std::lock_guard lock(mu_);
  return (options_.expert_parallel ? ranks_[0] : ranks_[i]).restarts;
}

int LocalCluster::router_restarts() const {
  std::lock_guard lock(mu_);
  return router_.restarts;
}

void LocalCluster::SignalRank(int i, int signal) {
  std::lock_guard lock(mu_);
  const Child& c = options_.expert_parallel ? ranks_[0] : ranks_[i];
  if (c.pid > 0) kill(c.pid, signal);
}

void LocalCluster::KillRank(int i) {
  std::lock_guard lock(mu_);
  Child& c = options_.expert_parallel ? ranks_[0] : ranks_[i];
  if (c.pid <= 0) return;
  kill(-c.pid, SIGKILL);  // its process group; mpirun's ranks (own groups) end when it is gone
  ReapIfExited(c);
  while (c.pid > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ReapIfExited(c);
  }
  if (options_.restart.enabled && !stopping_) ScheduleRestart(c, "was killed (KillRank)");
}

std::optional<std::string> LocalCluster::CheckExited() {
  if (options_.restart.enabled) return std::nullopt;
  std::lock_guard lock(mu_);
  for (Child* c : Children()) {
    if (std::optional<int> status = ReapIfExited(*c))
      return absl::StrCat(c->name, " ", Describe(*status));
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
