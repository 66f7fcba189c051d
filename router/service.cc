#include "router/service.h"

#include <chrono>
#include <cstdio>
#include <random>

#include "absl/strings/str_cat.h"
#include "router/text_stream.h"

namespace nextserve::router {
namespace {

// Cache-aware routing: requests that share their first this many prompt tokens (one KV block at
// the default block size, e.g. a system prompt or the earlier turns of a conversation) prefer the
// same rank, whose prefix cache then holds them. Shorter prompts have little to reuse: no affinity.
constexpr size_t kAffinityTokens = 64;

uint64_t PrefixAffinity(const std::vector<int32_t>& prompt) {
  if (prompt.size() < kAffinityTokens) return 0;
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the token ids
  for (size_t i = 0; i < kAffinityTokens; ++i) {
    for (int b = 0; b < 4; ++b) {
      h ^= (static_cast<uint32_t>(prompt[i]) >> (8 * b)) & 0xffu;
      h *= 0x100000001b3ull;
    }
  }
  return h == 0 ? 1 : h;
}

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Time DeadlineOf(const grpc::ServerContext& ctx) {
  const auto d = ctx.deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

v1::TokenLogprobs ToPublic(int32_t token, const internal::v1::TokenLogprobs& in) {
  v1::TokenLogprobs out;
  out.set_token_id(token);
  out.set_logprob(in.logprob());
  out.set_rank(in.rank());
  for (const auto& t : in.top()) {
    v1::TopLogprob* top = out.add_top();
    top->set_token_id(t.token_id());
    top->set_logprob(t.logprob());
  }
  return out;
}

}  // namespace

// One rank call in flight; the watcher cancels it, recording why.
struct InferenceService::ActiveCall {
  enum Cause : int { kNone, kClient, kRankLost, kStopString, kDrain };
  ActiveCall(grpc::ServerContext* server, int rank, uint64_t epoch)
      : server(server), rank(rank), epoch(epoch) {}

  // The first cause wins; returns whether this call set it.
  bool Cancel(Cause why) {
    int expected = kNone;
    if (!cause.compare_exchange_strong(expected, why)) return false;
    rank_ctx.TryCancel();
    return true;
  }

  grpc::ServerContext* const server;
  grpc::ClientContext rank_ctx;
  const int rank;
  const uint64_t epoch;
  std::atomic<int> cause{kNone};
};

// A request's progress across attempts (ranks): what the client has been sent so far.
struct InferenceService::Progress {
  absl::Time arrival;
  absl::Time first_token = absl::InfiniteFuture();
  double queue_time_s = 0;
  int32_t completion_tokens = 0;
  std::vector<int32_t> generated;  // every token streamed; a moved request resubmits them
  int moves = 0;                   // times moved after its first token
  TextStream text;                 // stays here, so the text simply continues after a move
  absl::Time last_token = absl::InfiniteFuture();  // for the inter-token latency
  metrics::RouterMetrics* metrics = nullptr;
  int64_t prompt_tokens = 0;
  // Set when a Final was written: true by length, false by a stop token or string.
  std::optional<bool> finished_by_length = std::nullopt;
};

absl::StatusOr<ApiKeys::Lease> InferenceService::Authorize(const grpc::ServerContext& ctx) {
  if (options_.api_keys == nullptr) return ApiKeys::Lease();
  return options_.api_keys->Admit(ctx);
}

InferenceService::InferenceService(const ModelSpec& model, RankPool& pool, ServiceOptions options)
    : model_(model), pool_(pool), options_(options), id_salt_(std::random_device{}()) {
  watcher_ = std::thread([this] { WatchLoop(); });
}

InferenceService::~InferenceService() {
  {
    std::lock_guard lock(calls_mu_);
    stopping_ = true;
  }
  calls_cv_.notify_all();
  watcher_.join();
}

void InferenceService::StartDrain() {
  std::lock_guard lock(drain_mu_);
  draining_ = true;
}

bool InferenceService::WaitIdle(absl::Time deadline) {
  std::unique_lock lock(drain_mu_);
  return drain_cv_.wait_until(lock, absl::ToChronoTime(deadline), [&] { return in_flight_ == 0; });
}

bool InferenceService::CutInFlight(absl::Time deadline) {
  {
    std::lock_guard lock(calls_mu_);
    cut_ = true;
    for (ActiveCall* call : calls_) call->Cancel(ActiveCall::kDrain);
  }
  return WaitIdle(deadline);  // a request still queued sees cut_ at its next poll
}

void InferenceService::WatchLoop() {
  std::unique_lock lock(calls_mu_);
  while (!stopping_) {
    if (calls_.empty()) {
      calls_cv_.wait(lock);  // an idle router costs nothing
      continue;
    }
    for (ActiveCall* call : calls_) {
      if (call->cause.load() != ActiveCall::kNone) continue;
      if (call->server->IsCancelled()) {
        call->Cancel(ActiveCall::kClient);
      } else if (pool_.epoch(call->rank) != call->epoch) {
        call->Cancel(ActiveCall::kRankLost);
      }
    }
    calls_cv_.wait_for(lock, absl::ToChronoMicroseconds(options_.watch_interval));
  }
}

grpc::Status InferenceService::Generate(grpc::ServerContext* ctx,
                                        const v1::GenerateRequest* request,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  metrics::RouterMetrics* m = options_.metrics;
  std::optional<Progress> progress;  // set once the request is valid
  if (m == nullptr) return GenerateUnrecorded(ctx, request, writer, progress);
  const absl::Time arrival = absl::Now();
  const grpc::Status status = GenerateUnrecorded(ctx, request, writer, progress);
  m->e2e_latency.Observe(absl::ToDoubleSeconds(absl::Now() - arrival));
  if (progress.has_value()) {
    m->prompt_tokens.Add(static_cast<double>(progress->prompt_tokens));
    m->generation_tokens.Add(progress->completion_tokens);
    if (progress->first_token != absl::InfiniteFuture()) {
      m->time_to_first_token.Observe(
          absl::ToDoubleSeconds(progress->first_token - progress->arrival));
      m->queue_time.Observe(progress->queue_time_s);
    }
  }
  if (status.ok() && progress.has_value() && progress->finished_by_length.has_value()) {
    m->Finished(*progress->finished_by_length);
  } else if (!status.ok()) {
    m->Failed(status.error_code());
  }
  return status;
}

grpc::Status InferenceService::GenerateUnrecorded(grpc::ServerContext* ctx,
                                                  const v1::GenerateRequest* request,
                                                  grpc::ServerWriter<v1::GenerateResponse>* writer,
                                                  std::optional<Progress>& recorded) {
  const absl::Time arrival = absl::Now();
  absl::StatusOr<ApiKeys::Lease> key = Authorize(*ctx);  // held until the stream ends
  if (!key.ok()) return ToGrpc(key.status());
  {
    std::lock_guard lock(drain_mu_);
    if (draining_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the router is shutting down (draining); try another replica");
    }
    ++in_flight_;
  }
  struct Done {
    InferenceService* self;
    ~Done() {
      {
        std::lock_guard lock(self->drain_mu_);
        --self->in_flight_;
      }
      self->drain_cv_.notify_all();
    }
  } done{this};
  const std::string request_id =
      request->request_id().empty()
          ? absl::StrCat("req-", absl::Hex(id_salt_ & 0xffffffff), "-", next_id_.fetch_add(1))
          : request->request_id();
  int64_t max_context = model_.max_position_embeddings;
  if (const int64_t ranks = pool_.max_context(); ranks > 0)
    max_context = std::min(max_context, ranks);
  absl::StatusOr<ResolvedRequest> resolved =
      ResolveGenerate(*request, model_, max_context, options_.limits);
  if (!resolved.ok()) return ToGrpc(resolved.status());

  // The caller owns it, so that metrics can read it after the call.
  Progress& progress = recorded.emplace(
      Progress{.arrival = arrival, .text = TextStream(*model_.tokenizer, resolved->stop)});
  progress.metrics = options_.metrics;
  progress.prompt_tokens = static_cast<int64_t>(resolved->prompt_ids.size());
  int avoid = -1;
  const uint64_t affinity = PrefixAffinity(resolved->prompt_ids);
  bool retried_unsent = false;
  std::string lost;  // why the last rank could not carry on (for a move that finds no rank)
  for (;;) {
    absl::StatusOr<RankLease> lease = pool_.Acquire(
        DeadlineOf(*ctx), [this, ctx] { return ctx->IsCancelled() || cut_.load(); }, avoid,
        affinity);
    if (!lease.ok()) {
      if (progress.metrics && absl::IsResourceExhausted(lease.status()))
        progress.metrics->rejected_queue_full.Add();
      if (progress.metrics && absl::IsUnavailable(lease.status()))
        progress.metrics->rejected_no_rank.Add();
      if (cut_.load()) {
        return grpc::Status(
            grpc::StatusCode::UNAVAILABLE,
            absl::StrCat("request ", request_id, ": the router shut down (drain grace over)"));
      }
      std::string message = absl::StrCat("request ", request_id, ": ", lease.status().message());
      if (!lost.empty()) absl::StrAppend(&message, " (after ", lost, ")");
      return grpc::Status(static_cast<grpc::StatusCode>(lease.status().code()), message);
    }
    Attempt result = RunOnRank(ctx, writer, *resolved, request_id, *lease, progress);
    if (!result.movable) return result.status;
    // Before the first token a retry costs nothing; after it, the request moves with its tokens.
    if (progress.generated.empty()) {
      if (retried_unsent) return result.status;
      retried_unsent = true;
    } else if (progress.moves < options_.max_moves) {
      ++progress.moves;
    } else {
      return grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          absl::StrCat(result.status.error_message(), "; gave up after moving it ", progress.moves,
                       " time(s) (--max-moves ", options_.max_moves, ")"));
    }
    lost = result.status.error_message();
    avoid = lease->rank();
    // Rare and worth an operator's attention: say what moved and why.
    std::fprintf(stderr, "nextserve-router: %s; moving it to another rank after %zu tokens\n",
                 lost.c_str(), progress.generated.size());
  }
}

InferenceService::Attempt InferenceService::RunOnRank(
    grpc::ServerContext* ctx, grpc::ServerWriter<v1::GenerateResponse>* writer,
    const ResolvedRequest& request, const std::string& request_id, const RankLease& lease,
    Progress& progress) {
  const int rank = lease.rank();
  const std::string& address = pool_.address(rank);
  internal::v1::SubmitRequest submit;
  // Unique on the rank even when clients reuse ids.
  submit.set_request_id(absl::StrCat(request_id, "#", next_id_.fetch_add(1)));
  submit.mutable_prompt_ids()->Add(request.prompt_ids.begin(), request.prompt_ids.end());
  // A moved request carries its output so far; the rank's sampler resumes after it.
  submit.mutable_prompt_ids()->Add(progress.generated.begin(), progress.generated.end());
  submit.set_generated_tokens(static_cast<int32_t>(progress.generated.size()));
  submit.set_max_tokens(request.max_tokens - progress.completion_tokens);
  *submit.mutable_sampling() = request.sampling;

  ActiveCall call(ctx, rank, lease.epoch());
  if (ctx->deadline() != std::chrono::system_clock::time_point::max())
    call.rank_ctx.set_deadline(ctx->deadline());
  {
    std::lock_guard lock(calls_mu_);
    calls_.insert(&call);
    if (cut_.load()) call.Cancel(ActiveCall::kDrain);
  }
  calls_cv_.notify_one();
  struct Unregister {
    InferenceService* self;
    ActiveCall* call;
    ~Unregister() {
      std::lock_guard lock(self->calls_mu_);
      self->calls_.erase(call);
    }
  } unregister{this, &call};

  const absl::Time dispatched = absl::Now();
  std::unique_ptr<grpc::ClientReader<internal::v1::SubmitResponse>> reader =
      pool_.stub(rank)->Submit(&call.rank_ctx, submit);
  internal::v1::SubmitResponse msg;
  bool first_message = true;
  bool finished = false;
  v1::GenerateResponse out;
  out.set_request_id(request_id);

  auto write_final = [&](v1::FinishReason reason, const std::string& stop_reason) {
    v1::GenerateResponse final_msg;
    final_msg.set_request_id(request_id);
    v1::Final* f = final_msg.mutable_final();
    f->set_finish_reason(reason);
    progress.finished_by_length = reason == v1::FINISH_REASON_LENGTH;
    f->set_stop_reason(stop_reason);
    v1::Usage* usage = f->mutable_usage();
    usage->set_prompt_tokens(static_cast<int32_t>(request.prompt_ids.size()));
    usage->set_completion_tokens(progress.completion_tokens);
    usage->set_queue_time_s(progress.queue_time_s);
    if (progress.first_token != absl::InfiniteFuture()) {
      usage->set_time_to_first_token_s(
          absl::ToDoubleSeconds(progress.first_token - progress.arrival));
    }
    return writer->Write(final_msg);
  };

  while (!finished && reader->Read(&msg)) {
    if (first_message) {
      first_message = false;
      // Queue time is until the step that produced the first token, not a move's.
      if (progress.completion_tokens == 0) {
        progress.queue_time_s =
            absl::ToDoubleSeconds(dispatched - progress.arrival) + msg.queue_time_s();
      }
    }
    v1::Delta* delta = out.mutable_delta();
    delta->Clear();
    const bool stop_token = msg.finish() == internal::v1::FINISH_STOP_TOKEN;
    std::string stop_string;
    bool stopped = false;
    for (int i = 0; i < msg.token_ids_size() && !stopped; ++i) {
      const int32_t id = msg.token_ids(i);
      if (progress.first_token == absl::InfiniteFuture()) progress.first_token = absl::Now();
      if (progress.metrics && i == 0) {  // tokens of one message arrived together: one gap each
        const absl::Time now = absl::Now();
        if (progress.last_token != absl::InfiniteFuture()) {
          const double gap = absl::ToDoubleSeconds(now - progress.last_token);
          for (int k = 0; k < msg.token_ids_size(); ++k)
            progress.metrics->inter_token_latency.Observe(gap / msg.token_ids_size());
        }
        progress.last_token = now;
      }
      ++progress.completion_tokens;
      progress.generated.push_back(id);
      delta->add_token_ids(id);
      if (i < msg.logprobs_size()) *delta->add_logprobs() = ToPublic(id, msg.logprobs(i));
      // The stop token itself adds no text.
      if (stop_token && i + 1 == msg.token_ids_size()) break;
      TextStream::Piece piece =
          progress.text.Add(id, progress.completion_tokens >= request.min_tokens);
      delta->mutable_text()->append(piece.text);
      if (piece.stopped) {
        stopped = true;
        stop_string = piece.stop;
      }
    }
    if (msg.finish() != internal::v1::FINISH_NONE && !stopped) {
      TextStream::Piece piece =
          progress.text.Finish(progress.completion_tokens >= request.min_tokens);
      delta->mutable_text()->append(piece.text);
      if (piece.stopped) {
        stopped = true;
        stop_string = piece.stop;
      }
    }
    if ((delta->token_ids_size() > 0 || !delta->text().empty()) && !writer->Write(out)) {
      call.Cancel(ActiveCall::kClient);
      break;
    }
    if (stopped) {
      call.Cancel(ActiveCall::kStopString);  // the rank frees the request at its next step
      if (!write_final(v1::FINISH_REASON_STOP, stop_string)) call.Cancel(ActiveCall::kClient);
      finished = true;
    } else if (msg.finish() == internal::v1::FINISH_STOP_TOKEN ||
               msg.finish() == internal::v1::FINISH_LENGTH) {
      const bool by_token = msg.finish() == internal::v1::FINISH_STOP_TOKEN;
      const std::string reason = by_token && msg.token_ids_size() > 0
                                     ? std::to_string(msg.token_ids(msg.token_ids_size() - 1))
                                     : std::string();
      if (!write_final(by_token ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH, reason)) {
        call.Cancel(ActiveCall::kClient);
      }
      finished = true;
    } else if (msg.finish() == internal::v1::FINISH_ABORTED) {
      call.Cancel(ActiveCall::kRankLost);
      reader->Finish();
      return {grpc::Status(grpc::StatusCode::ABORTED,
                           absl::StrCat("request ", request_id, ": rank ", address, " aborted it")),
              false};
    }
  }
  const grpc::Status status = reader->Finish();
  if (finished) return {grpc::Status::OK, false};

  const std::string where = absl::StrCat("request ", request_id, " on rank ", address);
  switch (call.cause.load()) {
    case ActiveCall::kClient:
      if (absl::Now() >= DeadlineOf(*ctx)) {
        return {grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                             absl::StrCat(where, ": deadline exceeded")),
                false};
      }
      return {grpc::Status(grpc::StatusCode::CANCELLED,
                           absl::StrCat(where, ": cancelled by the client")),
              false};
    case ActiveCall::kRankLost:
      return {grpc::Status(grpc::StatusCode::UNAVAILABLE,
                           absl::StrCat(where, ": the rank was lost (stopped answering)")),
              true};
    case ActiveCall::kDrain:
      return {grpc::Status(grpc::StatusCode::UNAVAILABLE,
                           absl::StrCat(where, ": the router shut down (drain grace over)")),
              false};
    default:
      break;
  }
  if (status.ok()) {
    return {grpc::Status(grpc::StatusCode::INTERNAL,
                         absl::StrCat(where, ": the rank ended the stream without finishing")),
            false};
  }
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
      absl::Now() >= DeadlineOf(*ctx)) {
    return {grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                         absl::StrCat(where, ": deadline exceeded")),
            false};
  }
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      call.rank_ctx.GetServerTrailingMetadata().count("nextserve-draining") > 0) {
    // Refused by a rank that is shutting down: not lost (its other streams go on), just full.
    return {grpc::Status(grpc::StatusCode::UNAVAILABLE,
                         absl::StrCat(where, ": ", status.error_message())),
            true};
  }
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::CANCELLED) {
    // The connection broke, the rank shut down or its group broke: no more work goes there until
    // it answers again.
    pool_.ReportBroken(rank, absl::StrCat("stream broke: ", status.error_message()));
    return {
        grpc::Status(grpc::StatusCode::UNAVAILABLE,
                     absl::StrCat(where, ": the rank's stream broke: ", status.error_message())),
        true};
  }
  return {grpc::Status(status.error_code(), absl::StrCat(where, ": ", status.error_message())),
          false};
}

grpc::Status InferenceService::Tokenize(grpc::ServerContext* ctx,
                                        const v1::TokenizeRequest* request,
                                        v1::TokenizeResponse* response) {
  if (absl::StatusOr<ApiKeys::Lease> key = Authorize(*ctx); !key.ok()) return ToGrpc(key.status());
  absl::StatusOr<std::vector<int32_t>> ids;
  switch (request->input_case()) {
    case v1::TokenizeRequest::kText:
      ids = TokenizeText(request->text(), "input.text", model_);
      break;
    case v1::TokenizeRequest::kChat:
      ids = TokenizeChat(request->chat(), model_, options_.limits);
      break;
    case v1::TokenizeRequest::INPUT_NOT_SET:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "input: one of text or chat is required");
  }
  if (!ids.ok()) return ToGrpc(ids.status());
  response->mutable_ids()->Add(ids->begin(), ids->end());
  return grpc::Status::OK;
}

grpc::Status InferenceService::Detokenize(grpc::ServerContext* ctx,
                                          const v1::DetokenizeRequest* request,
                                          v1::DetokenizeResponse* response) {
  if (absl::StatusOr<ApiKeys::Lease> key = Authorize(*ctx); !key.ok()) return ToGrpc(key.status());
  absl::StatusOr<std::string> text =
      DetokenizeIds(request->ids(), request->skip_special_tokens(), model_);
  if (!text.ok()) return ToGrpc(text.status());
  response->set_text(*std::move(text));
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetModelInfo(grpc::ServerContext* ctx,
                                            const v1::GetModelInfoRequest*,
                                            v1::ModelInfo* response) {
  if (absl::StatusOr<ApiKeys::Lease> key = Authorize(*ctx); !key.ok()) return ToGrpc(key.status());
  response->set_model(model_.name);
  response->set_vocab_size(model_.vocab_size);
  int64_t max_context = model_.max_position_embeddings;
  if (const int64_t ranks = pool_.max_context(); ranks > 0)
    max_context = std::min(max_context, ranks);
  response->set_max_context(max_context);
  response->set_num_experts(model_.num_experts);
  response->set_num_experts_per_tok(model_.num_experts_per_tok);
  response->set_ranks(pool_.healthy_count());
  *response->mutable_default_sampling() = DefaultSampling(model_);
  response->mutable_eos_token_ids()->Add(model_.eos_token_ids.begin(), model_.eos_token_ids.end());
  return grpc::Status::OK;
}

}  // namespace nextserve::router
