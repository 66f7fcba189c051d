// The rank's gRPC service in-process (a real server on a loopback port, a real engine on a micro
// model): a broken expert-parallel group reaches the router as UNAVAILABLE (so it retries or moves
// the request), never INTERNAL; drain refuses new work as draining while the open stream goes on,
// and the cut ends what is left with UNAVAILABLE and frees its cache.
#include "worker/rank_service.h"

#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "comm/communicator.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/weights.h"
#include "tools/random_checkpoint.h"

namespace nextserve::worker {
namespace {

namespace pb = nextserve::internal::v1;
using namespace std::chrono_literals;

// Test double: a two-rank group whose peer is gone. Idle step agreements succeed (the peer was
// idle too); the first step with work fails as a lost peer does, so the requests then live fail.
class LostPeerCommunicator final : public comm::Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string_view name() const override { return "lost-peer test double"; }
  absl::Status ExchangeCounts(std::span<const int64_t>, std::span<int64_t>) override {
    return Lost();
  }
  absl::Status AllToAllV(const void*, std::span<const int64_t>, void*,
                         std::span<const int64_t>) override {
    return Lost();
  }
  absl::Status AllReduce(float*, int64_t, comm::ReduceOp) override { return Lost(); }
  absl::Status AllReduce(int64_t* data, int64_t n, comm::ReduceOp) override {
    if (n >= 1 && data[0] == 0) return absl::OkStatus();  // [work, stop] with no work
    return Lost();
  }
  absl::Status Broadcast(void*, int64_t, int) override { return Lost(); }
  absl::Status Barrier() override { return Lost(); }

 private:
  static absl::Status Lost() { return absl::UnavailableError("rank 1 stopped answering"); }
};

class RankServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(std::filesystem::temp_directory_path() /
                           ("rank_service_test_" + std::to_string(getpid())));
    auto c = PresetConfig("micro");
    c->vocab_size = 400;
    c->eos_token_ids = {};
    RandomCheckpointOptions options;
    options.dtype = DType::kF32;
    ASSERT_TRUE(WriteRandomCheckpoint(*c, *dir_, options).ok());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  void Start(comm::Communicator* comm) {
    auto w = ModelWeights::Load(*dir_);
    ASSERT_TRUE(w.ok()) << w.status();
    EngineOptions options;
    options.cache = {16, 64, 4};
    options.scheduler = {64, 4};
    engine_ = std::make_unique<Engine>(std::move(*w), backend_.get(), options, comm);
    service_ = std::make_unique<RankService>(engine_.get(), 0);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = pb::Rank::NewStub(
        grpc::CreateChannel(LoopbackAddress(port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }
  static std::string LoopbackAddress(int port) { return "127.0.0.1:" + std::to_string(port); }

  static pb::SubmitRequest Request(const std::string& id, int max_tokens) {
    pb::SubmitRequest req;
    req.set_request_id(id);
    for (int32_t t : {3, 14, 15, 92, 65}) req.add_prompt_ids(t);
    req.set_max_tokens(max_tokens);
    req.mutable_sampling()->set_temperature(0);
    req.mutable_sampling()->set_top_p(1);
    req.mutable_sampling()->set_repetition_penalty(1);
    req.mutable_sampling()->set_logprobs(-1);
    return req;
  }

  static std::string* dir_;
  std::unique_ptr<kernels::Backend> backend_ = kernels::MakeCpuBackend();
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<RankService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<pb::Rank::Stub> stub_;
};
std::string* RankServiceTest::dir_ = nullptr;

TEST_F(RankServiceTest, BrokenGroupIsUnavailableNotInternal) {
  LostPeerCommunicator comm;
  Start(&comm);
  // The request is live when the group breaks, then a later one finds the group broken.
  for (const char* id : {"live", "later"}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    auto reader = stub_->Submit(&ctx, Request(id, 5));
    pb::SubmitResponse msg;
    while (reader->Read(&msg)) {
      EXPECT_EQ(msg.token_ids_size(), 0) << "no step can run in a broken group";
    }
    const grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << id << ": " << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), "expert-parallel group failed"))
        << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), "rank 1 stopped answering"))
        << status.error_message();
  }
  // Its load report says so, which the router takes as down (not merely slow).
  grpc::ClientContext ctx;
  pb::LoadReport load;
  ASSERT_TRUE(stub_->GetLoad(&ctx, pb::LoadRequest(), &load).ok());
  EXPECT_TRUE(absl::StrContains(load.broken(), "rank 1 stopped answering")) << load.broken();
}

TEST_F(RankServiceTest, DrainRefusesNewWorkThenCutsWhatIsLeft) {
  Start(nullptr);
  grpc::ClientContext open_ctx;
  auto open = stub_->Submit(&open_ctx, Request("open", 1000));
  pb::SubmitResponse msg;
  int tokens = 0;
  while (tokens == 0 && open->Read(&msg)) tokens += msg.token_ids_size();
  ASSERT_GT(tokens, 0);

  service_->StartDrain();
  {  // Still answers its load, marked draining, so the router keeps the open stream.
    grpc::ClientContext ctx;
    pb::LoadReport load;
    ASSERT_TRUE(stub_->GetLoad(&ctx, pb::LoadRequest(), &load).ok());
    EXPECT_TRUE(load.draining());
    EXPECT_EQ(load.running(), 1);
  }
  {  // New work refused as draining (not lost).
    grpc::ClientContext ctx;
    auto refused = stub_->Submit(&ctx, Request("new", 3));
    while (refused->Read(&msg)) {
    }
    const grpc::Status status = refused->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_TRUE(absl::StrContains(status.error_message(), "draining")) << status.error_message();
    EXPECT_EQ(ctx.GetServerTrailingMetadata().count(std::string(kDrainingMetadata)), 1u);
  }
  // The open stream keeps going while the grace lasts.
  const int before = tokens;
  while (tokens < before + 3 && open->Read(&msg)) tokens += msg.token_ids_size();
  EXPECT_GE(tokens, before + 3);
  EXPECT_FALSE(service_->WaitIdle(absl::Now() + absl::Milliseconds(50)));

  std::thread reader([&] {
    while (open->Read(&msg)) tokens += msg.token_ids_size();
  });
  service_->CutOpenStreams();
  reader.join();
  const grpc::Status status = open->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "drain grace over"))
      << status.error_message();
  EXPECT_LT(tokens, 1000);
  EXPECT_TRUE(service_->WaitIdle(absl::Now()));
  // The cut request's cache comes back at the engine's next step.
  EngineLoad load;
  for (int i = 0; i < 400; ++i) {
    load = engine_->Load();
    if (load.running == 0 && load.free_slots == load.total_slots) break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(load.running, 0);
  EXPECT_EQ(load.free_slots, load.total_slots);
  EXPECT_EQ(load.free_blocks, load.total_blocks);
}

}  // namespace
}  // namespace nextserve::worker
