// nextserve.v1.Inference: validate and tokenize, queue for a rank, stream the rank's tokens back
// as text (stop strings applied), finish with usage. A watcher thread cancels the rank's stream
// within a few milliseconds of the client cancelling, its deadline passing or its rank being lost.
// A request whose rank is lost (or refuses it as UNAVAILABLE) moves to another healthy rank: before
// its first token once, after it with the prompt plus the tokens already streamed, at most
// `max_moves` times; the client's stream goes on without a gap or a duplicate.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "metrics/serving.h"
#include "nextserve/v1/inference.grpc.pb.h"
#include "router/api_keys.h"
#include "router/model_spec.h"
#include "router/rank_pool.h"
#include "router/request.h"

namespace nextserve::router {

struct ServiceOptions {
  RequestLimits limits;
  ApiKeys* api_keys = nullptr;  // not owned; null or empty: every call is admitted
  absl::Duration watch_interval = absl::Milliseconds(5);
  // How many times one request that already streamed tokens may move to another rank after its
  // rank is lost; one more loss ends it with UNAVAILABLE.
  int max_moves = 3;
  metrics::RouterMetrics* metrics = nullptr;  // not owned; null: none recorded
};

class InferenceService final : public v1::Inference::Service {
 public:
  // `model` and `pool` must outlive the service.
  InferenceService(const ModelSpec& model, RankPool& pool, ServiceOptions options = {});
  ~InferenceService() override;

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* ctx, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* ctx, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

  // Drain (SIGTERM). From StartDrain on, new Generate calls are refused with UNAVAILABLE.
  void StartDrain();
  // Waits until no Generate is in flight or `deadline` passes; true when none is.
  bool WaitIdle(absl::Time deadline);
  // Ends every Generate still in flight with UNAVAILABLE; waits until they return or `deadline`
  // (a client that stops reading can hold a write); true when none is left.
  bool CutInFlight(absl::Time deadline);

 private:
  struct ActiveCall;
  struct Progress;
  // Generate without the request-level metrics; `progress` is set once the request is valid.
  grpc::Status GenerateUnrecorded(grpc::ServerContext* ctx, const v1::GenerateRequest* request,
                                  grpc::ServerWriter<v1::GenerateResponse>* writer,
                                  std::optional<Progress>& progress);
  struct Attempt {
    grpc::Status status;
    bool movable = false;  // the rank was lost or refused it: another rank may carry on
  };

  Attempt RunOnRank(grpc::ServerContext* ctx, grpc::ServerWriter<v1::GenerateResponse>* writer,
                    const ResolvedRequest& request, const std::string& request_id,
                    const RankLease& lease, Progress& progress);
  void WatchLoop();
  absl::StatusOr<ApiKeys::Lease> Authorize(const grpc::ServerContext& ctx);

  const ModelSpec& model_;
  RankPool& pool_;
  const ServiceOptions options_;
  std::atomic<uint64_t> next_id_{0};
  const uint64_t id_salt_;

  std::mutex calls_mu_;
  std::condition_variable calls_cv_;  // a call registered, or stopping
  std::set<ActiveCall*> calls_;
  bool stopping_ = false;
  std::thread watcher_;

  std::mutex drain_mu_;
  std::condition_variable drain_cv_;  // a Generate returned
  int in_flight_ = 0;                 // guarded by drain_mu_
  bool draining_ = false;             // guarded by drain_mu_
  std::atomic<bool> cut_{false};      // set under calls_mu_ too: no call registers unseen
};

}  // namespace nextserve::router
