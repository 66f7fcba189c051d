// nextserve.internal.v1.Rank over gRPC: bridges Submit streams, Abort and GetLoad to the Engine.
// Submit and Abort are sync methods (a thread per stream); GetLoad is a callback method, answered
// on gRPC's own threads from the engine's published snapshot, so a probe never queues behind the
// streams or waits on a step.
#pragma once

#include <memory>

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

 private:
  Engine* engine_;
  int32_t rank_id_;
};

// absl status code -> the same gRPC code, message kept.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace nextserve::worker
