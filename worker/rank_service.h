// nextserve.internal.v1.Rank over gRPC: bridges Submit streams, Abort and GetLoad to the Engine.
// Submit and Abort are sync methods (a thread per stream); GetLoad is a callback method, answered
// on gRPC's own threads from the engine's published snapshot, so a probe never queues behind the
// streams or waits on a step.
// Drain (SIGTERM): new Submits are refused with UNAVAILABLE, open streams may finish, and what is
// left when the grace ends is cut with UNAVAILABLE so that the router moves it to another rank.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string_view>

#include "absl/time/time.h"
#include "nextserve/internal/v1/rank.grpc.pb.h"
#include "worker/engine.h"

namespace nextserve::worker {

class RankService final : public nextserve::internal::v1::Rank::WithCallbackMethod_GetLoad<
                              nextserve::internal::v1::Rank::Service> {
 public:
  RankService(Engine* engine, int32_t rank_id) : engine_(engine), rank_id_(rank_id) {}

  grpc::Status Submit(grpc::ServerContext* context, const internal::v1::SubmitRequest* request,
                      grpc::ServerWriter<internal::v1::SubmitResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const internal::v1::AbortRequest* request,
                     internal::v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const internal::v1::LoadRequest* request,
                                    internal::v1::LoadReport* response) override;

  // From now on Submit answers UNAVAILABLE (marked draining) and GetLoad reports draining.
  void StartDrain();
  // Waits until no Submit stream is open or `deadline` passes; true when none is open.
  bool WaitIdle(absl::Time deadline);
  // Ends the open streams with UNAVAILABLE (their requests aborted, cache freed) within about one
  // poll interval, and waits for them to go.
  void CutOpenStreams();

 private:
  bool Cut() const;

  Engine* engine_;
  int32_t rank_id_;

  mutable std::mutex drain_mu_;
  std::condition_variable drain_cv_;  // a stream closed
  int open_streams_ = 0;
  std::atomic<bool> draining_{false};  // set under drain_mu_; GetLoad reads it without the lock
  bool cut_ = false;
};

// Trailing metadata of a Submit refused because the rank is draining (see rank.proto).
inline constexpr std::string_view kDrainingMetadata = "nextserve-draining";

// absl status code -> the same gRPC code, message kept.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace nextserve::worker
