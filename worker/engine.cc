#include "worker/engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "comm/communicator.h"

namespace nextserve::worker {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

Engine::Engine(std::shared_ptr<const ModelWeights> weights, kernels::Backend* backend,
               EngineOptions options, comm::Communicator* comm,
               std::optional<ExpertPlacement> placement)
    : model_(std::move(weights), backend, options.cache, comm, std::move(placement), options.model),
      options_(options),
      // The longest sequence is bounded by the model and by the whole KV cache of this rank.
      max_context_(std::min(
          options.max_context > 0 ? options.max_context : model_.config().max_position_embeddings,
          options.cache.max_blocks * options.cache.block_size)),
      scheduler_(options.scheduler, [this] { return model_.NewSequence(); }) {
  // Serving steps then allocate no backend memory (the largest step is known up front).
  model_.ReserveWorkspace(options.scheduler.max_batch_tokens);
  published_.free_blocks = options.cache.max_blocks;
  published_.free_slots = options.cache.max_slots;
  grouped_ = model_.communicator().size() > 1;
  thread_ = std::thread([this] { grouped_ ? GroupLoop() : Loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

absl::StatusOr<std::shared_ptr<OutputChannel>> Engine::Submit(SubmitSpec spec) {
  const ModelConfig& c = model_.config();
  if (spec.prompt.empty()) return absl::InvalidArgumentError("prompt_ids: empty prompt");
  for (size_t i = 0; i < spec.prompt.size(); ++i) {
    if (spec.prompt[i] < 0 || spec.prompt[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt_ids[", i, "]: token id ", spec.prompt[i], " is outside [0, ", c.vocab_size, ")"));
    }
  }
  if (spec.max_tokens < 1) return absl::InvalidArgumentError("max_tokens: must be at least 1");
  if (static_cast<int64_t>(spec.prompt.size()) + spec.max_tokens > max_context_) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", spec.prompt.size(), " tokens) + max_tokens (", spec.max_tokens,
                     ") exceeds the context of ", max_context_, " tokens"));
  }
  const std::vector<int32_t> eos(c.eos_token_ids.begin(), c.eos_token_ids.end());
  auto sampler = sampling::Sampler::Create(spec.sampling, c.vocab_size, spec.prompt, eos,
                                           spec.already_generated);
  if (!sampler.ok()) return sampler.status();
  auto r = std::make_unique<Request>(Request{.id = spec.id,
                                             .tokens = spec.prompt,
                                             .prompt_len = static_cast<int64_t>(spec.prompt.size()),
                                             .max_tokens = spec.max_tokens,
                                             .sampler = std::move(*sampler),
                                             .want_logprobs = spec.sampling.logprobs >= 0,
                                             .out = std::make_shared<OutputChannel>(),
                                             .arrival = std::chrono::steady_clock::now(),
                                             .scheduled_once = false,
                                             .state = nullptr,
                                             .computed = 0});
  auto out = r->out;
  {
    std::lock_guard lock(mu_);
    if (stop_) return absl::UnavailableError("rank is shutting down");
    if (!broken_.empty()) return absl::UnavailableError(broken_);
    if (std::find(live_ids_.begin(), live_ids_.end(), spec.id) != live_ids_.end()) {
      return absl::AlreadyExistsError(
          absl::StrCat("request_id '", spec.id, "' is already running"));
    }
    live_ids_.push_back(spec.id);
    incoming_.push_back(std::move(r));
  }
  cv_.notify_one();
  return out;
}

bool Engine::Abort(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    if (std::find(live_ids_.begin(), live_ids_.end(), id) == live_ids_.end()) return false;
    aborts_.push_back(id);
  }
  cv_.notify_one();
  return true;
}

EngineLoad Engine::Load() const {
  constexpr auto kRelaxed = std::memory_order_relaxed;  // independent counters, each current
  return {.running = published_.running.load(kRelaxed),
          .waiting = published_.waiting.load(kRelaxed),
          .free_blocks = published_.free_blocks.load(kRelaxed),
          .total_blocks = options_.cache.max_blocks,
          .free_slots = published_.free_slots.load(kRelaxed),
          .total_slots = options_.cache.max_slots,
          .block_tokens = options_.cache.block_size,
          .max_context = max_context_,
          .steps = published_.steps.load(kRelaxed),
          .preemptions = published_.preemptions.load(kRelaxed),
          .prefix_queries = published_.prefix_queries.load(kRelaxed),
          .prefix_hits = published_.prefix_hits.load(kRelaxed),
          .prefix_query_tokens = published_.prefix_query_tokens.load(kRelaxed),
          .prefix_hit_tokens = published_.prefix_hit_tokens.load(kRelaxed),
          .snapshots_used = published_.snapshots_used.load(kRelaxed),
          .total_snapshots = options_.cache.prefix_cache ? options_.cache.max_snapshots : 0,
          .snapshot_evictions = published_.snapshot_evictions.load(kRelaxed),
          .block_evictions = published_.block_evictions.load(kRelaxed),
          .cached_blocks = published_.cached_blocks.load(kRelaxed)};
}

void Engine::Finish(Request* r, worker::Finish how, std::string error, bool unavailable) {
  RankOutput out;
  out.finish = how;
  out.error = std::move(error);
  out.unavailable = unavailable;
  r->out->Push(std::move(out));
  std::lock_guard lock(mu_);
  live_ids_.erase(std::remove(live_ids_.begin(), live_ids_.end(), r->id), live_ids_.end());
}

void Engine::Loop() {
  while (true) {
    std::vector<std::unique_ptr<Request>> incoming;
    std::vector<std::string> aborts;
    {
      std::unique_lock lock(mu_);
      // Sleep (no CPU) until there is work or something to do.
      cv_.wait(lock, [&] {
        return stop_ || !incoming_.empty() || !aborts_.empty() || !scheduler_.idle();
      });
      if (stop_) break;
      incoming.swap(incoming_);
      aborts.swap(aborts_);
    }
    for (auto& r : incoming) scheduler_.Add(std::move(r));
    for (const std::string& id : aborts) {
      if (auto r = scheduler_.Remove(id)) Finish(r.get(), Finish::kAborted);
    }
    if (!scheduler_.idle()) Step();
    PublishLoad();
  }
  // Shutting down: everything still queued or running ends as aborted.
  std::vector<std::unique_ptr<Request>> rest;
  {
    std::lock_guard lock(mu_);
    rest.swap(incoming_);
  }
  for (auto& r : rest) Finish(r.get(), Finish::kAborted);
  std::vector<std::string> ids;
  {
    std::lock_guard lock(mu_);
    ids = live_ids_;
  }
  for (const std::string& id : ids) {
    if (auto r = scheduler_.Remove(id)) Finish(r.get(), Finish::kAborted);
  }
}

std::string Engine::Broken() const {
  std::lock_guard lock(mu_);
  return broken_;
}

void Engine::FailAll(const std::string& why) {
  std::vector<std::string> ids;
  std::vector<std::unique_ptr<Request>> queued;
  bool first = false;
  {
    std::lock_guard lock(mu_);
    first = broken_.empty();
    broken_ = why;
    ids = live_ids_;
    queued.swap(incoming_);
  }
  if (first && options_.on_broken) options_.on_broken(why);
  for (auto& r : queued) Finish(r.get(), Finish::kError, why, /*unavailable=*/true);
  for (const std::string& id : ids) {
    if (auto r = scheduler_.Remove(id)) Finish(r.get(), Finish::kError, why, /*unavailable=*/true);
  }
}

void Engine::GroupLoop() {
  comm::Communicator& comm = model_.communicator();
  // Idle ranks re-ask this often: a new request starts within about this long, and the wait sleeps.
  constexpr auto kIdlePoll = std::chrono::milliseconds(2);
  while (true) {
    std::vector<std::unique_ptr<Request>> incoming;
    std::vector<std::string> aborts;
    bool stopping;
    {
      std::unique_lock lock(mu_);
      if (incoming_.empty() && aborts_.empty() && scheduler_.idle() && !stop_) {
        cv_.wait_for(lock, kIdlePoll);
      }
      incoming.swap(incoming_);
      aborts.swap(aborts_);
      stopping = stop_;
    }
    for (auto& r : incoming) scheduler_.Add(std::move(r));
    for (const std::string& id : aborts) {
      if (auto r = scheduler_.Remove(id)) Finish(r.get(), Finish::kAborted);
    }
    // [work, stop]: step if any rank has work; stop together when any rank stops.
    int64_t flags[2] = {scheduler_.idle() ? 0 : 1, stopping ? 1 : 0};
    const auto agree_start = std::chrono::steady_clock::now();
    const absl::Status agreed = comm.AllReduce(flags, 2, comm::ReduceOp::kMax);
    if (options_.metrics && flags[0] != 0)  // idle polls are not waiting for a slow rank
      options_.metrics->step_sync_wait_seconds.Add(SecondsSince(agree_start));
    if (auto s = agreed; !s.ok()) {
      FailAll(absl::StrCat("expert-parallel group failed: ", s.message()));
      return;
    }
    if (flags[1] != 0) break;
    if (flags[0] != 0) Step();
    {
      std::lock_guard lock(mu_);
      if (!broken_.empty()) return;
    }
    PublishLoad();
  }
  FailAll("rank is shutting down");
}

void Engine::Step() {
  const auto step_start = std::chrono::steady_clock::now();
  ForwardProfile profile;
  std::vector<std::unique_ptr<Request>> unservable;
  std::vector<ScheduledWork> work = scheduler_.Schedule(model_.cache_pool(), &unservable);
  PublishLoad();  // admitted requests show as running before their first tokens go out
  for (auto& r : unservable) {
    Finish(r.get(), Finish::kError,
           absl::StrCat("request '", r->id, "' needs more KV blocks than this rank has"));
  }
  if (!work.empty() || grouped_) {  // in a group, an empty step still serves the others' tokens
    std::vector<SequenceInput> batch;
    for (const ScheduledWork& w : work) {
      batch.push_back({w.request->state.get(),
                       std::span<const int32_t>(w.request->tokens).subspan(w.begin, w.count),
                       /*all_logits=*/false, /*no_logits=*/!w.samples});
      if (!w.request->scheduled_once) {
        w.request->scheduled_once = true;
        RankOutput first;
        first.queue_time_s = SecondsSince(w.request->arrival);
        w.request->out->Push(std::move(first));
      }
    }
    // Requests that want logprobs take the host sampler (it computes them); a step without any
    // samples every row with one backend op on the logits where the backend left them.
    bool host_sampling = false;
    for (const ScheduledWork& w : work) host_sampling |= w.samples && w.request->want_logprobs;
    auto logits = model_.Step(batch, options_.metrics ? &profile : nullptr, host_sampling);
    if (!logits.ok() && grouped_ &&
        (absl::IsDeadlineExceeded(logits.status()) || absl::IsUnavailable(logits.status()) ||
         absl::IsDataLoss(logits.status()))) {
      // A lost peer: the group cannot step again.
      FailAll(absl::StrCat("expert-parallel group failed: ", logits.status().message()));
      return;
    }
    if (!logits.ok()) {
      // A model error fails this step's requests, not the rank.
      for (const ScheduledWork& w : work) {
        const std::string id = w.request->id;
        if (auto r = scheduler_.Remove(id))
          Finish(r.get(), Finish::kError, std::string(logits.status().message()));
      }
    } else {
      scheduler_.Commit(work);
      const int64_t vocab = model_.config().vocab_size;
      std::vector<std::string> done;
      // One sampled token (or the error) per sampling request, in batch order.
      sample_rows_.clear();
      sampled_.clear();
      absl::Status batch_error;
      if (!host_sampling) {
        for (const ScheduledWork& w : work) {
          if (w.samples) sample_rows_.push_back(w.request->sampler.Row());
        }
        sampled_.resize(sample_rows_.size());
        batch_error =
            model_.backend().SampleRows(logits->data(), static_cast<int64_t>(sample_rows_.size()),
                                        vocab, sample_rows_, sampled_.data());
      }
      // A bad row (NaN logits, say) fails the op for the whole step: then every request samples
      // its own row on the host, so that only the bad one ends with the error. (Rare: a copy.)
      std::vector<float> host_copy;
      if (!batch_error.ok()) {
        host_copy.resize(logits->size());
        model_.backend().CopyToHost(logits->data(), host_copy.data(),
                                    host_copy.size() * sizeof(float));
        logits = std::span<const float>(host_copy);
        host_sampling = true;
      }
      int64_t row = 0;
      for (const ScheduledWork& w : work) {
        if (!w.samples) continue;
        Request& r = *w.request;
        absl::StatusOr<sampling::SampleResult> sample;
        if (host_sampling) {
          sample = r.sampler.Sample(std::span<const float>(logits->data() + row * vocab, vocab));
        } else {
          auto stop = r.sampler.Record(sampled_[row]);
          if (stop.ok()) {
            sample = sampling::SampleResult{};
            sample->token = sampled_[row];
            sample->stop = *stop;
          } else {
            sample = stop.status();
          }
        }
        ++row;
        if (!sample.ok()) {
          Finish(&r, Finish::kError, std::string(sample.status().message()));
          done.push_back(r.id);
          continue;
        }
        r.tokens.push_back(sample->token);
        RankOutput out;
        out.tokens.push_back(sample->token);
        if (r.want_logprobs) out.samples.push_back(*sample);
        if (sample->stop) {
          out.finish = Finish::kStopToken;
        } else if (r.generated() >= r.max_tokens ||
                   static_cast<int64_t>(r.tokens.size()) >= max_context_) {
          out.finish = Finish::kLength;
        }
        const bool finished = out.finish != Finish::kNone;
        r.out->Push(std::move(out));
        if (finished) {
          done.push_back(r.id);
          std::lock_guard lock(mu_);
          live_ids_.erase(std::remove(live_ids_.begin(), live_ids_.end(), r.id), live_ids_.end());
        }
      }
      for (const std::string& id : done) scheduler_.Remove(id, /*finished=*/true);  // frees now
    }
  }
  if (options_.metrics) {
    options_.metrics->RecordStep(SecondsSince(step_start), profile.communication,
                                 profile.all_to_all_bytes, model_.expert_token_counts());
  }
  published_.steps.fetch_add(1, std::memory_order_relaxed);
}

void Engine::PublishLoad() {
  int64_t incoming = 0;
  {
    std::lock_guard lock(mu_);
    incoming = static_cast<int64_t>(incoming_.size());
  }
  constexpr auto kRelaxed = std::memory_order_relaxed;
  CachePool& pool = model_.cache_pool();
  published_.running.store(scheduler_.running(), kRelaxed);
  published_.waiting.store(scheduler_.waiting() + incoming, kRelaxed);
  published_.free_blocks.store(pool.free_blocks(), kRelaxed);
  published_.free_slots.store(pool.free_slots(), kRelaxed);
  published_.preemptions.store(scheduler_.preemptions(), kRelaxed);
  const PrefixCacheStats prefix = pool.stats();
  published_.prefix_queries.store(prefix.queries, kRelaxed);
  published_.prefix_hits.store(prefix.hits, kRelaxed);
  published_.prefix_query_tokens.store(prefix.query_tokens, kRelaxed);
  published_.prefix_hit_tokens.store(prefix.hit_tokens, kRelaxed);
  published_.snapshots_used.store(prefix.snapshots_used, kRelaxed);
  published_.snapshot_evictions.store(prefix.snapshot_evictions, kRelaxed);
  published_.block_evictions.store(prefix.block_evictions, kRelaxed);
  published_.cached_blocks.store(prefix.cached_blocks, kRelaxed);
}

}  // namespace nextserve::worker
