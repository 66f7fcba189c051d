// `nextserve up`: a router and N ranks on this machine, as children of this process. It waits
// until the router sees every rank, then until Ctrl-C / SIGTERM (or a child exits), and stops them
// all: SIGTERM, then SIGKILL after a grace period. Children die with this process (PDEATHSIG), so
// nothing is left behind even if it is killed.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/flags.h"
#include "cli/serving_commands.h"
#include "sdk/cpp/client.h"

namespace nextserve::cli {
namespace {

struct Child {
  std::string name;
  pid_t pid = -1;
};

std::string ExecutableDir() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : self.parent_path().string();
}

// A free loopback port (bound, then released for the child to take).
int FreePort() {
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

absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const sigset_t& unblock,
                            const std::vector<std::string>& env) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // the parent is already gone
    sigprocmask(SIG_UNBLOCK, &unblock, nullptr);
    // Its own process group: Ctrl-C reaches only `up`, which stops the children in order.
    setpgid(0, 0);
    for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
    execv(args[0], args.data());
    std::fprintf(stderr, "nextserve up: cannot run %s\n", args[0]);
    _exit(127);
  }
  return pid;
}

// SIGTERM to each, then SIGKILL to those still running after `grace`.
void Stop(std::vector<Child*> group, absl::Duration grace) {
  for (Child* c : group) {
    if (c->pid > 0) kill(c->pid, SIGTERM);
  }
  const absl::Time deadline = absl::Now() + grace;
  for (Child* c : group) {
    while (c->pid > 0 && waitpid(c->pid, nullptr, WNOHANG) != c->pid) {
      if (absl::Now() > deadline) {
        std::fprintf(stderr, "nextserve up: %s did not stop; killing it\n", c->name.c_str());
        kill(c->pid, SIGKILL);
        waitpid(c->pid, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    c->pid = -1;
  }
}

// The router first (so that it does not see its ranks go), then the ranks together.
void StopAll(std::vector<Child>& children) {
  std::vector<Child*> ranks;
  for (size_t i = 0; i < children.size(); ++i) {
    if (children[i].name.rfind("router", 0) == 0) {
      Stop({&children[i]}, absl::Seconds(10));
    } else {
      ranks.push_back(&children[i]);
    }
  }
  Stop(ranks, absl::Seconds(10));
}

std::string Describe(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "stopped";
}

}  // namespace

int Up(int argc, char** argv) {
  std::string model = (std::filesystem::path(ExecutableDir()) / ".." / "models" / "tiny").lexically_normal().string();
  std::string host = "127.0.0.1";
  int64_t ranks = 1, port = 8000, threads = 0, kv_blocks = 0, state_slots = 0, max_batch_tokens = 0,
          max_queue = 256, timeout_s = 300;
  Flags flags("nextserve up [--model DIR] [--ranks N] [--port P] [--host H] [--threads N] ...");
  flags.String("model", &model, "model directory with config.json, weights and tokenizer.json (default: build/models/tiny)");
  flags.Int("ranks", &ranks, "rank processes to start (default 1)");
  flags.Int("port", &port, "router port (default 8000)");
  flags.String("host", &host, "router listen address (default 127.0.0.1; ranks always listen on loopback)");
  flags.Int("threads", &threads, "CPU threads per rank (default: cores / ranks)");
  flags.Int("kv-blocks", &kv_blocks, "KV blocks per rank (default: the rank's)");
  flags.Int("state-slots", &state_slots, "DeltaNet state slots per rank (default: the rank's)");
  flags.Int("max-batch-tokens", &max_batch_tokens, "tokens per engine step (default: the rank's)");
  flags.Int("max-queue", &max_queue, "requests that may wait in the router (default 256)");
  flags.Int("timeout-s", &timeout_s, "how long to wait for everything to be ready (default 300)");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return Flags::Report(s, flags);
  if (ranks < 1 || ranks > 64) return Flags::Report(absl::InvalidArgumentError("--ranks must be in [1, 64]"), flags);
  if (port < 1 || port > 65535) return Flags::Report(absl::InvalidArgumentError("--port must be in [1, 65535]"), flags);
  for (const char* file : {"config.json", "tokenizer.json"}) {
    if (!std::filesystem::exists(std::filesystem::path(model) / file)) {
      std::fprintf(stderr, "error: %s has no %s%s\n", model.c_str(), file,
                   std::string(file) == "tokenizer.json"
                       ? " (copy the model's tokenizer there, e.g. build/tokenizer/qwen/tokenizer.json)"
                       : " (make one: nextserve-make-model --out DIR --preset tiny)");
      return 1;
    }
  }
  if (threads == 0) {
    threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) / ranks);
  }

  // SIGINT, SIGTERM and SIGCHLD are taken by sigtimedwait below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGCHLD);
  sigprocmask(SIG_BLOCK, &signals, nullptr);

  const std::string bin = ExecutableDir();
  std::vector<Child> children;
  std::vector<std::string> rank_addresses;
  const std::vector<std::string> env = {absl::StrCat("OMP_NUM_THREADS=", threads)};
  for (int i = 0; i < ranks; ++i) {
    const std::string address = absl::StrCat("127.0.0.1:", FreePort());
    std::vector<std::string> args = {bin + "/nextserve-rank", "--model", model, "--host", "127.0.0.1",
                                     "--port", address.substr(address.find(':') + 1), "--threads",
                                     std::to_string(threads), "--rank-id", std::to_string(i)};
    if (kv_blocks > 0) args.insert(args.end(), {"--kv-blocks", std::to_string(kv_blocks)});
    if (state_slots > 0) args.insert(args.end(), {"--state-slots", std::to_string(state_slots)});
    if (max_batch_tokens > 0) args.insert(args.end(), {"--max-batch-tokens", std::to_string(max_batch_tokens)});
    absl::StatusOr<pid_t> pid = Spawn(args, signals, env);
    if (!pid.ok()) {
      StopAll(children);
      std::fprintf(stderr, "error: %s\n", std::string(pid.status().message()).c_str());
      return 1;
    }
    children.push_back({absl::StrCat("rank ", i, " (", address, ")"), *pid});
    rank_addresses.push_back(address);
  }
  const std::string router_address = absl::StrCat(host, ":", port);
  absl::StatusOr<pid_t> router =
      Spawn({bin + "/nextserve-router", "--model", model, "--ranks", absl::StrJoin(rank_addresses, ","), "--host",
             host, "--port", std::to_string(port), "--max-queue", std::to_string(max_queue)},
            signals, {});
  if (!router.ok()) {
    StopAll(children);
    std::fprintf(stderr, "error: %s\n", std::string(router.status().message()).c_str());
    return 1;
  }
  children.insert(children.begin(), {absl::StrCat("router (", router_address, ")"), *router});

  // Ready when the router answers and sees every rank; a child that dies first is an error.
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + absl::Seconds(timeout_s);
  const std::string probe_address = absl::StrCat(host == "0.0.0.0" ? "127.0.0.1" : host, ":", port);
  std::unique_ptr<sdk::Client> client = sdk::Client::Create(probe_address);
  bool ready = false;
  int exit_code = 0;
  for (;;) {
    timespec tick{0, 100 * 1000 * 1000};
    siginfo_t info;
    const int sig = sigtimedwait(&signals, &info, &tick);
    if (sig == SIGINT || sig == SIGTERM) {
      std::fprintf(stderr, "\nnextserve up: stopping\n");
      break;
    }
    bool died = false;
    for (Child& c : children) {
      int status;
      if (c.pid > 0 && waitpid(c.pid, &status, WNOHANG) == c.pid) {
        std::fprintf(stderr, "nextserve up: %s %s; stopping\n", c.name.c_str(), Describe(status).c_str());
        c.pid = -1;
        died = true;
      }
    }
    if (died) {
      exit_code = 1;
      break;
    }
    if (!ready) {
      // Waiting on the channel makes this thread drive the connection attempt (gRPC otherwise
      // notices a server that came up only at its 5 s backup poll).
      client->channel()->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Milliseconds(50)));
      absl::StatusOr<v1::ModelInfo> info = client->GetModelInfo({.timeout = absl::Milliseconds(500)});
      if (info.ok() && info->ranks() == ranks) {
        ready = true;
        std::printf("nextserve up: router at %s, %lld rank%s, model %s (ready in %.1f s). Ctrl-C stops.\n",
                    probe_address.c_str(), static_cast<long long>(ranks), ranks == 1 ? "" : "s", model.c_str(),
                    absl::ToDoubleSeconds(absl::Now() - start));
        std::fflush(stdout);
      } else if (absl::Now() > deadline) {
        std::fprintf(stderr, "nextserve up: not ready after %lld s; stopping\n", static_cast<long long>(timeout_s));
        exit_code = 1;
        break;
      }
    }
  }
  StopAll(children);
  return exit_code;
}

}  // namespace nextserve::cli
