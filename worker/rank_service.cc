#include "worker/rank_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace nextserve::worker {
namespace {

namespace pb = nextserve::internal::v1;

// How often a stream thread looks at its client while waiting for tokens: a cancelled client is
// noticed within this, well inside one step of a busy rank.
constexpr std::chrono::milliseconds kPollInterval{20};

sampling::SamplingParams FromProto(const pb::Sampling& s) {
  sampling::SamplingParams p;
  p.temperature = s.temperature();
  p.top_p = s.top_p();
  p.top_k = s.top_k();
  p.min_p = s.min_p();
  p.repetition_penalty = s.repetition_penalty();
  p.presence_penalty = s.presence_penalty();
  p.frequency_penalty = s.frequency_penalty();
  for (const auto& [token, bias] : s.logit_bias()) p.logit_bias.emplace_back(token, bias);
  std::sort(p.logit_bias.begin(), p.logit_bias.end());  // map order is unspecified
  if (s.has_seed()) p.seed = s.seed();
  p.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  p.ignore_eos = s.ignore_eos();
  p.min_tokens = s.min_tokens();
  p.logprobs = s.logprobs();
  return p;
}

pb::Finish ToProto(Finish f) {
  switch (f) {
    case Finish::kStopToken:
      return pb::FINISH_STOP_TOKEN;
    case Finish::kLength:
      return pb::FINISH_LENGTH;
    case Finish::kAborted:
      return pb::FINISH_ABORTED;
    default:
      return pb::FINISH_NONE;
  }
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

void RankService::StartDrain() {
  std::lock_guard lock(drain_mu_);
  draining_ = true;
}

bool RankService::WaitIdle(absl::Time deadline) {
  std::unique_lock lock(drain_mu_);
  return drain_cv_.wait_until(lock, absl::ToChronoTime(deadline),
                              [&] { return open_streams_ == 0; });
}

void RankService::CutOpenStreams() {
  std::unique_lock lock(drain_mu_);
  cut_ = true;
  drain_cv_.wait(lock, [&] { return open_streams_ == 0; });
}

bool RankService::Cut() const {
  std::lock_guard lock(drain_mu_);
  return cut_;
}

grpc::Status RankService::Submit(grpc::ServerContext* context, const pb::SubmitRequest* request,
                                 grpc::ServerWriter<pb::SubmitResponse>* writer) {
  {
    std::lock_guard lock(drain_mu_);
    if (draining_) {
      // Not lost: the router should send this elsewhere without ending the streams open here.
      context->AddTrailingMetadata(std::string(kDrainingMetadata), "1");
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          absl::StrCat("rank ", rank_id_, " is draining (shutting down)"));
    }
    ++open_streams_;
  }
  struct Close {
    RankService* self;
    ~Close() {
      {
        std::lock_guard lock(self->drain_mu_);
        --self->open_streams_;
      }
      self->drain_cv_.notify_all();
    }
  } close{this};

  SubmitSpec spec;
  spec.id = request->request_id();
  if (spec.id.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id: empty");
  spec.prompt.assign(request->prompt_ids().begin(), request->prompt_ids().end());
  spec.max_tokens = request->max_tokens();
  spec.already_generated = request->generated_tokens();
  spec.sampling = FromProto(request->sampling());
  auto channel = engine_->Submit(std::move(spec));
  if (!channel.ok()) return ToGrpc(channel.status());
  const std::string id = request->request_id();
  while (true) {
    if (Cut()) {  // checked before every message: a busy stream never waits for Pop to time out
      engine_->Abort(id);
      return grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          absl::StrCat("request '", id, "': rank ", rank_id_, " shut down (drain grace over)"));
    }
    RankOutput out;
    if (!(*channel)->Pop(&out, kPollInterval)) {
      if (context->IsCancelled()) {
        engine_->Abort(id);  // the engine frees the cache at its next step
        return grpc::Status(grpc::StatusCode::CANCELLED,
                            absl::StrCat("request '", id, "' cancelled"));
      }
      continue;
    }
    if (out.finish == Finish::kError) {
      // A broken group (or a shutting-down rank) cannot serve it; another rank can.
      return grpc::Status(
          out.unavailable ? grpc::StatusCode::UNAVAILABLE : grpc::StatusCode::INTERNAL,
          absl::StrCat("request '", id, "': ", out.error));
    }
    pb::SubmitResponse response;
    if (out.queue_time_s >= 0) response.set_queue_time_s(out.queue_time_s);
    for (int32_t t : out.tokens) response.add_token_ids(t);
    for (const auto& s : out.samples) {
      pb::TokenLogprobs* lp = response.add_logprobs();
      lp->set_logprob(s.logprob);
      lp->set_rank(s.rank);
      for (const auto& top : s.top_logprobs) {
        pb::TopLogprob* t = lp->add_top();
        t->set_token_id(top.token);
        t->set_logprob(top.logprob);
      }
    }
    response.set_finish(ToProto(out.finish));
    if (!writer->Write(response)) {
      engine_->Abort(id);
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          absl::StrCat("request '", id, "': client went away"));
    }
    if (out.finish != Finish::kNone) return grpc::Status::OK;
  }
}

grpc::Status RankService::Abort(grpc::ServerContext*, const pb::AbortRequest* request,
                                pb::AbortResponse* response) {
  response->set_found(engine_->Abort(request->request_id()));
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* RankService::GetLoad(grpc::CallbackServerContext* context,
                                               const pb::LoadRequest*, pb::LoadReport* response) {
  // Still answered while draining, so that the router keeps the streams open here and only sends
  // no new work.
  response->set_draining(draining_.load());
  response->set_broken(engine_->Broken());
  const EngineLoad load = engine_->Load();
  response->set_running(static_cast<int32_t>(load.running));
  response->set_waiting(static_cast<int32_t>(load.waiting));
  response->set_free_kv_blocks(load.free_blocks);
  response->set_total_kv_blocks(load.total_blocks);
  response->set_free_state_slots(load.free_slots);
  response->set_total_state_slots(load.total_slots);
  response->set_kv_block_tokens(load.block_tokens);
  response->set_max_context(load.max_context);
  response->set_rank(rank_id_);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace nextserve::worker
