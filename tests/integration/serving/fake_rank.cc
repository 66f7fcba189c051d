// nextserve-fake-rank: a scripted nextserve.internal.v1.Rank for router tests that must not depend
// on the model. Each request "generates" its prompt again, token by token, one token per step
// (--step-ms), then keeps cycling through it; a stop token id ends it (after min_tokens),
// max_tokens ends it with LENGTH. A moved request (generated_tokens > 0) continues the cycle where
// it was, as a real rank continues an uninterrupted run. It keeps the rank's bookkeeping: state
// slots (a request waits for one), KV blocks of 16 tokens, running/waiting counts, and frees all of
// it when a request ends, is cancelled or aborted. --group-breaks-after N scripts a broken
// expert-parallel group: a request not moved here fails UNAVAILABLE after N tokens, as a real rank
// does when its group fails.
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/flags.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "nextserve/internal/v1/rank.grpc.pb.h"

namespace {

namespace iv1 = nextserve::internal::v1;
constexpr int64_t kBlockTokens = 16;

class FakeRank final : public iv1::Rank::Service {
 public:
  FakeRank(int64_t slots, int64_t blocks, int64_t max_context, int64_t step_ms,
           int64_t group_breaks_after)
      : slots_(slots),
        blocks_(blocks),
        max_context_(max_context),
        step_ms_(step_ms),
        group_breaks_after_(group_breaks_after) {}

  grpc::Status Submit(grpc::ServerContext* ctx, const iv1::SubmitRequest* req,
                      grpc::ServerWriter<iv1::SubmitResponse>* writer) override {
    const absl::Time arrival = absl::Now();
    const int32_t done = req->generated_tokens();
    const int32_t prompt_len = req->prompt_ids_size() - done;
    if (prompt_len < 1 || req->max_tokens() < 1 || done < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "empty prompt, max_tokens < 1 or generated_tokens out of range");
    }
    const int64_t need =
        (req->prompt_ids_size() + req->max_tokens() + kBlockTokens - 1) / kBlockTokens;
    std::unique_lock lock(mu_);
    if (need > blocks_)
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "request larger than the KV cache");
    ++waiting_;
    aborted_[req->request_id()] = false;
    // Admission: a free slot and enough blocks for the whole request.
    while (!(used_slots_ < slots_ && used_blocks_ + need <= blocks_)) {
      if (ctx->IsCancelled() || aborted_[req->request_id()]) {
        --waiting_;
        aborted_.erase(req->request_id());
        return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while waiting");
      }
      cv_.wait_for(lock, std::chrono::milliseconds(2));
    }
    --waiting_;
    ++running_;
    ++used_slots_;
    used_blocks_ += need;
    lock.unlock();

    grpc::Status status = grpc::Status::OK;
    const auto& s = req->sampling();
    for (int32_t i = 0; i < req->max_tokens(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(step_ms_));
      if (done == 0 && i == group_breaks_after_) {
        status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "expert-parallel group failed: rank 1 stopped answering (scripted)");
        break;
      }
      {
        std::lock_guard g(mu_);
        if (ctx->IsCancelled() || aborted_[req->request_id()]) {
          status = grpc::Status(grpc::StatusCode::CANCELLED, "aborted");
          break;
        }
      }
      const int32_t token = req->prompt_ids((done + i) % prompt_len);
      iv1::SubmitResponse msg;
      msg.add_token_ids(token);
      if (i == 0) msg.set_queue_time_s(absl::ToDoubleSeconds(absl::Now() - arrival));
      if (s.logprobs() >= 0) {
        iv1::TokenLogprobs* lp = msg.add_logprobs();
        lp->set_logprob(-0.5f);
        lp->set_rank(1);
        for (int k = 0; k < s.logprobs(); ++k) {
          auto* top = lp->add_top();
          top->set_token_id(token + k);
          top->set_logprob(-0.5f - k);
        }
      }
      bool stop = false;
      if (done + i + 1 >= s.min_tokens()) {
        for (int32_t id : s.stop_token_ids()) stop |= id == token;
      }
      if (stop)
        msg.set_finish(iv1::FINISH_STOP_TOKEN);
      else if (i + 1 == req->max_tokens())
        msg.set_finish(iv1::FINISH_LENGTH);
      if (!writer->Write(msg)) {
        status = grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
        break;
      }
      if (stop) break;
    }
    std::lock_guard g(mu_);
    --running_;
    --used_slots_;
    used_blocks_ -= need;
    aborted_.erase(req->request_id());
    cv_.notify_all();
    return status;
  }

  grpc::Status Abort(grpc::ServerContext*, const iv1::AbortRequest* req,
                     iv1::AbortResponse* resp) override {
    std::lock_guard g(mu_);
    auto it = aborted_.find(req->request_id());
    resp->set_found(it != aborted_.end());
    if (it != aborted_.end()) it->second = true;
    return grpc::Status::OK;
  }

  grpc::Status GetLoad(grpc::ServerContext*, const iv1::LoadRequest*, iv1::LoadReport* r) override {
    std::lock_guard g(mu_);
    r->set_running(running_);
    r->set_waiting(waiting_);
    r->set_free_kv_blocks(blocks_ - used_blocks_);
    r->set_total_kv_blocks(blocks_);
    r->set_free_state_slots(slots_ - used_slots_);
    r->set_total_state_slots(slots_);
    r->set_kv_block_tokens(kBlockTokens);
    r->set_max_context(max_context_);
    return grpc::Status::OK;
  }

 private:
  const int64_t slots_, blocks_, max_context_, step_ms_, group_breaks_after_;
  std::mutex mu_;
  std::condition_variable cv_;
  int running_ = 0, waiting_ = 0;
  int64_t used_slots_ = 0, used_blocks_ = 0;
  std::map<std::string, bool> aborted_;  // live requests -> abort asked
};

}  // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1", model;
  int64_t port = 0, slots = 8, blocks = 1024, max_context = 4096, step_ms = 2, rank_id = 0,
          group_breaks_after = -1;
  nextserve::cli::Flags flags(
      "nextserve-fake-rank --port P [--slots N] [--kv-blocks N] [--step-ms N]");
  flags.String("host", &host, "address to listen on");
  flags.Int("port", &port, "port");
  flags.String("model", &model, "ignored (accepted for nextserve-rank compatibility)");
  flags.Int("state-slots", &slots, "concurrent requests");
  flags.Int("kv-blocks", &blocks, "KV blocks of 16 tokens");
  flags.Int("max-context", &max_context, "reported max_context");
  flags.Int("step-ms", &step_ms, "milliseconds per generated token");
  flags.Int("group-breaks-after", &group_breaks_after,
            "a request not moved here fails UNAVAILABLE after this many tokens (-1: never)");
  flags.Int("rank-id", &rank_id, "ignored (accepted for nextserve-rank compatibility)");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok())
    return nextserve::cli::Flags::Report(s, flags);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  FakeRank service(slots, blocks, max_context, step_ms, group_breaks_after);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int selected = 0;
  builder.AddListeningPort(absl::StrCat(host, ":", port), grpc::InsecureServerCredentials(),
                           &selected);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (!server || selected == 0) return 1;
  std::printf("nextserve-fake-rank listening on %s:%d\n", host.c_str(), selected);
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}
