// nextserve-run: the offline engine. Loads a checkpoint, feeds one prompt of token ids, prints the
// greedy continuation on one line, and optionally writes the logits of every prompt position and
// every generated step (rows = prompt length + max_tokens - 1) as a float32 .npy [rows, vocab].
// Under `mpirun -np R` the routed experts are sharded over the R ranks: rank 0 runs the prompt and
// prints; the other ranks join every step with no tokens of their own, serving their experts.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "model/config.h"
#include "model/expert_placement.h"
#include "model/npy.h"
#include "model/qwen3_next.h"
#include "model/weights.h"
#include "worker/group_model.h"

namespace {

constexpr char kUsage[] =
    "nextserve-run --model DIR --prompt-ids 1,2,3 --max-tokens N [--logits-out FILE.npy] "
    "[--threads N] [--ignore-eos] [--stats] [--compute f32|bf16|auto]";

int UsageError(const std::string& message) {
  std::fprintf(stderr, "error: %s\nusage: %s\n", message.c_str(), kUsage);
  return 2;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, prompt_ids, logits_out, placement_file, compute = "f32";
  int64_t max_tokens = 16, threads = 0;
  bool ignore_eos = false, stats = false;
  nextserve::cli::Flags flags(kUsage);
  flags.String("model", &dir, "Hugging Face model directory (config.json + safetensors)");
  flags.String("prompt-ids", &prompt_ids, "comma-separated prompt token ids, e.g. 1,2,3");
  flags.Int("max-tokens", &max_tokens, "tokens to generate, greedy (default 16)");
  flags.String("logits-out", &logits_out, "optional .npy file for the logits [positions, vocab]");
  flags.Int("threads", &threads, "CPU threads (default: all cores)");
  flags.Bool("ignore-eos", &ignore_eos, "keep generating past the model's end-of-sequence tokens");
  flags.String("expert-placement", &placement_file,
               "under mpirun: file with the rank of each routed expert (default: contiguous)");
  flags.Bool("stats", &stats, "print load and step timings to stderr");
  flags.String("compute", &compute,
               "matrix products for bf16 weights: f32 (default: exact, for comparing logits with "
               "the reference), bf16 or auto (bf16 where the CPU has AVX512-BF16, as the rank)");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return nextserve::cli::Flags::Report(s, flags);
  if (!flags.positional().empty())
    return UsageError("unexpected argument '" + flags.positional()[0] + "'");
  if (dir.empty()) return UsageError("--model is required");
  if (prompt_ids.empty()) return UsageError("--prompt-ids is required");
  if (max_tokens < 1) return UsageError("--max-tokens must be at least 1");
  if (compute != "f32" && compute != "bf16" && compute != "auto") {
    return UsageError("--compute '" + compute + "': expected f32, bf16 or auto");
  }
  nextserve::kernels::cpu::SetLinearCompute(compute == "f32"
                                                ? nextserve::kernels::cpu::Compute::kF32
                                                : nextserve::kernels::cpu::Compute::kBF16);
  std::vector<int32_t> prompt;
  for (absl::string_view piece : absl::StrSplit(prompt_ids, ',')) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return UsageError("--prompt-ids: '" + std::string(piece) + "' is not an integer token id");
    }
    prompt.push_back(id);
  }
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));

  const auto load_start = std::chrono::steady_clock::now();
  auto group = nextserve::worker::LoadGroupModel(dir, placement_file);
  if (!group.ok()) {
    std::fprintf(stderr, "error: %s\n", group.status().ToString().c_str());
    return 1;
  }
  const int rank = group->rank();
  nextserve::comm::Communicator* comm = group->comm.get();
  const double load_s = Seconds(load_start);
  auto backend = nextserve::kernels::MakeCpuBackend();
  nextserve::Qwen3NextModel model(group->weights, backend.get(), {}, comm, group->placement);
  const int64_t vocab = model.config().vocab_size;
  if (static_cast<int64_t>(prompt.size()) + max_tokens > model.config().max_position_embeddings) {
    return UsageError("prompt length + --max-tokens exceeds the model's context of " +
                      std::to_string(model.config().max_position_embeddings) + " tokens");
  }
  const bool keep_logits = !logits_out.empty();
  const auto& eos = model.config().eos_token_ids;

  auto seq = model.NewSequence();
  std::vector<float> all_logits;
  std::vector<int32_t> generated;
  std::vector<int32_t> feed = prompt;
  const auto gen_start = std::chrono::steady_clock::now();
  double prefill_s = 0;
  // Every rank takes every step; a step happens while rank 0 still has tokens to produce.
  bool done = rank != 0;
  for (int64_t step = 0;; ++step) {
    int64_t work = done ? 0 : 1;
    if (auto s = comm->AllReduce(&work, 1, nextserve::comm::ReduceOp::kMax); !s.ok()) {
      std::fprintf(stderr, "error: rank %d: %s\n", rank, s.ToString().c_str());
      return 1;
    }
    if (work == 0) break;
    std::vector<nextserve::SequenceInput> batch;
    if (!done) batch.push_back({seq.get(), feed, /*all_logits=*/keep_logits && step == 0});
    auto logits = model.Forward(batch);
    if (!logits.ok()) {
      std::fprintf(stderr, "error: rank %d: %s\n", rank, logits.status().ToString().c_str());
      return 1;
    }
    if (done) continue;
    if (step == 0) prefill_s = Seconds(gen_start);
    if (keep_logits) all_logits.insert(all_logits.end(), logits->begin(), logits->end());
    const float* last = logits->data() + logits->size() - vocab;
    const int32_t next = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
    generated.push_back(next);
    const bool eos_hit = !ignore_eos && std::find(eos.begin(), eos.end(), next) != eos.end();
    if (eos_hit || static_cast<int64_t>(generated.size()) >= max_tokens) done = true;
    feed.assign(1, next);
  }
  if (rank != 0) return 0;
  const double total_s = Seconds(gen_start);

  for (size_t i = 0; i < generated.size(); ++i) std::printf(i ? ",%d" : "%d", generated[i]);
  std::printf("\n");
  if (keep_logits) {
    const int64_t rows = static_cast<int64_t>(all_logits.size()) / vocab;
    if (auto s = nextserve::WriteNpyF32(logits_out, {rows, vocab}, all_logits.data()); !s.ok()) {
      std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  if (stats) {
    const double decode_s = total_s - prefill_s;
    std::fprintf(stderr,
                 "load %.3f s | prefill %zu tokens %.3f s (%.1f tok/s) | decode %zu tokens %.3f s "
                 "(%.1f tok/s)\n",
                 load_s, prompt.size(), prefill_s, prompt.size() / prefill_s, generated.size() - 1,
                 decode_s, generated.size() > 1 ? (generated.size() - 1) / decode_s : 0.0);
  }
  return 0;
}
