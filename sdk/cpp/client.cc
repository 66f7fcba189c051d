#include "sdk/cpp/client.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace nextserve::sdk {
namespace {

void Apply(const CallOptions& options, grpc::ClientContext* ctx) {
  if (options.timeout != absl::InfiniteDuration()) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  }
}

// `max_backoff_ms` bounds the wait between reconnection attempts to a server that is not up yet.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, int max_backoff_ms = 1000,
                                           const ConnectOptions& options = {}) {
  grpc::ChannelArguments args;
  if (!options.server_name.empty()) args.SetSslTargetNameOverride(options.server_name);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(100, max_backoff_ms));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(
      address, options.credentials ? options.credentials : grpc::InsecureChannelCredentials(),
      args);
}

}  // namespace

absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

GenerateStream::~GenerateStream() {
  if (reader_ != nullptr && !finished_) {
    ctx_.TryCancel();
    Finish().IgnoreError();  // cancelled on purpose: the status says so and nothing more
  }
}

bool GenerateStream::Next(v1::GenerateResponse* response) {
  if (finished_ || reader_ == nullptr) return false;
  return reader_->Read(response);
}

absl::Status GenerateStream::Finish() {
  if (finished_) return status_;
  finished_ = true;
  v1::GenerateResponse drop;
  while (reader_->Read(&drop)) {
  }
  status_ = FromGrpc(reader_->Finish());
  return status_;
}

Client::Client(std::shared_ptr<grpc::Channel> channel, std::string api_key)
    : channel_(std::move(channel)),
      api_key_(std::move(api_key)),
      stub_(v1::Inference::NewStub(channel_)) {}

void Client::Prepare(const CallOptions& options, grpc::ClientContext* ctx) const {
  Apply(options, ctx);
  if (!api_key_.empty()) ctx->AddMetadata("authorization", "Bearer " + api_key_);
}

std::unique_ptr<Client> Client::Create(const std::string& address, const ConnectOptions& options) {
  return std::unique_ptr<Client>(new Client(MakeChannel(address, 1000, options), options.api_key));
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& address,
                                                        absl::Duration connect_timeout,
                                                        const ConnectOptions& options) {
  std::unique_ptr<Client> client = Create(address, options);
  if (!client->channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + connect_timeout))) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", address, " within ",
                                               absl::FormatDuration(connect_timeout)));
  }
  return client;
}

std::unique_ptr<GenerateStream> Client::StartGenerate(const v1::GenerateRequest& request,
                                                      const CallOptions& options) {
  std::unique_ptr<GenerateStream> stream(new GenerateStream);
  Prepare(options, &stream->ctx_);
  stream->reader_ = stub_->Generate(&stream->ctx_, request);
  return stream;
}

absl::StatusOr<GenerateResult> Client::Generate(
    const v1::GenerateRequest& request,
    const std::function<bool(const v1::GenerateResponse&)>& on_response,
    const CallOptions& options) {
  std::unique_ptr<GenerateStream> stream = StartGenerate(request, options);
  GenerateResult result;
  v1::GenerateResponse response;
  bool has_final = false;
  while (stream->Next(&response)) {
    result.request_id = response.request_id();
    if (response.has_delta()) {
      result.text += response.delta().text();
      result.token_ids.insert(result.token_ids.end(), response.delta().token_ids().begin(),
                              response.delta().token_ids().end());
      result.logprobs.insert(result.logprobs.end(), response.delta().logprobs().begin(),
                             response.delta().logprobs().end());
    } else if (response.has_final()) {
      result.final = response.final();
      has_final = true;
    }
    if (on_response && !on_response(response)) {
      stream->Cancel();
      stream->Finish().IgnoreError();  // the caller's cancel is the outcome
      return absl::CancelledError("cancelled by the caller");
    }
  }
  if (absl::Status s = stream->Finish(); !s.ok()) return s;
  if (!has_final) return absl::InternalError("the stream ended without a Final message");
  return result;
}

absl::StatusOr<std::vector<int32_t>> Client::Tokenize(const std::string& text,
                                                      const CallOptions& options) {
  grpc::ClientContext ctx;
  Prepare(options, &ctx);
  v1::TokenizeRequest request;
  request.set_text(text);
  v1::TokenizeResponse response;
  if (grpc::Status s = stub_->Tokenize(&ctx, request, &response); !s.ok()) return FromGrpc(s);
  return std::vector<int32_t>(response.ids().begin(), response.ids().end());
}

absl::StatusOr<std::vector<int32_t>> Client::TokenizeChat(const v1::Chat& chat,
                                                          const CallOptions& options) {
  grpc::ClientContext ctx;
  Prepare(options, &ctx);
  v1::TokenizeRequest request;
  *request.mutable_chat() = chat;
  v1::TokenizeResponse response;
  if (grpc::Status s = stub_->Tokenize(&ctx, request, &response); !s.ok()) return FromGrpc(s);
  return std::vector<int32_t>(response.ids().begin(), response.ids().end());
}

absl::StatusOr<std::string> Client::Detokenize(const std::vector<int32_t>& ids,
                                               bool skip_special_tokens,
                                               const CallOptions& options) {
  grpc::ClientContext ctx;
  Prepare(options, &ctx);
  v1::DetokenizeRequest request;
  request.mutable_ids()->Add(ids.begin(), ids.end());
  request.set_skip_special_tokens(skip_special_tokens);
  v1::DetokenizeResponse response;
  if (grpc::Status s = stub_->Detokenize(&ctx, request, &response); !s.ok()) return FromGrpc(s);
  return response.text();
}

absl::StatusOr<v1::ModelInfo> Client::GetModelInfo(const CallOptions& options) {
  grpc::ClientContext ctx;
  Prepare(options, &ctx);
  v1::ModelInfo info;
  if (grpc::Status s = stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info); !s.ok())
    return FromGrpc(s);
  return info;
}

namespace {

absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& service, const CallOptions& options) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  Apply(options, &ctx);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  if (grpc::Status s = stub->Check(&ctx, request, &response); !s.ok()) return FromGrpc(s);
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace

absl::StatusOr<bool> Client::IsServing(const std::string& service, const CallOptions& options) {
  return CheckHealth(channel_, service, options);
}

absl::Status WaitForServing(const std::string& address, absl::Duration timeout,
                            const std::string& service) {
  const absl::Time deadline = absl::Now() + timeout;
  std::shared_ptr<grpc::Channel> channel = MakeChannel(address, /*max_backoff_ms=*/100);
  absl::Status last = absl::UnavailableError("not checked yet");
  while (absl::Now() < deadline) {
    // Waiting on the channel's state makes this thread poll its connection attempts; a plain
    // call on a channel still connecting is only woken by gRPC's 5 s backup poller.
    channel->WaitForConnected(
        absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Milliseconds(200))));
    absl::StatusOr<bool> serving =
        CheckHealth(channel, service, {.timeout = absl::Milliseconds(500)});
    if (serving.ok() && *serving) return absl::OkStatus();
    last = serving.ok() ? absl::UnavailableError("NOT_SERVING") : serving.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      address, " is not serving after ", absl::FormatDuration(timeout), ": ", last.message()));
}

}  // namespace nextserve::sdk
