#include "tests/integration/serving/cluster.h"

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
    added.push_back({{"id", id++},
                     {"content", special},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  nlohmann::ordered_json tok = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", false},
        {"use_regex", true}}},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", false},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", merges}}},
  };
  return WriteFile((std::filesystem::path(dir) / "tokenizer.json").string(), tok.dump());
}

absl::Status WriteTestModel(const std::string& dir) {
  absl::StatusOr<ModelConfig> config = PresetConfig("tiny");
  if (!config.ok()) return config.status();
  config->vocab_size = kTestVocab;
  config->max_position_embeddings = kTestContext;
  config->eos_token_ids = {kTestEos};
  if (absl::Status s = WriteRandomCheckpoint(*config, dir, {.dtype = DType::kBF16, .seed = 7});
      !s.ok())
    return s;
  return WriteTestTokenizer(dir);
}

absl::StatusOr<std::string> TestModelDir() {
  static std::mutex mu;
  static std::string dir;
  std::lock_guard lock(mu);
  if (!dir.empty()) return dir;
  const std::string path =
      (std::filesystem::temp_directory_path() / absl::StrCat("nextserve_serving_model_", getpid()))
          .string();
  if (absl::Status s = WriteTestModel(path); !s.ok()) return s;
  dir = path;
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  });
  return dir;
}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(const std::string& model_dir,
                                                        ClusterOptions options) {
  std::unique_ptr<Cluster> c(new Cluster);
  static int counter = 0;
  c->log_dir_ = (std::filesystem::temp_directory_path() /
                 absl::StrCat("nextserve_cluster_", getpid(), "_", counter++))
                    .string();
  std::filesystem::create_directories(c->log_dir_);
  sdk::LocalClusterOptions local{
      .bin_dir = BinDir(),
      .model_dir = model_dir,
      .ranks = options.ranks,
      .expert_parallel = options.expert_parallel,
      .rank_binary = options.fake_ranks ? "nextserve-fake-rank" : "nextserve-rank",
      .rank_args = options.rank_args,
      .router_args = options.router_args,
      .rank_env = {"OMP_NUM_THREADS=1", "OMP_WAIT_POLICY=passive"},
      .log_dir = c->log_dir_,
      .start_timeout = options.start_timeout,
      .stop_grace = absl::Seconds(5),
      .cancelled = nullptr,
      .restart = options.restart,
  };
  if (!options.fake_ranks) local.rank_args.insert(local.rank_args.begin(), {"--threads", "1"});
  absl::StatusOr<std::unique_ptr<sdk::LocalCluster>> started =
      sdk::LocalCluster::Start(std::move(local));
  if (!started.ok()) return started.status();
  c->local_ = *std::move(started);
  return c;
}

Cluster::~Cluster() {
  local_.reset();
  std::error_code ec;
  std::filesystem::remove_all(log_dir_, ec);
}

absl::StatusOr<internal::v1::LoadReport> Cluster::RankLoad(int i) {
  auto stub = internal::v1::Rank::NewStub(
      grpc::CreateChannel(local_->rank_address(i), grpc::InsecureChannelCredentials()));
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
      if (load->running() == 0 && load->waiting() == 0 &&
          load->free_kv_blocks() == load->total_kv_blocks() &&
          load->free_state_slots() == load->total_state_slots()) {
        return absl::OkStatus();
      }
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(absl::StrCat("rank", i), " not idle after ",
                                                      absl::FormatDuration(timeout), ": ",
                                                      last.ShortDebugString()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace nextserve::testing
