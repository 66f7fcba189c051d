// `nextserve`: the command-line entry point, one subcommand per job.
//   nextserve tokenize   --model DIR [--text-file F] [--parse-special] [--stats] [--repeat N]
//   nextserve detokenize --model DIR --ids 1,2,3 [--skip-special]
//   nextserve plan       --model DIR --gpus N[,N...] --gpu-memory 141GiB [--context N]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "cli/plan.h"
#include "cli/serving_commands.h"
#include "tokenizer/tokenizer.h"

namespace {

using nextserve::cli::Flags;
using nextserve::tokenizer::Tokenizer;

constexpr char kUsage[] =
    "usage: nextserve <command> [flags]\n"
    "commands:\n"
    "  tokenize    text (a file, or stdin) -> token ids, comma-separated on one line\n"
    "  detokenize  token ids -> text\n"
    "  plan        weights, caches and what fits per GPU for a config.json (bf16 or FP8)\n"
    "  up          start a router and N ranks on this machine (Ctrl-C stops them)\n"
    "  generate    stream a completion from a router\n"
    "  chat        chat with a router interactively\n"
    "`nextserve <command> --help` lists a command's flags.\n";

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

int Tokenize(int argc, char** argv) {
  std::string model, text_file;
  bool parse_special = false, stats = false;
  int64_t repeat = 1;
  Flags flags(
      "nextserve tokenize --model DIR [--text-file F] [--parse-special] [--stats] [--repeat N]");
  flags.String("model", &model, "model directory with tokenizer.json (or vocab.json + merges.txt)");
  flags.String("text-file", &text_file, "UTF-8 text to tokenize (default: standard input)");
  flags.Bool("parse-special", &parse_special,
             "turn special-token text such as <|im_start|> into its id");
  flags.Bool("stats", &stats, "print load time and encode throughput to stderr");
  flags.Int("repeat", &repeat, "encode this many times (for --stats; ids are printed once)");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return Flags::Report(s, flags);
  if (model.empty()) return Flags::Report(absl::InvalidArgumentError("--model is required"), flags);
  if (repeat < 1) return Flags::Report(absl::InvalidArgumentError("--repeat must be >= 1"), flags);

  std::string text;
  if (text_file.empty()) {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(text_file, std::ios::binary);
    if (!in) return Fail(absl::NotFoundError(text_file + ": cannot open"));
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto tok = Tokenizer::Load(model);
  if (!tok.ok()) return Fail(tok.status());
  const auto t1 = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<int32_t>> ids;
  double best = 1e30;
  for (int64_t r = 0; r < repeat; ++r) {
    const auto a = std::chrono::steady_clock::now();
    ids = (*tok)->Encode(text, {.parse_special = parse_special});
    if (!ids.ok()) return Fail(ids.status());
    best =
        std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::string line;
  line.reserve(ids->size() * 7);
  for (size_t i = 0; i < ids->size(); ++i) {
    if (i) line.push_back(',');
    line += std::to_string((*ids)[i]);
  }
  std::printf("%s\n", line.c_str());
  if (stats) {
    std::fprintf(stderr,
                 "load %.3f s; %zu bytes -> %zu ids; best encode of %lld: %.4f s = %.2f MB/s\n",
                 std::chrono::duration<double>(t1 - t0).count(), text.size(), ids->size(),
                 static_cast<long long>(repeat), best, text.size() / best / 1e6);
  }
  return 0;
}

int Detokenize(int argc, char** argv) {
  std::string model, ids_flag;
  bool skip_special = false;
  Flags flags("nextserve detokenize --model DIR --ids 1,2,3 [--skip-special]");
  flags.String("model", &model, "model directory with tokenizer.json (or vocab.json + merges.txt)");
  flags.String("ids", &ids_flag, "comma-separated token ids");
  flags.Bool("skip-special", &skip_special, "leave special tokens out of the text");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return Flags::Report(s, flags);
  if (model.empty()) return Flags::Report(absl::InvalidArgumentError("--model is required"), flags);
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(ids_flag, ',', absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return Flags::Report(
          absl::InvalidArgumentError("--ids: '" + std::string(part) + "' is not an id"), flags);
    }
    ids.push_back(id);
  }
  auto tok = Tokenizer::Load(model);
  if (!tok.ok()) return Fail(tok.status());
  auto text = (*tok)->Decode(ids, skip_special);
  if (!text.ok()) return Fail(text.status());
  std::fwrite(text->data(), 1, text->size(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  // Each command parses its own flags; argv[1] (the command) plays argv[0] for it.
  if (command == "tokenize") return Tokenize(argc - 1, argv + 1);
  if (command == "detokenize") return Detokenize(argc - 1, argv + 1);
  if (command == "plan") return nextserve::cli::PlanCommand(argc - 1, argv + 1);
  if (command == "up") return nextserve::cli::Up(argc - 1, argv + 1);
  if (command == "generate") return nextserve::cli::Generate(argc - 1, argv + 1);
  if (command == "chat") return nextserve::cli::Chat(argc - 1, argv + 1);
  std::fprintf(stderr, "error: unknown command '%s'\n%s", command.c_str(), kUsage);
  return 2;
}
