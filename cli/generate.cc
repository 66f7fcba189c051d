// `nextserve generate` and `nextserve chat`: stream from a router to the terminal. Ctrl-C cancels
// the request in flight (the router aborts it on the rank); usage goes to stderr.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "cli/serving_commands.h"
#include "cli/tls.h"
#include "sdk/cpp/client.h"

namespace nextserve::cli {
namespace {

// Flags shared by generate and chat.
struct CommonFlags {
  std::string addr = "127.0.0.1:8000";
  int64_t max_tokens = -1, top_k = -2, seed = -1, timeout_s = 0;
  std::string temperature, top_p, min_p, repetition_penalty, stop;
  bool ignore_eos = false, quiet = false;
  std::string api_key, tls_server_name;
  TlsFiles tls;

  void Declare(Flags& flags) {
    flags.String("addr", &addr, "router address host:port (default 127.0.0.1:8000)");
    flags.String("api-key", &api_key, "API key for the router (default: $NEXTSERVE_API_KEY)");
    AddTlsFlags(flags, "tls", "TLS to the router (-ca: its CA; -cert/-key: mutual TLS)", &tls);
    flags.String("tls-server-name", &tls_server_name,
                 "name to check in the router's certificate (default: the --addr host)");
    flags.Int("max-tokens", &max_tokens, "most tokens to generate (default: up to the context)");
    flags.String("temperature", &temperature, "0 = greedy (default: the model's)");
    flags.String("top-p", &top_p, "nucleus sampling mass in (0, 1] (default: the model's)");
    flags.Int("top-k", &top_k, "keep the k most likely tokens, 0 = off (default: the model's)");
    flags.String("min-p", &min_p,
                 "drop tokens below min_p x the top probability (default: the model's)");
    flags.String("repetition-penalty", &repetition_penalty, "> 0, 1 = off (default: the model's)");
    flags.Int("seed", &seed, "sampling seed (default: random)");
    flags.String("stop", &stop, "a stop string (the text ends before it)");
    flags.Bool("ignore-eos", &ignore_eos, "keep generating past end-of-sequence");
    flags.Int("timeout-s", &timeout_s, "deadline per request in seconds (default: none)");
    flags.Bool("quiet", &quiet, "no usage line on stderr");
  }

  // The client for --addr with --api-key / $NEXTSERVE_API_KEY and the TLS flags.
  absl::StatusOr<std::unique_ptr<sdk::Client>> Connect() const {
    sdk::ConnectOptions options;
    options.api_key = api_key;
    if (options.api_key.empty()) {
      if (const char* env = std::getenv("NEXTSERVE_API_KEY")) options.api_key = env;
    }
    if (tls.any()) {
      absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
          ChannelCredentials(tls);
      if (!credentials.ok()) return credentials.status();
      options.credentials = *std::move(credentials);
    }
    options.server_name = tls_server_name;
    return sdk::Client::Create(addr, options);
  }

  // Fills the request's parameters; InvalidArgument naming the flag.
  absl::Status Apply(v1::GenerateRequest* req) const {
    v1::SamplingParams* p = req->mutable_sampling();
    struct FloatFlag {
      const char* name;
      const std::string& value;
      void (v1::SamplingParams::*set)(float);
    };
    for (const FloatFlag& f :
         {FloatFlag{"temperature", temperature, &v1::SamplingParams::set_temperature},
          FloatFlag{"top-p", top_p, &v1::SamplingParams::set_top_p},
          FloatFlag{"min-p", min_p, &v1::SamplingParams::set_min_p},
          FloatFlag{"repetition-penalty", repetition_penalty,
                    &v1::SamplingParams::set_repetition_penalty}}) {
      if (f.value.empty()) continue;
      float v;
      if (!absl::SimpleAtof(f.value, &v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", f.name, ": '", f.value, "' is not a number"));
      }
      (p->*f.set)(v);
    }
    if (top_k != -2) p->set_top_k(static_cast<int32_t>(top_k));
    if (seed >= 0) p->set_seed(static_cast<uint64_t>(seed));
    if (max_tokens != -1) req->set_max_tokens(static_cast<int32_t>(max_tokens));
    if (!stop.empty()) req->add_stop(stop);
    req->set_ignore_eos(ignore_eos);
    return absl::OkStatus();
  }

  sdk::CallOptions Call() const {
    return {.timeout = timeout_s > 0 ? absl::Seconds(timeout_s) : absl::InfiniteDuration()};
  }
};

// SIGINT cancels the stream in flight (from a thread that waits for the signal), not the process.
class InterruptCanceller {
 public:
  InterruptCanceller() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread([this, set] {
      for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0) continue;
        interrupted_ = true;
        std::lock_guard lock(mu_);
        if (stream_ != nullptr) stream_->Cancel();
      }
    }).detach();
  }
  void Watch(sdk::GenerateStream* stream) {
    std::lock_guard lock(mu_);
    stream_ = stream;
  }
  bool interrupted() const { return interrupted_; }
  void Reset() { interrupted_ = false; }

 private:
  std::mutex mu_;
  sdk::GenerateStream* stream_ = nullptr;
  std::atomic<bool> interrupted_{false};
};

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return "unspecified";
  }
}

// Streams one request to stdout; returns the text, or the error.
absl::StatusOr<std::string> Stream(sdk::Client& client, const v1::GenerateRequest& req,
                                   const CommonFlags& common, InterruptCanceller& interrupt) {
  const absl::Time start = absl::Now();
  std::unique_ptr<sdk::GenerateStream> stream = client.StartGenerate(req, common.Call());
  interrupt.Watch(stream.get());
  std::string text;
  std::optional<v1::Final> final;
  v1::GenerateResponse r;
  while (stream->Next(&r)) {
    if (r.has_delta()) {
      std::fwrite(r.delta().text().data(), 1, r.delta().text().size(), stdout);
      std::fflush(stdout);
      text += r.delta().text();
    } else if (r.has_final()) {
      final = r.final();
    }
  }
  absl::Status status = stream->Finish();
  interrupt.Watch(nullptr);
  if (!text.empty() || status.ok()) {
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }
  if (!status.ok()) {
    if (interrupt.interrupted()) return absl::CancelledError("interrupted");
    return status;
  }
  if (final && !common.quiet) {
    const v1::Usage& u = final->usage();
    const double secs = absl::ToDoubleSeconds(absl::Now() - start);
    std::fprintf(stderr,
                 "[%s%s%s | prompt %d, completion %d tokens | queue %.3f s, first token %.3f s | "
                 "%.1f tokens/s]\n",
                 FinishName(final->finish_reason()), final->stop_reason().empty() ? "" : ": ",
                 final->stop_reason().c_str(), u.prompt_tokens(), u.completion_tokens(),
                 u.queue_time_s(), u.time_to_first_token_s(),
                 u.completion_tokens() > 1 && secs > u.time_to_first_token_s()
                     ? (u.completion_tokens() - 1) / (secs - u.time_to_first_token_s())
                     : 0.0);
  }
  return text;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int Generate(int argc, char** argv) {
  CommonFlags common;
  std::string prompt, prompt_ids;
  bool chat_template = false;
  Flags flags(
      "nextserve generate [--addr HOST:PORT] (--prompt TEXT | --prompt-ids 1,2,3) "
      "[--chat-template] "
      "[--max-tokens N] [--temperature F] ...");
  common.Declare(flags);
  flags.String("prompt", &prompt, "prompt text (tokenized as is)");
  flags.String("prompt-ids", &prompt_ids, "prompt token ids, comma-separated");
  flags.Bool("chat-template", &chat_template,
             "send --prompt as one user message through the chat template");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return Flags::Report(s, flags);
  if (prompt.empty() == prompt_ids.empty()) {
    return Flags::Report(absl::InvalidArgumentError("give one of --prompt and --prompt-ids"),
                         flags);
  }
  v1::GenerateRequest req;
  if (!prompt_ids.empty()) {
    for (absl::string_view part : absl::StrSplit(prompt_ids, ',', absl::SkipWhitespace())) {
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) {
        return Flags::Report(absl::InvalidArgumentError(
                                 absl::StrCat("--prompt-ids: '", part, "' is not a token id")),
                             flags);
      }
      req.mutable_token_ids()->add_ids(id);
    }
  } else if (chat_template) {
    v1::ChatMessage* m = req.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(prompt);
  } else {
    req.set_text(prompt);
  }
  if (absl::Status s = common.Apply(&req); !s.ok()) return Flags::Report(s, flags);
  absl::StatusOr<std::unique_ptr<sdk::Client>> client = common.Connect();
  if (!client.ok()) return Flags::Report(client.status(), flags);
  InterruptCanceller interrupt;
  absl::StatusOr<std::string> text = Stream(**client, req, common, interrupt);
  if (!text.ok()) return Fail(text.status());
  return 0;
}

int Chat(int argc, char** argv) {
  CommonFlags common;
  std::string system;
  Flags flags(
      "nextserve chat [--addr HOST:PORT] [--system TEXT] [--max-tokens N] [--temperature F] ...");
  common.Declare(flags);
  flags.String("system", &system, "a system message to start the conversation");
  if (absl::Status s = flags.Parse(argc, argv); !s.ok()) return Flags::Report(s, flags);
  v1::GenerateRequest req;
  if (absl::Status s = common.Apply(&req); !s.ok()) return Flags::Report(s, flags);
  v1::Chat& chat = *req.mutable_chat();
  if (!system.empty()) {
    v1::ChatMessage* m = chat.add_messages();
    m->set_role("system");
    m->set_content(system);
  }
  absl::StatusOr<std::unique_ptr<sdk::Client>> connected = common.Connect();
  if (!connected.ok()) return Flags::Report(connected.status(), flags);
  std::unique_ptr<sdk::Client> client = *std::move(connected);
  InterruptCanceller interrupt;
  const bool tty = isatty(STDIN_FILENO);
  if (tty)
    std::fprintf(stderr, "chatting with %s: an empty line or Ctrl-D ends, Ctrl-C stops an answer\n",
                 common.addr.c_str());
  std::string line;
  for (;;) {
    if (tty) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line) || (tty && line.empty())) break;
    if (line.empty()) continue;
    v1::ChatMessage* user = chat.add_messages();
    user->set_role("user");
    user->set_content(line);
    interrupt.Reset();
    absl::StatusOr<std::string> answer = Stream(*client, req, common, interrupt);
    if (!answer.ok()) {
      chat.mutable_messages()->RemoveLast();  // the turn did not happen
      if (answer.status().code() == absl::StatusCode::kCancelled) continue;
      return Fail(answer.status());
    }
    v1::ChatMessage* assistant = chat.add_messages();
    assistant->set_role("assistant");
    assistant->set_content(*answer);
  }
  return 0;
}

}  // namespace nextserve::cli
