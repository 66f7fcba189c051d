// kernels::cpu::SampleRows against sampling::Sampler, the reference: for every transform, random
// rows (vocabularies of 1,000 and 151,936; 1 to 64 rows per call), many draws with the history
// fed back, the op's token equals the Sampler's for every row at every step and (small
// vocabularies) has non-zero probability under the full-sort reference. Each case also
// checks that the feature it covers changes some tokens (so the comparison could fail), as do a
// different seed and a different draw counter.
#include "kernels/cpu/sample_rows.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <new>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "sampling/reference.h"
#include "sampling/row_settings.h"
#include "sampling/sampler.h"
#include "tests/unit/model/status_matchers.h"

// Counts operator new while enabled, to show that a warm SampleRows call allocates nothing. Not
// under AddressSanitizer, which owns operator new itself.
#if defined(__SANITIZE_ADDRESS__)
#define NEXTSERVE_COUNT_ALLOCATIONS 0
#else
#define NEXTSERVE_COUNT_ALLOCATIONS 1
namespace {
std::atomic<bool> counting{false};
std::atomic<int64_t> allocations{0};
void* CountedAlloc(size_t n) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
}  // namespace
void* operator new(size_t n) {
  return CountedAlloc(n);
}
void* operator new[](size_t n) {
  return CountedAlloc(n);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, size_t) noexcept {
  std::free(p);
}
#endif

namespace nextserve::kernels {
namespace {

using ::nextserve::testing::IsError;
using sampling::RowHistory;
using sampling::Sampler;
using sampling::SamplingParams;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Runs the op on 3 threads (tests default to OMP_NUM_THREADS=1), so that rows really are split.
class ScopedThreads {
 public:
  explicit ScopedThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ScopedThreads() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

struct Case {
  std::string name;
  SamplingParams params;
  bool flat = false;       // unit-normal rows (top-p's worst case) instead of peaked ones
  bool quantized = false;  // logits on a 0.25 grid: ties at the k-th and at the argmax
  int prompt_len = 0;      // prompt drawn from the row's peak ids, so that penalties bite
  int already_generated = 0;
  bool stop_on_peaks = false;  // stop ids (and one eos id) among the peaks: min_tokens bites
  // Removes the covered feature from a row's settings; the op must then pick other tokens for
  // some row at some step. Null: no such check (greedy has no settings left to drop).
  std::function<void(SamplingRow&)> neutralise;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

SamplingParams Params(float temperature, int32_t top_k = 0, float top_p = 1, float min_p = 0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  return p;
}

Case Make(std::string name, SamplingParams params,
          std::function<void(SamplingRow&)> neutralise = nullptr) {
  Case c;
  c.name = std::move(name);
  c.params = std::move(params);
  c.neutralise = std::move(neutralise);
  return c;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  cases.push_back(Make("Greedy", Params(0)));
  cases.push_back(Make("GreedyTies", Params(0), [](SamplingRow& r) { r.temperature = 1; }));
  cases.back().quantized = true;
  cases.push_back(Make("Temperature", Params(0.7f), [](SamplingRow& r) { r.temperature = 1.6f; }));
  cases.push_back(Make("TopKTies", Params(1.0f, 20), [](SamplingRow& r) { r.top_k = 0; }));
  cases.back().quantized = true;
  cases.push_back(Make("TopKTopP", Params(0.8f, 40, 0.7f), [](SamplingRow& r) { r.top_p = 1; }));
  cases.push_back(Make("TopPPeaked", Params(1.0f, 0, 0.9f), [](SamplingRow& r) { r.top_p = 1; }));
  cases.push_back(Make("TopPFlat", Params(1.0f, 0, 0.5f), [](SamplingRow& r) { r.top_p = 1; }));
  cases.back().flat = true;
  cases.push_back(Make("MinP", Params(1.3f, 0, 1, 0.2f), [](SamplingRow& r) { r.min_p = 0; }));
  cases.push_back(Make("TopKMinP", Params(1.3f, 30, 1, 0.2f), [](SamplingRow& r) { r.min_p = 0; }));
  cases.push_back(
      Make("TopPMinP", Params(1.2f, 0, 0.95f, 0.1f), [](SamplingRow& r) { r.min_p = 0; }));
  // Ties across the top-p boundary (kept in id order). Not on flat rows: with that many ties the
  // boundary band is most of the row, slow for a unit test.
  cases.push_back(Make("TopPTies", Params(1.0f, 0, 0.6f), [](SamplingRow& r) { r.top_p = 1; }));
  cases.back().quantized = true;
  {
    Case c = Make("Repetition", Params(0.8f), [](SamplingRow& r) { r.seen = {}; });
    c.params.repetition_penalty = 1.8f;
    c.prompt_len = 30;
    cases.push_back(c);
  }
  {
    Case c = Make("GreedyRepetition", Params(0), [](SamplingRow& r) { r.seen = {}; });
    c.params.repetition_penalty = 1.5f;
    c.prompt_len = 12;
    cases.push_back(c);
  }
  {
    Case c = Make("FrequencyPresence", Params(0.9f, 50), [](SamplingRow& r) {
      r.output_ids = {};
      r.output_counts = {};
    });
    c.params.frequency_penalty = 1.5f;
    c.params.presence_penalty = 0.8f;
    c.prompt_len = 20;
    c.already_generated = 8;
    cases.push_back(c);
  }
  {
    Case c = Make("LogitBias", Params(1.0f, 30), [](SamplingRow& r) {
      r.bias_ids = {};
      r.bias_values = {};
    });
    // Ids 0..4 are background tokens: +8 lifts them among the peaks; 5..9 are pushed out.
    for (int32_t t = 0; t < 5; ++t) c.params.logit_bias.push_back({t, 8.0f});
    for (int32_t t = 5; t < 10; ++t) c.params.logit_bias.push_back({t, -100.0f});
    cases.push_back(c);
  }
  {
    Case c = Make("MinTokens", Params(1.0f, 10), [](SamplingRow& r) { r.banned = {}; });
    c.params.min_tokens = 5;
    c.stop_on_peaks = true;
    cases.push_back(c);
  }
  {
    Case c = Make("Everything", Params(0.9f, 60, 0.9f, 0.02f), [](SamplingRow& r) { r.seen = {}; });
    c.params.repetition_penalty = 1.2f;
    c.params.frequency_penalty = 0.5f;
    c.params.presence_penalty = 0.5f;
    c.params.min_tokens = 3;
    c.params.logit_bias = {{1, 6.0f}, {2, -3.0f}};
    c.prompt_len = 25;
    c.already_generated = 5;
    c.stop_on_peaks = true;
    cases.push_back(c);
  }
  return cases;
}

// One row's logits: a fixed base per row (peaked: 40 strong tokens over a N(0, 2) background;
// flat: N(0, 1)) plus N(0, 0.5) noise, different at each step, so the same tokens recur across
// steps and penalties on them matter.
class Rows {
 public:
  Rows(int64_t rows, int64_t vocab, const Case& c, uint32_t seed)
      : rows_(rows), vocab_(vocab), quantized_(c.quantized), rng_(seed) {
    const float scale = c.flat ? 1.0f : 2.0f;
    const std::vector<float>& normal = Normal();
    base_.resize(rows * vocab);
    peaks_.resize(rows);
    for (int64_t r = 0; r < rows; ++r) {
      float* b = &base_[r * vocab];
      const float* from = &normal[rng_() % (normal.size() - vocab)];
      for (int64_t i = 0; i < vocab; ++i) b[i] = scale * from[i];
      if (c.flat) continue;
      for (int i = 0; i < 40; ++i) {
        const int32_t t = 10 + static_cast<int32_t>(rng_() % (vocab - 10));  // ids < 10: bias case
        b[t] = 9.0f + 0.25f * static_cast<float>(i % 6);  // few distinct heights: ties
        peaks_[r].push_back(t);
      }
    }
    logits_.resize(rows * vocab);
  }

  // This step's rows.
  const std::vector<float>& Next() {
    for (int64_t r = 0; r < rows_; ++r) {
      const float* b = &base_[r * vocab_];
      const std::vector<float>& normal = Normal();
      const float* n = &normal[rng_() % (normal.size() - vocab_)];
      float* out = &logits_[r * vocab_];
      for (int64_t i = 0; i < vocab_; ++i) {
        const float x = b[i] + 0.5f * n[i];
        out[i] = quantized_ ? std::round(x * 4.0f) * 0.25f : x;
      }
    }
    return logits_;
  }
  const std::vector<int32_t>& peaks(int64_t r) const { return peaks_[r]; }

 private:
  int64_t rows_, vocab_;
  bool quantized_;
  std::mt19937 rng_;
  // N(0, 1) values that rows and noise are cut from at random offsets (drawing 10M normals per
  // case would cost more than the comparison).
  static const std::vector<float>& Normal() {
    static const std::vector<float> values = [] {
      std::mt19937 rng(99);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::vector<float> v(151936 + 65537);
      for (float& x : v) x = normal(rng);
      return v;
    }();
    return values;
  }

  std::vector<float> base_, logits_;
  std::vector<std::vector<int32_t>> peaks_;
};

struct Shape {
  int64_t vocab, rows, draws;
};

// Per row: the reference Sampler, and the state the op's settings come from. Even rows drive the
// op through a second Sampler's Row()/Record(), odd rows through RowHistory + RowSettings.
struct RowUnderTest {
  std::optional<Sampler> reference;
  std::optional<Sampler> driver;
  SamplingParams params;
  RowHistory history;
  uint64_t seed = 0;
  const Case* c = nullptr;
  // For the full-sort reference (sampling/reference.h), which reads plain token lists.
  std::vector<int32_t> prompt, output, eos;

  SamplingRow Settings() const {
    return driver ? driver->Row() : sampling::RowSettings(params, seed, history);
  }
  void Record(int32_t token) {
    if (driver) {
      ASSERT_TRUE(driver->Record(token).ok());
    } else {
      history.Record(token);
    }
  }
};

// Runs `draws` steps of `rows` rows, row r sampled as case_of(r), and compares the op with the
// reference row by row. Returns the numbers of (row, step) pairs whose token changed when the
// settings were neutralised, reseeded, or moved to the next draw.
struct Sensitivity {
  int64_t neutralised = 0, reseeded = 0, redrawn = 0, checked = 0, in_reference = 0;
};

Sensitivity CompareWithSampler(const std::function<const Case&(int64_t)>& case_of, Shape shape,
                               uint32_t seed) {
  Sensitivity sens;
  Rows rows(shape.rows, shape.vocab, case_of(0), seed);
  std::mt19937 rng(seed + 1);
  std::vector<RowUnderTest> state(shape.rows);
  for (int64_t r = 0; r < shape.rows; ++r) {
    RowUnderTest& u = state[r];
    u.c = &case_of(r);
    u.params = u.c->params;
    u.seed = 1000003ull * seed + static_cast<uint64_t>(r);
    u.params.seed = u.seed;
    std::vector<int32_t> prompt;
    const std::vector<int32_t>& peaks = rows.peaks(r);
    for (int i = 0; i < u.c->prompt_len; ++i) {
      // Mostly peak ids (repeats included), some background ids.
      prompt.push_back(i % 4 != 3 && !peaks.empty() ? peaks[rng() % peaks.size()]
                                                    : static_cast<int32_t>(rng() % shape.vocab));
    }
    std::vector<int32_t> eos;
    if (u.c->stop_on_peaks && peaks.size() >= 4) {
      u.params.stop_token_ids = {peaks[0], peaks[1], peaks[2]};
      eos = {peaks[3]};
    }
    const auto resumed = prompt.end() - u.c->already_generated;
    u.prompt.assign(prompt.begin(), resumed);
    u.output.assign(resumed, prompt.end());
    u.eos = eos;
    absl::StatusOr<Sampler> ref =
        Sampler::Create(u.params, shape.vocab, prompt, eos, u.c->already_generated);
    EXPECT_TRUE(ref.ok()) << ref.status();
    if (!ref.ok()) return sens;
    u.reference.emplace(*std::move(ref));
    if (r % 2 == 0) {
      u.driver.emplace(
          *Sampler::Create(u.params, shape.vocab, prompt, eos, u.c->already_generated));
    } else {
      std::vector<int32_t> stop_ids = u.params.stop_token_ids;
      stop_ids.insert(stop_ids.end(), eos.begin(), eos.end());
      u.history = RowHistory(u.params, stop_ids, prompt, u.c->already_generated);
    }
  }

  std::vector<SamplingRow> settings(shape.rows), changed(shape.rows);
  std::vector<int32_t> tokens(shape.rows), other(shape.rows);
  auto count_changes = [&](const std::vector<float>& logits, auto&& change) -> int64_t {
    for (int64_t r = 0; r < shape.rows; ++r) {
      changed[r] = settings[r];
      change(r, changed[r]);
    }
    const absl::Status s =
        cpu::SampleRows(logits.data(), shape.rows, shape.vocab, changed, other.data());
    EXPECT_TRUE(s.ok()) << s;
    int64_t n = 0;
    for (int64_t r = 0; r < shape.rows; ++r) n += other[r] != tokens[r];
    return n;
  };

  for (int64_t step = 0; step < shape.draws; ++step) {
    const std::vector<float>& logits = rows.Next();
    for (int64_t r = 0; r < shape.rows; ++r) settings[r] = state[r].Settings();
    const absl::Status s =
        cpu::SampleRows(logits.data(), shape.rows, shape.vocab, settings, tokens.data());
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return sens;
    for (int64_t r = 0; r < shape.rows; ++r) {
      absl::StatusOr<sampling::SampleResult> want =
          state[r].reference->Sample(std::span<const float>(&logits[r * shape.vocab], shape.vocab));
      EXPECT_TRUE(want.ok()) << want.status();
      if (!want.ok()) return sens;
      EXPECT_EQ(tokens[r], want->token) << state[r].c->name << ": row " << r << " of " << shape.rows
                                        << ", step " << step << ", vocab " << shape.vocab;
      if (tokens[r] != want->token) return sens;  // histories diverge from here
      ++sens.checked;
      // Independently of the Sampler's code: the token is one the full-sort reference keeps
      // (for greedy: its argmax). Its full sort is slow, so small vocabularies only.
      if (shape.vocab <= 1000) {
        const std::vector<double> probs = sampling::ReferenceProbabilities(
            std::span<const float>(&logits[r * shape.vocab], shape.vocab), state[r].params,
            state[r].prompt, state[r].output, state[r].eos);
        EXPECT_GT(probs[tokens[r]], 0) << state[r].c->name << ": row " << r << ", step " << step;
        ++sens.in_reference;
      }
      state[r].output.push_back(tokens[r]);
    }
    // The sensitivity checks need no large vocabulary (and would triple its cost).
    if (shape.vocab <= 1000) {
      sens.neutralised += count_changes(logits, [&](int64_t r, SamplingRow& row) {
        if (state[r].c->neutralise) state[r].c->neutralise(row);
      });
      sens.reseeded += count_changes(logits, [](int64_t, SamplingRow& row) { row.seed += 1; });
      sens.redrawn += count_changes(logits, [](int64_t, SamplingRow& row) { row.draw += 1; });
    }
    for (int64_t r = 0; r < shape.rows; ++r) state[r].Record(tokens[r]);
  }
  return sens;
}

std::vector<Shape> Shapes() {
  return {{1000, 1, 60}, {1000, 7, 30}, {1000, 64, 12}, {151936, 1, 8}, {151936, 64, 2}};
}

class SampleRowsTest : public ::testing::TestWithParam<Case> {};

TEST_P(SampleRowsTest, SameTokensAsSampler) {
  const ScopedThreads threads(3);
  const Case& c = GetParam();
  Sensitivity total;
  uint32_t seed = 1;
  for (const Shape& shape : Shapes()) {
    const Sensitivity s =
        CompareWithSampler([&](int64_t) -> const Case& { return c; }, shape, seed++);
    EXPECT_EQ(s.checked, shape.rows * shape.draws)
        << "vocab " << shape.vocab << ", rows " << shape.rows;
    total.neutralised += s.neutralised;
    total.reseeded += s.reseeded;
    total.redrawn += s.redrawn;
    total.checked += s.checked;
  }
  // The comparison could fail: what this case covers changes tokens.
  if (c.neutralise) {
    EXPECT_GT(total.neutralised, 0) << "dropping the feature changed nothing";
  }
  if (!c.params.greedy()) {
    EXPECT_GT(total.reseeded, total.checked / 20) << "another seed changed (almost) nothing";
    EXPECT_GT(total.redrawn, total.checked / 20) << "another draw changed (almost) nothing";
  } else {
    EXPECT_EQ(total.reseeded, 0) << "greedy depends on the seed";
  }
}

INSTANTIATE_TEST_SUITE_P(AllTransforms, SampleRowsTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// One call whose rows each have different settings, as an engine step has.
TEST(SampleRowsMixedTest, EveryRowItsOwnSettings) {
  const ScopedThreads threads(3);
  const std::vector<Case> cases = Cases();
  for (const Shape& shape : {Shape{1000, 48, 20}, Shape{151936, 33, 2}}) {
    const Sensitivity s = CompareWithSampler(
        [&](int64_t r) -> const Case& { return cases[r % cases.size()]; }, shape, 77);
    EXPECT_EQ(s.checked, shape.rows * shape.draws);
    if (shape.vocab <= 1000) {
      EXPECT_GT(s.reseeded, 0);
      EXPECT_GT(s.neutralised, 0);
    }
  }
}

// The k-th largest of the quantized rows really is tied (else TopKTies would not test ties).
TEST(SampleRowsTest, QuantizedRowsHaveTiesAtTheKth) {
  Case c = Make("ties", Params(1.0f, 20));
  c.quantized = true;
  Rows rows(16, 1000, c, 5);
  const std::vector<float>& logits = rows.Next();
  int tied = 0;
  for (int64_t r = 0; r < 16; ++r) {
    std::vector<float> v(logits.begin() + r * 1000, logits.begin() + (r + 1) * 1000);
    std::sort(v.begin(), v.end(), std::greater<>());
    tied += v[19] == v[20];
  }
  EXPECT_GT(tied, 4);
}

std::vector<float> RandomRows(int64_t rows, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> v(rows * vocab);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(SampleRowsErrorTest, NaNOrInfNamesTheRowAndToken) {
  const ScopedThreads threads(3);
  constexpr int64_t kRows = 8, kVocab = 1000;
  std::vector<float> logits = RandomRows(kRows, kVocab, 3);
  std::vector<SamplingRow> settings(kRows);
  std::vector<int32_t> tokens(kRows);
  ASSERT_TRUE(cpu::SampleRows(logits.data(), kRows, kVocab, settings, tokens.data()).ok());

  logits[5 * kVocab + 17] = std::nanf("");
  EXPECT_TRUE(IsError(cpu::SampleRows(logits.data(), kRows, kVocab, settings, tokens.data()),
                      absl::StatusCode::kInvalidArgument, {"row 5", "logits[17]", "NaN"}));
  // Two bad rows: the lower one is named, whichever thread saw its row first.
  logits[2 * kVocab + 999] = kInf;
  EXPECT_TRUE(IsError(cpu::SampleRows(logits.data(), kRows, kVocab, settings, tokens.data()),
                      absl::StatusCode::kInvalidArgument, {"row 2", "logits[999]", "inf"}));
  // Greedy rows check too, and a masked (banned) NaN is still reported.
  logits = RandomRows(kRows, kVocab, 4);
  const int32_t banned[] = {40};
  settings[6].temperature = 0;
  settings[6].banned = banned;
  logits[6 * kVocab + 40] = std::nanf("");
  EXPECT_TRUE(IsError(cpu::SampleRows(logits.data(), kRows, kVocab, settings, tokens.data()),
                      absl::StatusCode::kInvalidArgument, {"row 6", "logits[40]"}));
  // -inf is a valid logit; a row of nothing but -inf is not.
  logits = RandomRows(kRows, kVocab, 4);
  std::fill_n(&logits[3 * kVocab], kVocab - 1, -kInf);
  ASSERT_TRUE(cpu::SampleRows(logits.data(), kRows, kVocab, settings, tokens.data()).ok());
  EXPECT_EQ(tokens[3], kVocab - 1);
  logits[3 * kVocab + kVocab - 1] = -kInf;
  EXPECT_TRUE(IsError(cpu::SampleRows(logits.data(), kRows, kVocab, settings, tokens.data()),
                      absl::StatusCode::kInvalidArgument, {"row 3", "every token is masked"}));
}

TEST(SampleRowsErrorTest, BadSettingsNameTheRowAndField) {
  constexpr int64_t kRows = 4, kVocab = 100;
  const std::vector<float> logits = RandomRows(kRows, kVocab, 5);
  std::vector<int32_t> tokens(kRows);
  auto run = [&](const std::vector<SamplingRow>& s) {
    return cpu::SampleRows(logits.data(), kRows, kVocab, s, tokens.data());
  };
  std::vector<SamplingRow> settings(kRows);
  EXPECT_TRUE(IsError(
      cpu::SampleRows(logits.data(), kRows, kVocab, std::span(settings).first(3), tokens.data()),
      absl::StatusCode::kInvalidArgument, {"4 logit rows", "3 rows of settings"}));
  const int32_t out_of_range[] = {7, 100};
  const int32_t repeated[] = {7, 9, 7};
  const int32_t one_id[] = {3};
  const int32_t counts[] = {1, 2};
  const float huge_bias[] = {1000.0f};
  {
    std::vector<SamplingRow> s(kRows);
    s[1].seen = out_of_range;
    EXPECT_TRUE(IsError(run(s), absl::StatusCode::kInvalidArgument,
                        {"row 1", "'seen[1]' = 100", "[0, 100)"}));
  }
  {
    std::vector<SamplingRow> s(kRows);
    s[2].banned = repeated;
    EXPECT_TRUE(
        IsError(run(s), absl::StatusCode::kInvalidArgument, {"row 2", "'banned[2]'", "twice"}));
  }
  {
    std::vector<SamplingRow> s(kRows);
    s[3].output_ids = one_id;
    s[3].output_counts = counts;
    EXPECT_TRUE(IsError(run(s), absl::StatusCode::kInvalidArgument, {"row 3", "output_counts"}));
  }
  {
    std::vector<SamplingRow> s(kRows);
    s[0].bias_ids = one_id;
    s[0].bias_values = huge_bias;
    EXPECT_TRUE(
        IsError(run(s), absl::StatusCode::kInvalidArgument, {"row 0", "bias_values[0]", "1000"}));
  }
  {
    std::vector<SamplingRow> s(kRows);
    s[1].top_p = 0;
    s[2].temperature = std::nanf("");
    EXPECT_TRUE(IsError(run(s), absl::StatusCode::kInvalidArgument, {"row 1", "top_p"}));
  }
  EXPECT_TRUE(IsError(cpu::SampleRows(logits.data(), kRows, 0, settings, tokens.data()),
                      absl::StatusCode::kInvalidArgument, {"vocab 0"}));
  EXPECT_TRUE(cpu::SampleRows(nullptr, 0, kVocab, {}, nullptr).ok());
}

TEST(SampleRowsTest, WarmCallsAllocateNothing) {
#if !NEXTSERVE_COUNT_ALLOCATIONS
  GTEST_SKIP() << "operator new is AddressSanitizer's in this build";
#else
  const ScopedThreads threads(3);
  constexpr int64_t kRows = 16, kVocab = 151936;
  const std::vector<float> logits = RandomRows(kRows, kVocab, 6);
  std::vector<int32_t> seen(300), stop = {11, 12}, ids = {5, 6, 7}, counts = {1, 3, 2};
  for (int32_t i = 0; i < 300; ++i) seen[i] = 1000 + 7 * i;
  const float bias[] = {1.0f, -2.0f, 3.0f};
  std::vector<SamplingRow> settings(kRows);
  for (int64_t r = 0; r < kRows; ++r) {
    SamplingRow& s = settings[r];
    s.seed = r;
    s.draw = 3 * r;
    switch (r % 4) {
      case 0:
        s.temperature = 0;
        break;
      case 1:
        s.top_k = 20, s.top_p = 0.8f;
        break;
      case 2:
        s.top_p = 0.9f, s.min_p = 0.01f;
        break;
      case 3:
        s.min_p = 0.05f;
        break;
    }
    if (r % 3 == 0) s.seen = seen, s.repetition_penalty = 1.1f;
    if (r % 5 == 0) s.output_ids = ids, s.output_counts = counts, s.frequency_penalty = 0.5f;
    if (r % 2 == 0) s.banned = stop, s.bias_ids = ids, s.bias_values = bias;
  }
  std::vector<int32_t> tokens(kRows);
  // Warm-up: one call of two plain greedy rows sizes every thread's scratch for any row of this
  // vocabulary, including the third thread, which gets no row.
  std::vector<SamplingRow> greedy(2);
  for (SamplingRow& g : greedy) g.temperature = 0;
  ASSERT_TRUE(cpu::SampleRows(logits.data(), 2, kVocab, greedy, tokens.data()).ok());
  allocations = 0;
  counting = true;
  for (int i = 0; i < 20; ++i) {
    for (SamplingRow& s : settings) ++s.draw;
    if (!cpu::SampleRows(logits.data(), kRows, kVocab, settings, tokens.data()).ok()) break;
  }
  counting = false;
  EXPECT_EQ(allocations.load(), 0);
  // The counter works: a Sampler call with logprobs allocates its result's list.
  SamplingParams p;
  p.logprobs = 5;
  absl::StatusOr<Sampler> sampler = Sampler::Create(p, kVocab, {});
  ASSERT_TRUE(sampler.ok());
  counting = true;
  ASSERT_TRUE(sampler->Sample(std::span<const float>(logits.data(), kVocab)).ok());
  counting = false;
  EXPECT_GT(allocations.load(), 0);
#endif
}

}  // namespace
}  // namespace nextserve::kernels
