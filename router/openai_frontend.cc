#include "router/openai_frontend.h"

#include <atomic>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "router/openai_api.h"

namespace nextserve::router {
namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

void SendError(HttpResponse& response, const openai::HttpError& error) {
  response.Send(error.status, "application/json", error.body);
}

std::string RequestId(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  return absl::StrCat(prefix, absl::Hex(salt & 0xffffffff, absl::kZeroPad8), absl::Hex(counter++));
}

}  // namespace

// One Generate call: streams the router's responses into the HTTP response as they arrive.
class OpenAiFrontend::GenerateCall final : public grpc::ClientReadReactor<v1::GenerateResponse>,
                                           public std::enable_shared_from_this<GenerateCall> {
 public:
  GenerateCall(OpenAiFrontend* frontend, openai::ParsedRequest parsed,
               std::shared_ptr<HttpResponse> response)
      : frontend_(frontend),
        parsed_(std::move(parsed)),
        response_(std::move(response)),
        builder_(parsed_, frontend->tokenizer_,
                 RequestId(parsed_.endpoint == openai::Endpoint::kChat ? "chatcmpl-" : "cmpl-"),
                 absl::ToUnixSeconds(absl::Now())) {}

  void Start(const std::string& authorization) {
    self_ = shared_from_this();  // until OnDone
    if (!authorization.empty()) ctx_.AddMetadata("authorization", authorization);
    std::weak_ptr<GenerateCall> weak = self_;
    response_->OnClose([weak] {
      if (auto call = weak.lock()) call->Cancel();
    });
    frontend_->stub_->async()->Generate(&ctx_, &parsed_.request, this);
    StartRead(&msg_);
    StartCall();
  }

  void Cancel() { ctx_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (msg_.has_delta()) {
      if (parsed_.stream) {
        StartEventsOnce();
        for (const std::string& chunk : builder_.DeltaChunks(msg_.delta())) response_->Event(chunk);
      } else {
        builder_.Add(msg_.delta());
      }
    } else if (msg_.has_final()) {
      final_ = msg_.final();
      have_final_ = true;
    }
    StartRead(&msg_);
  }

  void OnDone(const grpc::Status& status) override {
    if (status.ok() && have_final_) {
      if (parsed_.stream) {
        StartEventsOnce();
        for (const std::string& chunk : builder_.FinalChunks(final_)) response_->Event(chunk);
        response_->Event("[DONE]");
        response_->End();
      } else {
        response_->Send(200, "application/json", builder_.Whole(final_));
      }
    } else {
      const absl::Status error =
          status.ok() ? absl::InternalError("the stream ended without a Final") : FromGrpc(status);
      const openai::HttpError http = openai::ErrorFor(error);
      if (events_started_) {
        // Headers are gone: the error travels as an event, as OpenAI's own streams do.
        response_->Event(http.body);
        response_->End();
      } else {
        SendError(*response_, http);
      }
    }
    OpenAiFrontend* frontend = frontend_;
    self_.reset();  // may destroy this
    frontend->Leave();
  }

 private:
  void StartEventsOnce() {
    if (events_started_) return;
    events_started_ = true;
    response_->StartEvents();
  }

  OpenAiFrontend* const frontend_;
  openai::ParsedRequest parsed_;
  std::shared_ptr<HttpResponse> response_;
  openai::ResponseBuilder builder_;
  grpc::ClientContext ctx_;
  v1::GenerateResponse msg_;
  v1::Final final_;
  bool have_final_ = false;
  bool events_started_ = false;
  std::shared_ptr<GenerateCall> self_;
};

OpenAiFrontend::OpenAiFrontend(std::shared_ptr<grpc::Channel> channel,
                               const tokenizer::Tokenizer& tokenizer, std::string model_name,
                               std::function<int()> serving_ranks)
    : stub_(v1::Inference::NewStub(std::move(channel))),
      tokenizer_(tokenizer),
      model_name_(std::move(model_name)),
      created_(absl::ToUnixSeconds(absl::Now())),
      serving_ranks_(std::move(serving_ranks)) {}

OpenAiFrontend::~OpenAiFrontend() {
  Shutdown();
}

bool OpenAiFrontend::Enter() {
  std::lock_guard lock(mu_);
  if (stopping_) return false;
  ++in_flight_;
  return true;
}

void OpenAiFrontend::Leave() {
  std::lock_guard lock(mu_);
  if (--in_flight_ == 0) idle_.notify_all();
}

void OpenAiFrontend::Shutdown() {
  std::vector<std::weak_ptr<GenerateCall>> calls;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    calls.swap(calls_);
  }
  for (auto& weak : calls) {  // outside the lock: a cancelled call's OnDone takes it
    if (auto call = weak.lock()) call->Cancel();
  }
  std::unique_lock lock(mu_);
  idle_.wait(lock, [this] { return in_flight_ == 0; });
}

void OpenAiFrontend::Handle(HttpRequest request, std::shared_ptr<HttpResponse> response) {
  std::string path = request.target.substr(0, request.target.find('?'));
  if (path.size() > 1 && path.back() == '/') path.pop_back();
  const bool post = request.method == "POST", get = request.method == "GET";
  if (path == "/v1/chat/completions" || path == "/v1/completions") {
    if (!post)
      return SendError(*response, openai::MakeError(405, "invalid_request_error", "use POST"));
    return Generate(request, std::move(response), path == "/v1/chat/completions");
  }
  if (path == "/v1/models" && get) return Models(request, std::move(response));
  if (path == "/health" && get) return Health(std::move(response));
  SendError(*response,
            openai::MakeError(404, "not_found_error",
                              absl::StrCat(request.method, " ", path, ": no such endpoint")));
}

void OpenAiFrontend::Generate(const HttpRequest& request, std::shared_ptr<HttpResponse> response,
                              bool chat) {
  absl::StatusOr<openai::ParsedRequest> parsed =
      chat ? openai::ParseChatCompletions(request.body) : openai::ParseCompletions(request.body);
  if (!parsed.ok()) return SendError(*response, openai::ErrorFor(parsed.status()));
  // The name as served, or its last path component (a directory given as --model).
  const std::string_view base = std::string_view(model_name_).substr(model_name_.rfind('/') + 1);
  if (parsed->model != model_name_ && parsed->model != base) {
    return SendError(
        *response,
        openai::MakeError(404, "not_found_error",
                          absl::StrCat("model '", parsed->model,
                                       "' does not exist; this server serves '", model_name_, "'"),
                          "model"));
  }
  if (!Enter()) {
    return SendError(*response,
                     openai::MakeError(503, "service_unavailable", "the router is shutting down"));
  }
  auto call = std::make_shared<GenerateCall>(this, *std::move(parsed), std::move(response));
  {
    std::lock_guard lock(mu_);
    std::erase_if(calls_, [](const std::weak_ptr<GenerateCall>& w) { return w.expired(); });
    calls_.push_back(call);
  }
  auto auth = request.headers.find("authorization");
  call->Start(auth == request.headers.end() ? std::string() : auth->second);
}

void OpenAiFrontend::Models(const HttpRequest& request, std::shared_ptr<HttpResponse> response) {
  struct Call {
    grpc::ClientContext ctx;
    v1::GetModelInfoRequest request;
    v1::ModelInfo info;
  };
  if (!Enter()) {
    return SendError(*response, openai::MakeError(503, "service_unavailable", "shutting down"));
  }
  auto call = std::make_shared<Call>();
  call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (auto auth = request.headers.find("authorization"); auth != request.headers.end())
    call->ctx.AddMetadata("authorization", auth->second);
  stub_->async()->GetModelInfo(
      &call->ctx, &call->request, &call->info, [this, call, response](grpc::Status status) {
        if (status.ok()) {
          response->Send(200, "application/json",
                         openai::ModelsJson(model_name_, created_, call->info.max_context()));
        } else {
          SendError(*response, openai::ErrorFor(FromGrpc(status)));
        }
        Leave();
      });
}

void OpenAiFrontend::Health(std::shared_ptr<HttpResponse> response) {
  const int ranks = serving_ranks_ ? serving_ranks_() : 0;
  if (ranks > 0) {
    response->Send(200, "application/json", absl::StrCat(R"({"status":"ok","ranks":)", ranks, "}"));
  } else {
    response->Send(503, "application/json", R"({"status":"no rank serves"})");
  }
}

}  // namespace nextserve::router
