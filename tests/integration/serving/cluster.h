// Test harness for serving: a small generated model directory (random weights, a 512-id byte-level
// BPE tokenizer.json), and a cluster of real processes -- N ranks and a router on free loopback
// ports -- started as children of the test and stopped (SIGTERM, then SIGKILL) when it ends.
#pragma once

#include <signal.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nextserve/internal/v1/rank.pb.h"
#include "sdk/cpp/local_cluster.h"

namespace nextserve::testing {

// The test model: the tiny preset with vocab 512, context 2048, eos 511 (<|im_end|>). Token ids
// 0..255 are bytes, 256..508 merges of lowercase ASCII pairs, 509..511 <|endoftext|>,
// <|im_start|>, <|im_end|>. Written once per process under the temp directory.
inline constexpr int kTestVocab = 512;
inline constexpr int kTestContext = 2048;
inline constexpr int kTestEos = 511;
absl::StatusOr<std::string> TestModelDir();
// Writes that model (config.json, model.safetensors, tokenizer.json) into `dir`.
absl::Status WriteTestModel(const std::string& dir);
// Writes only tokenizer.json (the tokenizer above) into `dir`.
absl::Status WriteTestTokenizer(const std::string& dir);

struct ClusterOptions {
  int ranks = 2;
  // nextserve-fake-rank (scripted echo ranks, no model) instead of nextserve-rank.
  bool fake_ranks = false;
  // The ranks as one expert-parallel group under mpirun (experts sharded over them).
  bool expert_parallel = false;
  std::vector<std::string> rank_args;    // extra flags for every rank
  std::vector<std::string> router_args;  // extra flags for the router
  absl::Duration start_timeout = absl::Seconds(60);
  // Restart children that die (sdk::LocalCluster's supervisor); off by default.
  sdk::RestartPolicy restart;
};

// The processes (sdk::LocalCluster, logs in a temp directory) plus what tests ask of ranks.
class Cluster {
 public:
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(const std::string& model_dir,
                                                        ClusterOptions options);
  ~Cluster();

  const std::string& router_address() const { return local_->router_address(); }
  const std::string& rank_address(int i) const { return local_->rank_address(i); }
  int num_ranks() const { return local_->num_ranks(); }
  void SignalRank(int i, int signal) { local_->SignalRank(i, signal); }
  void SignalRouter(int signal) { ::kill(local_->router_pid(), signal); }
  // A child that exited (reaped), described; nullopt while all run.
  std::optional<std::string> CheckExited() { return local_->CheckExited(); }
  void KillRank(int i) { local_->KillRank(i); }
  pid_t rank_pid(int i) const { return local_->rank_pid(i); }
  pid_t router_pid() const { return local_->router_pid(); }
  int rank_restarts(int i) const { return local_->rank_restarts(i); }
  int router_restarts() const { return local_->router_restarts(); }
  // The rank's load report, asked directly (not through the router).
  absl::StatusOr<internal::v1::LoadReport> RankLoad(int i);
  // Waits until rank i reports nothing running or waiting and every block and slot free.
  absl::Status WaitRankIdle(int i, absl::Duration timeout);
  std::string Logs() const { return local_->Logs(); }

 private:
  Cluster() = default;
  std::string log_dir_;
  std::unique_ptr<sdk::LocalCluster> local_;
};

}  // namespace nextserve::testing
