// nextserve-rank as a process: streams tokens over gRPC, reports load, frees a cancelled request's
// cache, answers health checks, and shuts down cleanly on SIGTERM.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nextserve/internal/v1/rank.grpc.pb.h"
#include "tools/random_checkpoint.h"

namespace nextserve {
namespace {

namespace pb = nextserve::internal::v1;
using namespace std::chrono_literals;

// A child process whose first stdout line says "... listening on HOST:PORT".
class RankProcess {
 public:
  RankProcess(const std::string& model, const std::vector<std::string>& extra) {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      close(fds[0]);
      std::vector<std::string> args = {
          std::string(std::getenv("NEXTSERVE_BIN_DIR")) + "/nextserve-rank",
          "--model",
          model,
          "--port",
          "0",
          "--threads",
          "1"};
      args.insert(args.end(), extra.begin(), extra.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    FILE* out = fdopen(fds[0], "r");
    char line[256] = {0};
    if (fgets(line, sizeof line, out) != nullptr) {
      const std::string s = line;
      const auto at = s.find("listening on ");
      if (at != std::string::npos) address_ = s.substr(at + 13, s.find_last_not_of("\n") - at - 12);
    }
    fclose(out);
  }
  ~RankProcess() {
    if (pid_ > 0 && !stopped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // SIGTERM, then the exit status (or -1 if it did not exit within 5 s).
  int Stop() {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 500; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        stopped_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }
  const std::string& address() const { return address_; }

 private:
  pid_t pid_ = -1;
  bool stopped_ = false;
  std::string address_;
};

class RankTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(std::filesystem::temp_directory_path() /
                           ("rank_test_" + std::to_string(getpid())));
    auto c = PresetConfig("tiny");
    c->vocab_size = 500;
    c->hidden_size = 64;
    c->eos_token_ids = {};
    ASSERT_TRUE(WriteRandomCheckpoint(*c, *dir_).ok());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  static pb::SubmitRequest Request(const std::string& id, int max_tokens) {
    pb::SubmitRequest r;
    r.set_request_id(id);
    for (int i = 0; i < 12; ++i) r.add_prompt_ids(i * 17 % 500);
    r.set_max_tokens(max_tokens);
    r.mutable_sampling()->set_temperature(0.0f);
    r.mutable_sampling()->set_top_p(1.0f);
    r.mutable_sampling()->set_repetition_penalty(1.0f);
    r.mutable_sampling()->set_logprobs(-1);
    return r;
  }
  static std::string* dir_;
};
std::string* RankTest::dir_ = nullptr;

TEST_F(RankTest, StreamsTokensReportsLoadAndFreesCancelledWork) {
  RankProcess rank(*dir_, {"--kv-blocks", "32", "--state-slots", "4"});
  ASSERT_FALSE(rank.address().empty());
  auto channel = grpc::CreateChannel(rank.address(), grpc::InsecureChannelCredentials());
  auto stub = pb::Rank::NewStub(channel);

  // Two identical greedy requests stream the same 10 tokens; the first message has the queue time.
  std::vector<std::vector<int32_t>> runs;
  for (int run = 0; run < 2; ++run) {
    grpc::ClientContext ctx;
    auto reader = stub->Submit(&ctx, Request("r" + std::to_string(run), 10));
    pb::SubmitResponse msg;
    std::vector<int32_t> tokens;
    bool saw_queue_time = false;
    pb::Finish finish = pb::FINISH_NONE;
    while (reader->Read(&msg)) {
      saw_queue_time |= msg.queue_time_s() > 0;
      tokens.insert(tokens.end(), msg.token_ids().begin(), msg.token_ids().end());
      finish = msg.finish();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_TRUE(saw_queue_time);
    EXPECT_EQ(finish, pb::FINISH_LENGTH);
    EXPECT_EQ(tokens.size(), 10u);
    runs.push_back(tokens);
  }
  EXPECT_EQ(runs[0], runs[1]);

  // A long request, cancelled by the client after its first token: blocks and slot come back.
  {
    grpc::ClientContext ctx;
    auto reader = stub->Submit(&ctx, Request("long", 1500));
    pb::SubmitResponse msg;
    bool got_token = false;
    while (!got_token && reader->Read(&msg)) got_token = !msg.token_ids().empty();
    ASSERT_TRUE(got_token) << reader->Finish().error_message();
    grpc::ClientContext load_ctx;
    pb::LoadReport busy;
    ASSERT_TRUE(stub->GetLoad(&load_ctx, pb::LoadRequest(), &busy).ok());
    EXPECT_EQ(busy.running(), 1);
    EXPECT_LT(busy.free_kv_blocks(), 32);
    ctx.TryCancel();
    reader->Finish();
  }
  pb::LoadReport idle;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext load_ctx;
    ASSERT_TRUE(stub->GetLoad(&load_ctx, pb::LoadRequest(), &idle).ok());
    if (idle.running() == 0 && idle.free_kv_blocks() == 32) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(idle.running(), 0);
  EXPECT_EQ(idle.free_kv_blocks(), 32);
  EXPECT_EQ(idle.free_state_slots(), 4);

  // Bad input: a clear INVALID_ARGUMENT naming the field, and the rank keeps serving.
  {
    grpc::ClientContext ctx;
    pb::SubmitRequest bad = Request("bad", 5);
    bad.set_prompt_ids(3, 99999);
    auto reader = stub->Submit(&ctx, bad);
    pb::SubmitResponse msg;
    while (reader->Read(&msg)) {
    }
    const grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("prompt_ids[3]"), std::string::npos) << s.error_message();
  }
  // Health.
  {
    grpc::ClientContext ctx;
    // An empty HealthCheckRequest (overall health) serialises to zero bytes.
    grpc::Slice empty("", 0);
    grpc::ByteBuffer request(&empty, 1), response;
    grpc::GenericStub generic(channel);
    grpc::Status status;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        std::lock_guard lock(mu);
                        status = s;
                        done = true;
                        cv.notify_one();
                      });
    std::unique_lock lock(mu);
    cv.wait_for(lock, 5s, [&] { return done; });
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_EQ(rank.Stop(), 0);
}

}  // namespace
// A bf16 KV cache serves (half the cache memory); an unknown dtype is refused by name at start.
TEST_F(RankTest, Bf16KvCacheServesAndBadDtypeIsRefused) {
  {
    RankProcess rank(*dir_, {"--kv-blocks", "32", "--state-slots", "4", "--kv-dtype", "bf16"});
    ASSERT_FALSE(rank.address().empty());
    auto stub =
        pb::Rank::NewStub(grpc::CreateChannel(rank.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    auto reader = stub->Submit(&ctx, Request("bf16", 10));
    pb::SubmitResponse msg;
    std::vector<int32_t> tokens;
    while (reader->Read(&msg))
      tokens.insert(tokens.end(), msg.token_ids().begin(), msg.token_ids().end());
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(tokens.size(), 10u);
  }
  const std::string cmd = std::string(std::getenv("NEXTSERVE_BIN_DIR")) +
                          "/nextserve-rank --model " + *dir_ + " --port 0 --kv-dtype f8 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[256];
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  const int status = pclose(p);
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(out.find("--kv-dtype 'f8'"), std::string::npos) << out;
}

}  // namespace nextserve
