#include "tests/integration/serving/cluster.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "nextserve/internal/v1/rank.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "sdk/cpp/client.h"
#include "tools/random_checkpoint.h"

namespace nextserve::testing {
namespace {

std::string BinDir() {
  const char* dir = std::getenv("NEXTSERVE_BIN_DIR");
  return dir != nullptr ? dir : "build/bin";
}

// GPT-2's byte -> printable character map used by byte-level BPE vocabularies.
std::string ByteToUnicode(int b) {
  int cp;
  if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
    cp = b;
  } else {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++n;
    }
    cp = 256 + n;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteTestTokenizer(const std::string& dir) {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteToUnicode(b)] = b;
  nlohmann::ordered_json merges = nlohmann::ordered_json::array();
  int id = 256;
  // " x" for each letter, then letter pairs, until the merges fill ids 256..508.
  const std::string space = ByteToUnicode(' ');
  for (char c = 'a'; c <= 'z'; ++c) {
    merges.push_back({space, std::string(1, c)});
    vocab[space + std::string(1, c)] = id++;
  }
  for (char a = 'a'; a <= 'z' && id < kTestVocab - 3; ++a) {
    for (char b = 'a'; b <= 'z' && id < kTestVocab - 3; ++b) {
      merges.push_back({std::string(1, a), std::string(1, b)});
      vocab[std::string(1, a) + std::string(1, b)] = id++;
    }
  }
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (const char* special : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back({{"id", id++}, {"content", special}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  nlohmann::ordered_json tok = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                         {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                   {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false},
                 {"byte_fallback", false}, {"vocab", vocab}, {"merges", merges}}},
  };
  return WriteFile((std::filesystem::path(dir) / "tokenizer.json").string(), tok.dump());
}

absl::StatusOr<std::string> TestModelDir() {
  static std::mutex mu;
  static std::string dir;
  std::lock_guard lock(mu);
  if (!dir.empty()) return dir;
  const std::string path =
      (std::filesystem::temp_directory_path() / absl::StrCat("nextserve_serving_model_", getpid())).string();
  absl::StatusOr<ModelConfig> config = PresetConfig("tiny");
  if (!config.ok()) return config.status();
  config->vocab_size = kTestVocab;
  config->max_position_embeddings = kTestContext;
  config->eos_token_ids = {kTestEos};
  if (absl::Status s = WriteRandomCheckpoint(*config, path, {.dtype = DType::kBF16, .seed = 7}); !s.ok()) return s;
  if (absl::Status s = WriteTestTokenizer(path); !s.ok()) return s;
  dir = path;
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  });
  return dir;
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

absl::Status Cluster::Spawn(Process& p, const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // no orphans if the test dies
    if (getppid() != parent) _exit(127);
    const int fd = open(p.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv(args[0], args.data());
    _exit(127);
  }
  p.pid = pid;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(const std::string& model_dir, ClusterOptions options) {
  std::unique_ptr<Cluster> c(new Cluster);
  static int counter = 0;
  c->dir_ = (std::filesystem::temp_directory_path() / absl::StrCat("nextserve_cluster_", getpid(), "_", counter++))
                .string();
  std::filesystem::create_directories(c->dir_);
  const std::string rank_bin = BinDir() + (options.fake_ranks ? "/nextserve-fake-rank" : "/nextserve-rank");
  std::string rank_list;
  c->ranks_.resize(options.ranks);
  for (int i = 0; i < options.ranks; ++i) {
    Process& p = c->ranks_[i];
    const int port = FreePort();
    p.name = absl::StrCat("rank", i);
    p.address = absl::StrCat("127.0.0.1:", port);
    p.log = absl::StrCat(c->dir_, "/", p.name, ".log");
    std::vector<std::string> argv = {rank_bin, "--model", model_dir, "--port", std::to_string(port),
                                     "--host", "127.0.0.1"};
    if (!options.fake_ranks) argv.insert(argv.end(), {"--threads", "1", "--rank-id", std::to_string(i)});
    argv.insert(argv.end(), options.rank_args.begin(), options.rank_args.end());
    if (absl::Status s = c->Spawn(p, argv); !s.ok()) return s;
    absl::StrAppend(&rank_list, i ? "," : "", p.address);
  }
  const int router_port = FreePort();
  c->router_.name = "router";
  c->router_.address = absl::StrCat("127.0.0.1:", router_port);
  c->router_.log = c->dir_ + "/router.log";
  std::vector<std::string> argv = {BinDir() + "/nextserve-router", "--model", model_dir, "--ranks", rank_list,
                                   "--port", std::to_string(router_port)};
  argv.insert(argv.end(), options.router_args.begin(), options.router_args.end());
  if (absl::Status s = c->Spawn(c->router_, argv); !s.ok()) return s;

  // Ready: every rank serving, and the router seeing all of them.
  const absl::Time deadline = absl::Now() + options.start_timeout;
  for (const Process& p : c->ranks_) {
    if (absl::Status s = sdk::WaitForServing(p.address, deadline - absl::Now()); !s.ok()) {
      return absl::UnavailableError(absl::StrCat(p.name, ": ", s.message(), "\n", c->Logs()));
    }
  }
  if (absl::Status s = sdk::WaitForServing(c->router_.address, deadline - absl::Now()); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("router: ", s.message(), "\n", c->Logs()));
  }
  std::unique_ptr<sdk::Client> client = sdk::Client::Create(c->router_.address);
  for (;;) {
    absl::StatusOr<v1::ModelInfo> info = client->GetModelInfo({.timeout = absl::Seconds(1)});
    if (info.ok() && info->ranks() == options.ranks) break;
    if (absl::Now() > deadline) return absl::UnavailableError("router does not see every rank\n" + c->Logs());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return c;
}

void Cluster::Stop(Process& p) {
  if (p.pid <= 0) return;
  kill(p.pid, SIGCONT);  // in case a test stopped it
  kill(p.pid, SIGTERM);
  for (int i = 0; i < 500; ++i) {
    if (waitpid(p.pid, nullptr, WNOHANG) == p.pid) {
      p.pid = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(p.pid, SIGKILL);
  waitpid(p.pid, nullptr, 0);
  p.pid = -1;
}

Cluster::~Cluster() {
  Stop(router_);
  for (Process& p : ranks_) Stop(p);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void Cluster::SignalRank(int i, int signal) {
  if (ranks_[i].pid > 0) kill(ranks_[i].pid, signal);
}

void Cluster::KillRank(int i) {
  Process& p = ranks_[i];
  if (p.pid <= 0) return;
  kill(p.pid, SIGKILL);
  waitpid(p.pid, nullptr, 0);
  p.pid = -1;
}

absl::StatusOr<internal::v1::LoadReport> Cluster::RankLoad(int i) {
  auto stub = internal::v1::Rank::NewStub(
      grpc::CreateChannel(ranks_[i].address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  internal::v1::LoadReport report;
  grpc::Status s = stub->GetLoad(&ctx, internal::v1::LoadRequest(), &report);
  if (!s.ok()) return sdk::FromGrpc(s);
  return report;
}

absl::Status Cluster::WaitRankIdle(int i, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  internal::v1::LoadReport last;
  for (;;) {
    absl::StatusOr<internal::v1::LoadReport> load = RankLoad(i);
    if (load.ok()) {
      last = *load;
      if (load->running() == 0 && load->waiting() == 0 && load->free_kv_blocks() == load->total_kv_blocks() &&
          load->free_state_slots() == load->total_state_slots()) {
        return absl::OkStatus();
      }
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(ranks_[i].name, " not idle after ", absl::FormatDuration(timeout),
                                                      ": ", last.ShortDebugString()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::string Cluster::Logs() const {
  std::string out;
  auto tail = [&out](const Process& p) {
    std::ifstream in(p.log);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    if (text.size() > 3000) text = "..." + text.substr(text.size() - 3000);
    absl::StrAppend(&out, "--- ", p.name, " (", p.address, ") ---\n", text, "\n");
  };
  for (const Process& p : ranks_) tail(p);
  tail(router_);
  return out;
}

}  // namespace nextserve::testing
