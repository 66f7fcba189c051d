// nextserve C++ client: a thin layer over the nextserve.v1.Inference stub that speaks absl::Status
// and adds the conveniences the CLI, tests and benchmarks share (streaming with a callback or a
// pull iterator, deadlines, health checks).
//
//   auto client = nextserve::sdk::Client::Connect("127.0.0.1:8000");
//   nextserve::v1::GenerateRequest req;
//   req.set_text("Hello");
//   req.set_max_tokens(32);
//   auto result = (*client)->Generate(req, [](const nextserve::v1::GenerateResponse& r) {
//     if (r.has_delta()) std::cout << r.delta().text() << std::flush;
//     return true;  // false cancels
//   });
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nextserve/v1/inference.grpc.pb.h"

namespace nextserve::sdk {

struct CallOptions {
  absl::Duration timeout = absl::InfiniteDuration();  // becomes the call's gRPC deadline
};

// Everything a finished Generate produced.
struct GenerateResult {
  std::string request_id;
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<v1::TokenLogprobs> logprobs;
  v1::Final final;
};

// How to reach a server that wants TLS or an API key.
struct ConnectOptions {
  std::string api_key;  // sent as `authorization: Bearer <key>` on every call
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null: plaintext
  std::string server_name;  // overrides the name checked in the server's certificate
};

// grpc::Status -> absl::Status (same code numbers).
absl::Status FromGrpc(const grpc::Status& status);

// A Generate call being read. Not thread-safe except Cancel, which any thread may call.
class GenerateStream {
 public:
  ~GenerateStream();  // cancels the call if it was not read to the end
  // The next response; false at the end of the stream (then call Finish).
  bool Next(v1::GenerateResponse* response);
  void Cancel() { ctx_.TryCancel(); }
  // The call's status; reads and drops any responses not yet read.
  absl::Status Finish();

 private:
  friend class Client;
  GenerateStream() = default;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader_;
  bool finished_ = false;
  absl::Status status_;
};

class Client {
 public:
  // `address` is host:port. Fails (Unavailable) if no connection is made within `connect_timeout`.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const std::string& address, absl::Duration connect_timeout = absl::Seconds(5),
      const ConnectOptions& options = {});
  // Without waiting for a connection (the first call connects).
  static std::unique_ptr<Client> Create(const std::string& address,
                                        const ConnectOptions& options = {});

  std::unique_ptr<GenerateStream> StartGenerate(const v1::GenerateRequest& request,
                                                const CallOptions& options = {});
  // Streams each response to `on_response` (return false to cancel: the result is then Cancelled);
  // returns the whole result once the Final arrives.
  absl::StatusOr<GenerateResult> Generate(
      const v1::GenerateRequest& request,
      const std::function<bool(const v1::GenerateResponse&)>& on_response = nullptr,
      const CallOptions& options = {});

  absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string& text,
                                                const CallOptions& options = {});
  absl::StatusOr<std::vector<int32_t>> TokenizeChat(const v1::Chat& chat,
                                                    const CallOptions& options = {});
  absl::StatusOr<std::string> Detokenize(const std::vector<int32_t>& ids,
                                         bool skip_special_tokens = false,
                                         const CallOptions& options = {});
  absl::StatusOr<v1::ModelInfo> GetModelInfo(const CallOptions& options = {});
  // grpc.health.v1 for `service` ("" = the server as a whole): true when SERVING.
  absl::StatusOr<bool> IsServing(const std::string& service = "", const CallOptions& options = {});

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  v1::Inference::Stub* stub() { return stub_.get(); }

 private:
  Client(std::shared_ptr<grpc::Channel> channel, std::string api_key);
  void Prepare(const CallOptions& options, grpc::ClientContext* ctx) const;
  std::shared_ptr<grpc::Channel> channel_;
  std::string api_key_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

// Polls grpc.health.v1 at `address` until it reports SERVING, or fails with the last error once
// `timeout` has passed. Works for routers and ranks alike.
absl::Status WaitForServing(const std::string& address, absl::Duration timeout,
                            const std::string& service = "");

}  // namespace nextserve::sdk
