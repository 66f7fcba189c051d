// A router and N ranks on this machine, as child processes of the caller: what `nextserve up`,
// the serving tests and the serving benchmark start. Children get free loopback ports, die with
// their parent (PR_SET_PDEATHSIG), live in their own process groups (Ctrl-C reaches only the
// parent, which stops them in order), and are stopped with SIGTERM, then SIGKILL after a grace.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace nextserve::sdk {

struct LocalClusterOptions {
  std::string bin_dir;  // holds nextserve-router and the rank binary
  std::string model_dir;
  int ranks = 1;
  // true: the ranks are one expert-parallel group started by `mpirun -np ranks` (experts sharded
  // over them, listening on consecutive ports); false: independent ranks, each with every expert.
  bool expert_parallel = false;
  std::string rank_binary = "nextserve-rank";
  std::vector<std::string> rank_args;    // extra flags for every rank
  std::vector<std::string> router_args;  // extra flags for the router
  std::string router_host = "127.0.0.1";
  int router_port = 0;                // 0: a free one
  std::vector<std::string> rank_env;  // NAME=value for the ranks (e.g. OMP_NUM_THREADS=1)
  std::string log_dir;  // each child's stdout+stderr go to DIR/<name>.log; empty: inherited
  absl::Duration start_timeout = absl::Seconds(120);
  absl::Duration stop_grace = absl::Seconds(10);
  // Polled while starting: true abandons the start (Cancelled) and stops what was started.
  std::function<bool()> cancelled;
};

class LocalCluster {
 public:
  // Starts the ranks and the router and waits until the router reports every rank healthy.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(LocalClusterOptions options);
  ~LocalCluster() { Stop(); }
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  // The router first (so that it does not see its ranks go), then the ranks together.
  void Stop();

  const std::string& router_address() const { return router_.address; }
  pid_t router_pid() const { return router_.pid; }
  int num_ranks() const { return static_cast<int>(ranks_.size()); }
  const std::string& rank_address(int i) const { return ranks_[i].address; }
  pid_t rank_pid(int i) const { return ranks_[i].pid; }
  // Expert-parallel: rank 0's process is mpirun, which signals (and on a death ends) the group.
  void SignalRank(int i, int signal);
  void KillRank(int i);  // SIGKILL and reap

  // Reaps children that exited; describes the first (e.g. "rank 1 (127.0.0.1:4000) was killed by
  // signal 9"), or nullopt if all still run.
  std::optional<std::string> CheckExited();
  // The end of every child's log (with log_dir).
  std::string Logs() const;

 private:
  struct Child {
    std::string name, address, log;
    pid_t pid = -1;
  };
  LocalCluster() = default;
  absl::Status Spawn(Child& child, const std::vector<std::string>& argv,
                     const std::vector<std::string>& env);
  absl::Status WaitServing(Child& child, absl::Time deadline);
  void StopGroup(const std::vector<Child*>& group);

  LocalClusterOptions options_;
  std::vector<Child> ranks_;
  Child router_;
};

// A free TCP port on 127.0.0.1 (bound, then released for a child to take).
int FreeLoopbackPort();

}  // namespace nextserve::sdk
