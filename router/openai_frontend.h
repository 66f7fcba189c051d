// The OpenAI-compatible HTTP endpoints of the router: POST /v1/chat/completions and
// /v1/completions (streaming as server-sent events), GET /v1/models and /health. Each request is
// translated (router/openai_api.h) and sent to the router's own nextserve.v1.Inference service over
// an in-process channel, so HTTP gets exactly the gRPC path's validation, admission, balancing,
// streaming, stop strings and (when the service checks them) API keys: the `Authorization` header
// is passed on as gRPC metadata. A client that disconnects cancels its call, which aborts the
// request on its rank.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "grpcpp/grpcpp.h"
#include "nextserve/v1/inference.grpc.pb.h"
#include "router/http_server.h"
#include "tokenizer/tokenizer.h"

namespace nextserve::router {

class OpenAiFrontend {
 public:
  // `channel`: to the router's Inference service (e.g. grpc::Server::InProcessChannel).
  // `model_name`: what /v1/models lists and requests must name.
  // `serving_ranks`: how many ranks serve now (for /health, which needs no API key).
  OpenAiFrontend(std::shared_ptr<grpc::Channel> channel, const tokenizer::Tokenizer& tokenizer,
                 std::string model_name, std::function<int()> serving_ranks);
  ~OpenAiFrontend();  // Shutdown()

  void Handle(HttpRequest request, std::shared_ptr<HttpResponse> response);
  // New requests get 503; calls in flight are cancelled; returns once all have ended.
  void Shutdown();

 private:
  class GenerateCall;
  void Generate(const HttpRequest& request, std::shared_ptr<HttpResponse> response, bool chat);
  void Models(const HttpRequest& request, std::shared_ptr<HttpResponse> response);
  void Health(std::shared_ptr<HttpResponse> response);
  bool Enter();  // false once shutting down
  void Leave();

  std::unique_ptr<v1::Inference::Stub> stub_;
  const tokenizer::Tokenizer& tokenizer_;
  const std::string model_name_;
  const int64_t created_;
  const std::function<int()> serving_ranks_;

  std::mutex mu_;
  std::condition_variable idle_;
  int in_flight_ = 0;
  bool stopping_ = false;
  std::vector<std::weak_ptr<GenerateCall>> calls_;
};

}  // namespace nextserve::router
