// A router and N ranks on this machine, as child processes of the caller: what `nextserve up`,
// the serving tests and the serving benchmark start. Children get free loopback ports, die with
// their parent (PR_SET_PDEATHSIG), live in their own process groups (Ctrl-C reaches only the
// parent, which stops them in order), and are stopped with SIGTERM, then SIGKILL after a grace.
// With a restart policy a supervisor thread restarts a child that dies, on the same port, with
// capped exponential backoff; the router re-probes its ranks and takes a restarted one back.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace nextserve::sdk {

// What happens when a child dies after the cluster has started.
struct RestartPolicy {
  bool enabled = false;  // false: a dead child stays dead (CheckExited reports it)
  // The wait before a restart; it doubles for each run in a row that died within stable_after
  // (a crash loop, logged as such), up to max_backoff.
  absl::Duration initial_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(30);
  // A child that ran at least this long before it died is not in a crash loop: its restart
  // waits initial_backoff again.
  absl::Duration stable_after = absl::Seconds(30);
  // Where the supervisor reports deaths and restarts (one line each); default: stderr.
  std::function<void(const std::string&)> log;
};

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
  // Polled while stopping: true skips the rest of the grace (SIGKILL now).
  std::function<bool()> cancelled;
  RestartPolicy restart;
};

class LocalCluster {
 public:
  // Starts the ranks and the router and waits until the router reports every rank healthy; then
  // the supervisor (with options.restart.enabled).
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(LocalClusterOptions options);
  ~LocalCluster() { Stop(); }
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  // The supervisor first (nothing is restarted from here on), then the router (so that its
  // clients get a clean end and it does not see its ranks go), then the ranks together. Each
  // child's process group is killed once the child is gone, and the processes it started (an
  // mpirun's ranks) are waited for (SIGKILL past the grace): nothing is left behind.
  void Stop();

  const std::string& router_address() const { return router_.address; }
  pid_t router_pid() const;
  int num_ranks() const { return static_cast<int>(ranks_.size()); }
  // Stays the same across restarts.
  const std::string& rank_address(int i) const { return ranks_[i].address; }
  // -1 while the rank is down. Expert-parallel: every rank's process is the group's mpirun.
  pid_t rank_pid(int i) const;
  // Expert-parallel: the group's mpirun, which signals (and on a death ends) the group.
  void SignalRank(int i, int signal);
  void KillRank(int i);  // SIGKILL (the process group) and reap; the supervisor restarts it
  // How often the supervisor restarted rank i (expert-parallel: the group) / the router.
  int rank_restarts(int i) const;
  int router_restarts() const;

  // Without a restart policy: reaps children that exited and describes the first (e.g. "rank1
  // (127.0.0.1:4000) was killed by signal 9"), or nullopt if all still run. With one the
  // supervisor reaps them and this returns nullopt.
  std::optional<std::string> CheckExited();
  // The end of every child's log (with log_dir).
  std::string Logs() const;

 private:
  struct Child {
    std::string name, address, log;
    std::vector<std::string> argv, env;  // how to start it again
    pid_t pid = -1;
    absl::Time started;
    // Supervision: restarts so far, runs in a row that died within stable_after, when the
    // pending restart is due (InfinitePast: none), and whether it has answered health since.
    int restarts = 0;
    int quick_deaths = 0;
    absl::Time restart_at = absl::InfinitePast();
    bool confirmed = true;
  };
  LocalCluster() = default;
  absl::Status Spawn(Child& child);
  absl::Status WaitServing(Child& child, absl::Time deadline);
  void StopGroup(const std::vector<Child*>& group);
  std::vector<Child*> Children();  // the router, then the rank processes
  // Reaps `child` if it exited (killing what is left of its process group); its wait status.
  std::optional<int> ReapIfExited(Child& child);
  void Supervise();
  // Counts the death (a crash loop if quick) and sets when the child starts again; logs it.
  void ScheduleRestart(Child& child, const std::string& death);
  void Log(const std::string& line) const;

  LocalClusterOptions options_;
  std::vector<Child> ranks_;  // expert-parallel: ranks_[0] holds the group's mpirun
  Child router_;

  mutable std::mutex mu_;  // the children's pids and supervision state
  std::condition_variable wake_;
  bool stopping_ = false;  // Stop() has begun: nothing is restarted
  bool exited_ = false;    // every child is gone: the supervisor thread ends
  std::thread supervisor_;
};

// A free TCP port on 127.0.0.1 (bound, then released for a child to take).
int FreeLoopbackPort();

}  // namespace nextserve::sdk
