// Every op of kernels/backend.h on every backend this build has, against a naive reference written
// here (ggml's test-backend-ops habit): obvious loops over sequences, tokens and heads, in fp64
// where sums are long. Inputs come from seeded generators; buffers come from the backend under
// test and travel through CopyFromHost / CopyToHost, so the same test checks a device backend.
//
// The error norm of every float comparison: max_i |got_i - want_i| / max_i |want_i| (the worst
// error relative to the scale of the result), against a tolerance stated at each op. Copies and
// conversions (embedding, gather, AppendKv, dispatch records, grouping) must match exactly.
//
// Shapes cover the edges of the step: one token; chunks of 63, 64 and 65 tokens (one below, at and
// above the delta rule's chunk of 64); prefill chunks and decode tokens in one call; sequences
// whose new tokens cross a block edge; block sizes 16 and 64; GQA ratios 1, 2 and 8; DeltaNet with
// as many and twice as many value heads as key heads; experts and ranks that receive nothing.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#ifdef NEXTSERVE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_plan.h"
#endif

namespace nextserve::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// The backends under test.

// fp32 sums of k ≤ 512 products in any blocking: error ≈ √k · 2^-24 · Σ|x w| ≪ 1e-5 of the
// largest output (with weights stored exactly in their dtype, the dtype adds nothing).
constexpr double kLinearTolerance = 1e-5;

struct BackendEntry {
  const char* name;
  std::unique_ptr<Backend> (*make)();  // nullptr: this machine cannot run it (the tests skip)
  // Linear with 16-bit weights beyond the few-row path: a backend that rounds x to the weights'
  // dtype for its tensor-core GEMM (the CUDA backend above cuda::kFewRowsMax rows) states its
  // error here per dtype (bf16, f16); 0: inputs stay fp32 and kLinearTolerance holds.
  double bf16_inputs_tolerance = 0, f16_inputs_tolerance = 0;
  int64_t few_rows_max = 0;  // up to this many rows the inputs stay fp32
};
void PrintTo(const BackendEntry& e, std::ostream* os) {
  *os << e.name;
}

// Every backend this build has and this machine can run. The CPU backend is always here.
std::vector<BackendEntry> AvailableBackends() {
  std::vector<BackendEntry> backends{{"cpu", &MakeCpuBackend}};
#ifdef NEXTSERVE_HAVE_CUDA
  // Always listed when built, so that a machine without a GPU reports the CUDA tests as skipped
  // (ctest's backend_ops_cuda_test, label gpu) rather than silently absent. x rounded to bf16
  // (8 bits of mantissa): a relative error per product of at most 2^-9, random in sign, so the
  // worst output error stays near 2^-9 of the output scale: 2^-8 allowed; f16 (11 bits): 2^-10.
  backends.push_back(
      {"cuda", &MakeCudaBackend, std::ldexp(1.0, -8), std::ldexp(1.0, -10), cuda::kFewRowsMax});
#endif
  return backends;
}

// ---------------------------------------------------------------------------------------------
// Host-side helpers: random values, storage dtypes, comparisons.

std::vector<float> Normal(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<float> Uniform(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

int32_t RandomInt(std::mt19937& rng, int32_t lo, int32_t hi) {  // [lo, hi]
  return std::uniform_int_distribution<int32_t>(lo, hi)(rng);
}

// fp32 values stored as `dtype` (round to nearest even), as bytes.
std::vector<uint8_t> Encode(DType dtype, std::span<const float> v) {
  std::vector<uint8_t> bytes(v.size() * DTypeSize(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    switch (dtype) {
      case DType::kF32:
        std::memcpy(&bytes[4 * i], &v[i], 4);
        break;
      case DType::kBF16:
      case DType::kF16: {
        const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v[i]) : F32ToF16(v[i]);
        std::memcpy(&bytes[2 * i], &h, 2);
        break;
      }
      case DType::kF8E4M3:
        bytes[i] = F32ToF8E4M3(v[i]);
        break;
    }
  }
  return bytes;
}

std::vector<float> Decode(DType dtype, std::span<const uint8_t> bytes) {
  std::vector<float> v(bytes.size() / DTypeSize(dtype));
  ConvertToF32(dtype, bytes.data(), v.data(), v.size());
  return v;
}

// The values `v` become once stored as `dtype`.
std::vector<float> RoundTo(DType dtype, std::span<const float> v) {
  return Decode(dtype, Encode(dtype, v));
}

double Sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}
double Silu(double x) {
  return x * Sigmoid(x);
}

// The stated norm: max |got - want| / max |want|; NaN or inf in `got` fails outright (buffers
// start as NaN, so this also catches values an op never wrote).
template <typename Want>
::testing::AssertionResult Close(std::string_view what, std::span<const float> got,
                                 std::span<const Want> want, double tolerance) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << what << ": " << got.size() << " values, expected " << want.size();
  }
  double err = 0, scale = 0;
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      return ::testing::AssertionFailure()
             << what << ": value " << i << " is " << got[i] << " (want " << want[i] << ")";
    }
    const double d = std::abs(static_cast<double>(got[i]) - static_cast<double>(want[i]));
    if (d > err) err = d, worst = i;
    scale = std::max(scale, std::abs(static_cast<double>(want[i])));
  }
  if (scale == 0) return ::testing::AssertionFailure() << what << ": the reference is all zero";
  const double rel = err / scale;
  // NEXTSERVE_OPS_ERRORS=1 prints every comparison's error (to set a new backend's tolerances).
  if (std::getenv("NEXTSERVE_OPS_ERRORS") != nullptr) {
    std::printf("error %-40.*s %.3g (tolerance %.3g)\n", static_cast<int>(what.size()), what.data(),
                rel, tolerance);
  }
  if (rel <= tolerance) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": relative max error " << rel << " > " << tolerance << " (worst at " << worst
         << ": got " << got[worst] << ", want " << want[worst] << ")";
}
template <typename Want>
::testing::AssertionResult Close(std::string_view what, const std::vector<float>& got,
                                 const std::vector<Want>& want, double tolerance) {
  return Close(what, std::span<const float>(got), std::span<const Want>(want), tolerance);
}

template <typename T>
::testing::AssertionResult Same(std::string_view what, const std::vector<T>& got,
                                const std::vector<T>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << what << ": " << got.size() << " values, expected " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      return ::testing::AssertionFailure() << what << ": first difference at " << i << ": got "
                                           << +got[i] << ", want " << +want[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// The step's metadata from a list of sequences, with shuffled block tables and state slots.

struct Seq {
  int32_t past;   // tokens already in the caches
  int32_t fresh;  // new tokens this step
};

struct HostStep {
  int32_t block_size = 0, num_blocks = 0, num_slots = 0, max_blocks_per_seq = 0;
  int32_t max_query_len = 0, max_context_len = 0;
  std::vector<int32_t> token_ids, positions, cu_seqlens_q, context_lens, slot_mapping, block_table,
      state_slots, logit_rows;
  int32_t num_seqs() const { return static_cast<int32_t>(context_lens.size()); }
  int32_t num_tokens() const { return static_cast<int32_t>(positions.size()); }
  int32_t past(int32_t s) const {
    return context_lens[s] - (cu_seqlens_q[s + 1] - cu_seqlens_q[s]);
  }
  // Arena row of position p of sequence s.
  int32_t Row(int32_t s, int32_t p) const {
    return block_table[s * max_blocks_per_seq + p / block_size] * block_size + p % block_size;
  }
};

// Blocks are handed out from a shuffled pool (never contiguous in order) with spare blocks left
// over; unused block-table entries are -1. State slots are a shuffled subset of a larger pool.
HostStep BuildStep(std::span<const Seq> seqs, int32_t block_size, std::mt19937& rng,
                   int32_t vocab = 1000) {
  HostStep st;
  st.block_size = block_size;
  int32_t needed = 0;
  for (const Seq& q : seqs) {
    const int32_t blocks = (q.past + q.fresh + block_size - 1) / block_size;
    needed += blocks;
    st.max_blocks_per_seq = std::max(st.max_blocks_per_seq, blocks + 1);
    st.max_query_len = std::max(st.max_query_len, q.fresh);
    st.max_context_len = std::max(st.max_context_len, q.past + q.fresh);
  }
  st.num_blocks = needed + 3;
  std::vector<int32_t> pool(st.num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  st.num_slots = static_cast<int32_t>(seqs.size()) + 3;
  std::vector<int32_t> slots(st.num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);

  st.block_table.assign(seqs.size() * st.max_blocks_per_seq, -1);
  st.cu_seqlens_q.push_back(0);
  size_t next_block = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int32_t len = seqs[s].past + seqs[s].fresh;
    for (int32_t b = 0; b * block_size < len; ++b) {
      st.block_table[s * st.max_blocks_per_seq + b] = pool[next_block++];
    }
    st.context_lens.push_back(len);
    st.state_slots.push_back(slots[s]);
    for (int32_t p = seqs[s].past; p < len; ++p) {
      st.token_ids.push_back(RandomInt(rng, 0, vocab - 1));
      st.positions.push_back(p);
    }
    st.cu_seqlens_q.push_back(static_cast<int32_t>(st.positions.size()));
    st.logit_rows.push_back(st.cu_seqlens_q.back() - 1);
  }
  for (int32_t s = 0; s < st.num_seqs(); ++s) {
    for (int32_t p = st.past(s); p < st.context_lens[s]; ++p)
      st.slot_mapping.push_back(st.Row(s, p));
  }
  return st;
}

struct StepCase {
  const char* name;
  std::vector<Seq> seqs;
};

std::vector<StepCase> MakeStepCases() {
  std::vector<StepCase> cases{
      {"one_token", {{0, 1}}},
      // Decode rows that land on each side of the edges of 16- and 64-row blocks.
      {"decode", {{1, 1}, {15, 1}, {16, 1}, {63, 1}, {64, 1}, {100, 1}}},
      {"chunks_63_64_65", {{0, 63}, {0, 64}, {0, 65}}},
      // Prefill chunks and decode tokens together; 10+7 crosses a 16-row edge, 60+9 a 64-row one,
      // 64+64 continues at a block edge with a full chunk.
      {"mixed", {{0, 65}, {20, 1}, {10, 7}, {60, 9}, {64, 64}, {3, 1}}},
  };
  // Two random batches (seeded): 1-6 sequences, about half of them decoding, the others chunks of
  // 2-70 new tokens after 0-150 cached ones.
  std::mt19937 rng(2026);
  for (const char* name : {"random_1", "random_2"}) {
    StepCase c{name, {}};
    for (int32_t s = RandomInt(rng, 1, 6); s > 0; --s) {
      const bool decode = RandomInt(rng, 0, 1) == 1;
      c.seqs.push_back({RandomInt(rng, decode ? 1 : 0, 150), decode ? 1 : RandomInt(rng, 2, 70)});
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

// "name [past+new, ...]" for failure messages.
std::string Describe(const StepCase& c) {
  std::string out = std::string(c.name) + " [";
  for (const Seq& q : c.seqs) {
    out +=
        std::to_string(q.past) + "+" + std::to_string(q.fresh) + (&q == &c.seqs.back() ? "" : ", ");
  }
  return out + "]";
}

const std::vector<StepCase>& StepCases() {
  static const auto* cases = new std::vector<StepCase>(MakeStepCases());
  return *cases;
}

// ---------------------------------------------------------------------------------------------
// The fixture: backend memory and one op at a time.

class BackendOps : public ::testing::TestWithParam<BackendEntry> {
 protected:
  void SetUp() override {
    backend_ = GetParam().make();
    if (backend_ == nullptr) GTEST_SKIP() << GetParam().name << ": no device on this machine";
  }

  Backend& b() { return *backend_; }

  // kLinearTolerance, or the backend's stated error where it rounds x to the weights' dtype.
  double LinearTolerance(DType weights, int64_t m) const {
    const BackendEntry& e = GetParam();
    if (m <= e.few_rows_max) return kLinearTolerance;
    if (weights == DType::kBF16 && e.bf16_inputs_tolerance > 0) return e.bf16_inputs_tolerance;
    if (weights == DType::kF16 && e.f16_inputs_tolerance > 0) return e.f16_inputs_tolerance;
    return 1e-5;
  }

  void* UploadBytes(const void* host, size_t bytes, size_t offset = 0) {
    buffers_.push_back(b().Allocate(bytes + offset));
    char* dst = static_cast<char*>(buffers_.back()->data()) + offset;
    if (bytes > 0) b().CopyFromHost(host, dst, bytes);
    return dst;
  }
  template <typename T>
  T* Upload(const std::vector<T>& host) {
    return static_cast<T*>(UploadBytes(host.data(), host.size() * sizeof(T)));
  }
  // n elements with every byte 0xff: NaN as floats, -1 as ints, so unwritten outputs show.
  template <typename T>
  T* Poisoned(size_t n) {
    const std::vector<uint8_t> ff(n * sizeof(T), 0xff);
    return static_cast<T*>(UploadBytes(ff.data(), ff.size()));
  }
  template <typename T>
  std::vector<T> Download(const void* src, size_t n) {
    std::vector<T> host(n);
    if (n > 0) b().CopyToHost(src, host.data(), n * sizeof(T));
    return host;
  }

  // Uploads the step's arrays in one copy and points a StepMeta at them.
  StepMeta UploadStep(const HostStep& st) {
    std::vector<int32_t> all;
    std::vector<size_t> at;
    for (const auto* v : {&st.token_ids, &st.positions, &st.cu_seqlens_q, &st.context_lens,
                          &st.slot_mapping, &st.block_table, &st.state_slots, &st.logit_rows}) {
      at.push_back(all.size());
      all.insert(all.end(), v->begin(), v->end());
    }
    const int32_t* d = Upload(all);
    StepMeta m;
    m.num_seqs = st.num_seqs();
    m.num_tokens = st.num_tokens();
    m.num_logit_rows = static_cast<int32_t>(st.logit_rows.size());
    m.max_blocks_per_seq = st.max_blocks_per_seq;
    m.max_query_len = st.max_query_len;
    m.max_context_len = st.max_context_len;
    m.block_size = st.block_size;
    m.token_ids = d + at[0];
    m.positions = d + at[1];
    m.cu_seqlens_q = d + at[2];
    m.context_lens = d + at[3];
    m.slot_mapping = d + at[4];
    m.block_table = d + at[5];
    m.state_slots = d + at[6];
    m.logit_rows = d + at[7];
    return m;
  }

  // Runs one op; the op must not allocate, and the queue must synchronise cleanly.
  template <typename Op>
  void RunOp(std::string_view name, Op&& op) {
    const int64_t before = b().allocations();
    op();
    const absl::Status synced = b().Synchronize();
    EXPECT_TRUE(synced.ok()) << name << ": " << synced;
    EXPECT_EQ(b().allocations(), before) << name << " called Allocate";
  }

  std::unique_ptr<Backend> backend_;  // declared first: buffers go before it
  std::vector<std::unique_ptr<Buffer>> buffers_;
};

// ---------------------------------------------------------------------------------------------
// Memory.

TEST_P(BackendOps, AllocationsCountAllocateCalls) {
  const int64_t before = b().allocations();
  auto a = b().Allocate(100);
  auto c = b().Allocate(1 << 20);
  auto e = b().Allocate(0);  // allowed; data() must still be usable as an address
  EXPECT_EQ(b().allocations(), before + 3);
  EXPECT_GE(a->size(), 100u);
  EXPECT_GE(c->size(), size_t{1} << 20);
  // Host round trip through the buffer.
  std::mt19937 rng(1);
  const auto v = Normal(rng, 1000);
  b().CopyFromHost(v.data(), c->data(), v.size() * sizeof(float));
  EXPECT_TRUE(Same("round trip", Download<float>(c->data(), v.size()), v));
  EXPECT_EQ(b().allocations(), before + 3) << "copies must not allocate";
}

TEST_P(BackendOps, FillWritesExactlyN) {
  std::mt19937 rng(2);
  const auto v = Normal(rng, 37);
  float* d = Upload(v);
  RunOp("Fill", [&] { b().Fill(d + 3, 2.5f, 30); });
  auto want = v;
  std::fill(want.begin() + 3, want.begin() + 33, 2.5f);
  EXPECT_TRUE(Same("Fill", Download<float>(d, v.size()), want));
}

TEST_P(BackendOps, CopyMovesExactlyTheBytesBetweenBuffers) {
  std::mt19937 rng(3);
  const auto src = Normal(rng, 41), dst = Normal(rng, 41);
  float* s = Upload(src);
  float* d = Upload(dst);
  RunOp("Copy", [&] { b().Copy(s + 2, d + 5, 29 * sizeof(float)); });
  auto want = dst;
  std::copy(src.begin() + 2, src.begin() + 31, want.begin() + 5);
  EXPECT_TRUE(Same("Copy", Download<float>(d, dst.size()), want));
  EXPECT_TRUE(Same("Copy source", Download<float>(s, src.size()), src));
}

// ---------------------------------------------------------------------------------------------
// Dense algebra.

std::vector<double> LinearReference(const std::vector<float>& x, int64_t m,
                                    const std::vector<float>& w, int64_t n, int64_t k,
                                    const std::vector<float>* y0) {
  std::vector<double> y(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t o = 0; o < n; ++o) {
      double acc = y0 ? (*y0)[i * n + o] : 0.0;
      for (int64_t c = 0; c < k; ++c) acc += static_cast<double>(x[i * k + c]) * w[o * k + c];
      y[i * n + o] = acc;
    }
  }
  return y;
}

TEST_P(BackendOps, LinearEveryDTypeAndRowCount) {
  std::mt19937 rng(3);
  struct Shape {
    int64_t n, k;
    std::vector<int64_t> rows;
  };
  // Odd sizes (vector tails) over every row count near the few-row / GEMM switch; a wider one
  // for longer sums.
  const std::vector<Shape> shapes{{67, 131, {1, 3, 8, 9, 64, 65}}, {160, 512, {1, 33}}};
  for (const Shape& shape : shapes) {
    const int64_t n = shape.n, k = shape.k;
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      const auto w = RoundTo(dtype, Normal(rng, n * k, 0.1f));
      const auto bytes = Encode(dtype, w);
      // An odd byte offset: checkpoint tensors need not be aligned.
      const void* wd = UploadBytes(bytes.data(), bytes.size(), 1);
      const Matrix mat{dtype, wd, n, k};
      for (int64_t m : shape.rows) {
        for (bool accumulate : {false, true}) {
          SCOPED_TRACE(std::string(DTypeName(dtype)) + " m=" + std::to_string(m) +
                       " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                       (accumulate ? " accumulate" : ""));
          const auto x = Normal(rng, m * k);
          const auto y0 = Normal(rng, m * n);
          const float* xd = Upload(x);
          float* yd = accumulate ? Upload(y0) : Poisoned<float>(m * n);
          RunOp("Linear", [&] { b().Linear(xd, m, mat, yd, accumulate); });
          EXPECT_TRUE(Close("Linear", Download<float>(yd, m * n),
                            LinearReference(x, m, w, n, k, accumulate ? &y0 : nullptr),
                            LinearTolerance(dtype, m)));
        }
      }
    }
  }
}

// Block-scaled FP8: 300 x 200 has partial 128-blocks on both edges; scales differ per block by
// orders of magnitude; codes cover subnormals and both signs.
TEST_P(BackendOps, LinearFp8BlockScaled) {
  std::mt19937 rng(4);
  const int64_t n = 300, k = 200, sr = (n + kFp8Block - 1) / kFp8Block,
                sc = (k + kFp8Block - 1) / kFp8Block;
  std::vector<uint8_t> codes(n * k);
  for (auto& c : codes) {
    c = static_cast<uint8_t>(RandomInt(rng, 0, 255));
    if ((c & 0x7f) == 0x7f) c &= 0xfe;  // no NaN codes
  }
  std::vector<float> scale(sr * sc);
  for (size_t i = 0; i < scale.size(); ++i) scale[i] = std::ldexp(1.37f, -12 + 3 * (i % 5));
  std::vector<float> w(n * k);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      w[r * k + c] = F8E4M3ToF32(codes[r * k + c]) * scale[(r / kFp8Block) * sc + c / kFp8Block];
    }
  }
  const Matrix mat{DType::kF8E4M3, UploadBytes(codes.data(), codes.size(), 1), n, k, Upload(scale)};
  for (int64_t m : {1, 4, 9, 40}) {
    SCOPED_TRACE("m=" + std::to_string(m));
    const auto x = Normal(rng, m * k);
    const float* xd = Upload(x);
    float* yd = Poisoned<float>(m * n);
    RunOp("Linear fp8", [&] { b().Linear(xd, m, mat, yd); });
    EXPECT_TRUE(Close("Linear fp8", Download<float>(yd, m * n),
                      LinearReference(x, m, w, n, k, nullptr), kLinearTolerance));
  }
}

TEST_P(BackendOps, EmbeddingConvertsRowsExactly) {
  std::mt19937 rng(5);
  const int64_t vocab = 50, hidden = 37;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const auto table = RoundTo(dtype, Normal(rng, vocab * hidden));
    const auto bytes = Encode(dtype, table);
    const Matrix mat{dtype, UploadBytes(bytes.data(), bytes.size(), 1), vocab, hidden};
    for (std::vector<int32_t> ids :
         {std::vector<int32_t>{7}, std::vector<int32_t>{0, 49, 3, 3, 12}}) {
      const int32_t* idd = Upload(ids);
      const int64_t n = static_cast<int64_t>(ids.size());
      float* out = Poisoned<float>(n * hidden);
      RunOp("Embedding", [&] { b().Embedding(idd, n, mat, out); });
      std::vector<float> want;
      for (int32_t id : ids)
        want.insert(want.end(), &table[id * hidden], &table[(id + 1) * hidden]);
      EXPECT_TRUE(Same("Embedding", Download<float>(out, n * hidden), want));
    }
  }
}

std::vector<double> RmsNormReference(const std::vector<float>& x, int64_t rows, int64_t dim,
                                     const std::vector<float>& w, double eps, bool one_plus) {
  std::vector<double> y(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t i = 0; i < dim; ++i) {
      y[r * dim + i] = x[r * dim + i] * inv * (one_plus ? 1.0 + w[i] : w[i]);
    }
  }
  return y;
}

// Element-wise ops and norms: a few fp32 roundings per value and a sum of ≤ 256 squares: 1e-6.
constexpr double kElementwiseTolerance = 1e-6;

TEST_P(BackendOps, RmsNormBothWeightFormsAndInPlace) {
  std::mt19937 rng(6);
  for (int64_t rows : {1, 5}) {
    for (int64_t dim : {67, 256}) {
      for (bool one_plus : {false, true}) {
        for (bool in_place : {false, true}) {
          SCOPED_TRACE("rows=" + std::to_string(rows) + " dim=" + std::to_string(dim) +
                       (one_plus ? " 1+w" : " w") + (in_place ? " y=x" : ""));
          const auto x = Normal(rng, rows * dim, 3.0f), w = Normal(rng, dim, 0.5f);
          float* xd = Upload(x);
          float* yd = in_place ? xd : Poisoned<float>(rows * dim);
          const float* wd = Upload(w);
          RunOp("RmsNorm", [&] { b().RmsNorm(xd, rows, dim, wd, 1e-6f, one_plus, yd); });
          EXPECT_TRUE(Close("RmsNorm", Download<float>(yd, rows * dim),
                            RmsNormReference(x, rows, dim, w, 1e-6, one_plus),
                            kElementwiseTolerance));
        }
      }
    }
  }
}

TEST_P(BackendOps, AddSiluMulScaleRowsBySigmoidGatherRows) {
  std::mt19937 rng(7);
  const int64_t rows = 9, dim = 33, n = rows * dim;
  const auto x = Normal(rng, n), y = Normal(rng, n), gate = Normal(rng, n, 3.0f),
             up = Normal(rng, n), row_gate = Normal(rng, rows, 3.0f);
  {
    const float* xd = Upload(x);
    float* yd = Upload(y);
    RunOp("Add", [&] { b().Add(xd, n, yd); });
    std::vector<float> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = x[i] + y[i];  // one fp32 rounding: exact
    EXPECT_TRUE(Same("Add", Download<float>(yd, n), want));
  }
  std::vector<double> silu_mul(n);
  for (int64_t i = 0; i < n; ++i) silu_mul[i] = Silu(gate[i]) * up[i];
  for (bool in_place : {false, true}) {
    float* gd = Upload(gate);
    const float* ud = Upload(up);
    float* out = in_place ? gd : Poisoned<float>(n);
    RunOp("SiluMul", [&] { b().SiluMul(gd, ud, n, out); });
    EXPECT_TRUE(Close(in_place ? "SiluMul y=gate" : "SiluMul", Download<float>(out, n), silu_mul,
                      kElementwiseTolerance));
  }
  {
    float* xd = Upload(x);
    const float* rg = Upload(row_gate);
    RunOp("ScaleRowsBySigmoid", [&] { b().ScaleRowsBySigmoid(rg, rows, dim, xd); });
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = x[i] * Sigmoid(row_gate[i / dim]);
    EXPECT_TRUE(Close("ScaleRowsBySigmoid", Download<float>(xd, n), want, kElementwiseTolerance));
  }
  {
    const std::vector<int32_t> pick{8, 0, 3, 3, 8, 1};
    const int64_t m = static_cast<int64_t>(pick.size());
    const float* xd = Upload(x);
    const int32_t* pd = Upload(pick);
    float* out = Poisoned<float>(m * dim);
    RunOp("GatherRows", [&] { b().GatherRows(xd, pd, m, dim, out); });
    std::vector<float> want;
    for (int32_t r : pick) want.insert(want.end(), &x[r * dim], &x[(r + 1) * dim]);
    EXPECT_TRUE(Same("GatherRows", Download<float>(out, m * dim), want));
  }
}

// ---------------------------------------------------------------------------------------------
// Gated attention over the step: AttentionPrep, AppendKv, PagedAttention.

struct AttentionPrepRef {
  std::vector<double> q, gate, k;
};

// (1 + w) RMSNorm per head, then NeoX RoPE on the first rotary_dim dims with transformers' fp32
// angles: inv_freq = 1 / theta^(2i / rotary_dim) and position * inv_freq rounded to fp32.
AttentionPrepRef AttentionPrepReference(const std::vector<float>& qg, const std::vector<float>& k,
                                        const HostStep& st, const AttentionShape& s,
                                        const std::vector<float>& q_norm,
                                        const std::vector<float>& k_norm, double eps) {
  const int64_t t = st.num_tokens(), d = s.head_dim, half = s.rotary_dim / 2;
  AttentionPrepRef r;
  r.q.resize(t * s.num_heads * d);
  r.gate.resize(r.q.size());
  r.k.resize(t * s.num_kv_heads * d);
  auto norm_rope = [&](const float* src, const std::vector<float>& w, int32_t pos, double* dst) {
    double ss = 0;
    for (int64_t e = 0; e < d; ++e) ss += static_cast<double>(src[e]) * src[e];
    const double inv = 1.0 / std::sqrt(ss / d + eps);
    std::vector<double> x(d);
    for (int64_t e = 0; e < d; ++e) x[e] = src[e] * inv * (1.0 + w[e]);
    for (int64_t e = 0; e < d; ++e) dst[e] = x[e];
    for (int64_t i = 0; i < half; ++i) {
      const float inv_freq = 1.0f / std::pow(s.rope_theta, static_cast<float>(2 * i) /
                                                               static_cast<float>(s.rotary_dim));
      const double angle = static_cast<float>(pos) * inv_freq;
      dst[i] = x[i] * std::cos(angle) - x[i + half] * std::sin(angle);
      dst[i + half] = x[i + half] * std::cos(angle) + x[i] * std::sin(angle);
    }
  };
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t h = 0; h < s.num_heads; ++h) {
      const float* src = &qg[(i * s.num_heads + h) * 2 * d];
      norm_rope(src, q_norm, st.positions[i], &r.q[(i * s.num_heads + h) * d]);
      for (int64_t e = 0; e < d; ++e) r.gate[(i * s.num_heads + h) * d + e] = src[d + e];
    }
    for (int64_t h = 0; h < s.num_kv_heads; ++h) {
      norm_rope(&k[(i * s.num_kv_heads + h) * d], k_norm, st.positions[i],
                &r.k[(i * s.num_kv_heads + h) * d]);
    }
  }
  return r;
}

// Causal softmax attention of each sequence's queries over its keys read through the block table
// from the arena as stored (`k_arena`, `v_arena`: fp32 values), times sigmoid(gate).
std::vector<double> PagedAttentionReference(const std::vector<float>& q, const HostStep& st,
                                            const std::vector<float>& k_arena,
                                            const std::vector<float>& v_arena,
                                            const AttentionShape& s,
                                            const std::vector<float>& gate) {
  const int64_t d = s.head_dim, width = s.num_kv_heads * d, group = s.num_heads / s.num_kv_heads;
  std::vector<double> out(st.num_tokens() * s.num_heads * d);
  for (int32_t sq = 0; sq < st.num_seqs(); ++sq) {
    const int32_t first = st.cu_seqlens_q[sq], past = st.past(sq);
    for (int32_t i = first; i < st.cu_seqlens_q[sq + 1]; ++i) {
      const int32_t visible = past + (i - first) + 1;
      for (int64_t h = 0; h < s.num_heads; ++h) {
        const float* qh = &q[(i * s.num_heads + h) * d];
        const int64_t kv = (h / group) * d;
        std::vector<double> p(visible);
        double mx = -1e300, sum = 0;
        for (int32_t j = 0; j < visible; ++j) {
          const float* kj = &k_arena[st.Row(sq, j) * width + kv];
          double dot = 0;
          for (int64_t e = 0; e < d; ++e) dot += static_cast<double>(qh[e]) * kj[e];
          p[j] = dot / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, p[j]);
        }
        for (auto& x : p) sum += x = std::exp(x - mx);
        double* o = &out[(i * s.num_heads + h) * d];
        for (int32_t j = 0; j < visible; ++j) {
          const float* vj = &v_arena[st.Row(sq, j) * width + kv];
          for (int64_t e = 0; e < d; ++e) o[e] += p[j] / sum * vj[e];
        }
        for (int64_t e = 0; e < d; ++e) o[e] *= Sigmoid(gate[(i * s.num_heads + h) * d + e]);
      }
    }
  }
  return out;
}

// Per head: norm, rope, and a sum of 32 fp32 products over cos/sin of fp32 angles: 2e-5.
constexpr double kAttentionPrepTolerance = 2e-5;
// Softmax over ≤ 129 keys and a weighted sum of as many values, all fp32: 2e-5.
constexpr double kAttentionTolerance = 2e-5;
// bf16 keys and values against the unrounded fp32 ones: each element moves by up to 2^-9 of
// itself; scores (q·k/√d with normalised q, k) shift by ~2^-9·√d, so outputs move by well under
// 1% (measured on the CPU: 3e-3).
constexpr double kBf16KvTolerance = 1e-2;

TEST_P(BackendOps, AttentionPrepAppendKvPagedAttention) {
  std::mt19937 rng(8);
  const float eps = 1e-6f;
  for (int64_t kv_heads : {8, 4, 1}) {  // GQA ratios 1, 2, 8
    const AttentionShape s{8, kv_heads, 32, 16, 1e7f};
    const int64_t d = s.head_dim, width = kv_heads * d;
    const auto q_norm = Normal(rng, d, 0.3f), k_norm = Normal(rng, d, 0.3f);
    const float* q_norm_d = Upload(q_norm);
    const float* k_norm_d = Upload(k_norm);
    for (int32_t block_size : {16, 64}) {
      for (DType kv_dtype : {DType::kF32, DType::kBF16}) {
        for (const StepCase& sc : StepCases()) {
          SCOPED_TRACE(Describe(sc) + " gqa=" + std::to_string(s.num_heads / kv_heads) + " block=" +
                       std::to_string(block_size) + " kv=" + std::string(DTypeName(kv_dtype)));
          const HostStep st = BuildStep(sc.seqs, block_size, rng);
          const StepMeta meta = UploadStep(st);
          const int64_t t = st.num_tokens();

          // AttentionPrep.
          const auto qg = Normal(rng, t * s.num_heads * 2 * d), k_in = Normal(rng, t * width),
                     v = Normal(rng, t * width);
          const float* qgd = Upload(qg);
          float* kd = Upload(k_in);
          float* qd = Poisoned<float>(t * s.num_heads * d);
          float* gd = Poisoned<float>(t * s.num_heads * d);
          RunOp("AttentionPrep",
                [&] { b().AttentionPrep(qgd, kd, meta, s, q_norm_d, k_norm_d, eps, qd, gd); });
          const AttentionPrepRef prep =
              AttentionPrepReference(qg, k_in, st, s, q_norm, k_norm, eps);
          const auto q = Download<float>(qd, t * s.num_heads * d);
          const auto gate = Download<float>(gd, t * s.num_heads * d);
          const auto k = Download<float>(kd, t * width);
          EXPECT_TRUE(Close("AttentionPrep q", q, prep.q, kAttentionPrepTolerance));
          EXPECT_TRUE(Close("AttentionPrep gate", gate, prep.gate, 0.0));
          EXPECT_TRUE(Close("AttentionPrep k", k, prep.k, kAttentionPrepTolerance));

          // AppendKv into an arena whose other rows hold earlier keys (random here).
          const size_t arena_values = static_cast<size_t>(st.num_blocks) * block_size * width;
          const auto k_past = Normal(rng, arena_values), v_past = Normal(rng, arena_values);
          auto k_bytes = Encode(kv_dtype, k_past), v_bytes = Encode(kv_dtype, v_past);
          const KvLayer cache{UploadBytes(k_bytes.data(), k_bytes.size()),
                              UploadBytes(v_bytes.data(), v_bytes.size()), kv_dtype, block_size,
                              width};
          const float* vd = Upload(v);
          RunOp("AppendKv", [&] { b().AppendKv(kd, vd, meta, cache); });
          const size_t row_bytes = width * DTypeSize(kv_dtype);
          for (int64_t i = 0; i < t; ++i) {
            const auto kr = Encode(kv_dtype, std::span(&k[i * width], width));
            const auto vr = Encode(kv_dtype, std::span(&v[i * width], width));
            std::memcpy(&k_bytes[st.slot_mapping[i] * row_bytes], kr.data(), row_bytes);
            std::memcpy(&v_bytes[st.slot_mapping[i] * row_bytes], vr.data(), row_bytes);
          }
          const auto k_arena_bytes = Download<uint8_t>(cache.k, k_bytes.size());
          const auto v_arena_bytes = Download<uint8_t>(cache.v, v_bytes.size());
          EXPECT_TRUE(Same("AppendKv keys", k_arena_bytes, k_bytes));
          EXPECT_TRUE(Same("AppendKv values", v_arena_bytes, v_bytes));

          // PagedAttention over the arena as stored.
          float* out = Poisoned<float>(t * s.num_heads * d);
          RunOp("PagedAttention", [&] { b().PagedAttention(qd, meta, cache, s, gd, out); });
          const auto got = Download<float>(out, t * s.num_heads * d);
          const auto k_arena = Decode(kv_dtype, k_bytes), v_arena = Decode(kv_dtype, v_bytes);
          EXPECT_TRUE(Close("PagedAttention", got,
                            PagedAttentionReference(q, st, k_arena, v_arena, s, gate),
                            kAttentionTolerance));
          if (kv_dtype == DType::kBF16) {
            // Against the keys and values before bf16 rounding: what bf16 KV costs.
            std::vector<float> k_exact = Decode(DType::kBF16, Encode(DType::kBF16, k_past)),
                               v_exact = Decode(DType::kBF16, Encode(DType::kBF16, v_past));
            for (int64_t i = 0; i < t; ++i) {
              std::copy_n(&k[i * width], width, &k_exact[st.slot_mapping[i] * width]);
              std::copy_n(&v[i * width], width, &v_exact[st.slot_mapping[i] * width]);
            }
            EXPECT_TRUE(Close("PagedAttention bf16 KV vs fp32 KV", got,
                              PagedAttentionReference(q, st, k_exact, v_exact, s, gate),
                              kBf16KvTolerance));
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Gated DeltaNet over the step: DeltaNetSplit, CausalConvSilu, DeltaNetGates, DeltaRule,
// RmsNormGated.

struct SplitRef {
  std::vector<float> mixed, z, b, a;
};

// transformers' fix_query_key_value_ordering: per key head g, [q | k | v of its r value heads |
// z of them], and for ba [b of its r value heads | a of them] (spec §3.3.1, r = nv / nk).
SplitRef DeltaNetSplitReference(const std::vector<float>& qkvz, const std::vector<float>& ba,
                                int64_t t, const DeltaNetShape& s) {
  const int64_t dk = s.key_head_dim, dv = s.value_head_dim, nk = s.num_key_heads,
                nv = s.num_value_heads, r = nv / nk, group = 2 * dk + 2 * r * dv;
  SplitRef out;
  for (int64_t i = 0; i < t; ++i) {
    const float* row = &qkvz[i * nk * group];
    for (int64_t h = 0; h < nk; ++h)
      for (int64_t e = 0; e < dk; ++e) out.mixed.push_back(row[group * h + e]);
    for (int64_t h = 0; h < nk; ++h)
      for (int64_t e = 0; e < dk; ++e) out.mixed.push_back(row[group * h + dk + e]);
    for (int64_t vh = 0; vh < nv; ++vh)
      for (int64_t e = 0; e < dv; ++e)
        out.mixed.push_back(row[group * (vh / r) + 2 * dk + dv * (vh % r) + e]);
    for (int64_t vh = 0; vh < nv; ++vh)
      for (int64_t e = 0; e < dv; ++e)
        out.z.push_back(row[group * (vh / r) + 2 * dk + r * dv + dv * (vh % r) + e]);
    for (int64_t vh = 0; vh < nv; ++vh) {
      out.b.push_back(ba[i * 2 * nv + 2 * r * (vh / r) + vh % r]);
      out.a.push_back(ba[i * 2 * nv + 2 * r * (vh / r) + r + vh % r]);
    }
  }
  return out;
}

// The state arena as the host sees it: slot i at i * stride, conv window then recurrent state.
struct HostState {
  DeltaNetShape shape;
  int64_t stride = 0;
  std::vector<float> values;
  float* conv(int32_t slot) { return &values[slot * stride]; }
  float* recurrent(int32_t slot) { return &values[slot * stride + shape.conv_floats()]; }
};

// Random windows and states in every slot, zeros in the slots of new sequences (they start from
// nothing); the stride leaves a gap between slots so that a wrong stride shows.
HostState MakeState(const HostStep& st, const DeltaNetShape& s, std::mt19937& rng) {
  HostState hs{s, s.conv_floats() + s.recurrent_floats() + 5, {}};
  hs.values = Normal(rng, st.num_slots * hs.stride, 0.3f);
  for (int32_t sq = 0; sq < st.num_seqs(); ++sq) {
    if (st.past(sq) == 0) {
      std::fill_n(hs.conv(st.state_slots[sq]), s.conv_floats() + s.recurrent_floats(), 0.0f);
    }
  }
  return hs;
}

// Depthwise causal conv over [window | new rows] per sequence, then SiLU; the window becomes the
// last kernel - 1 raw inputs.
std::vector<double> CausalConvReference(const std::vector<float>& x, const HostStep& st,
                                        const DeltaNetShape& s, const std::vector<float>& w,
                                        HostState& state) {
  const int64_t cd = s.conv_dim(), kernel = s.conv_kernel, hist = kernel - 1;
  std::vector<double> y(st.num_tokens() * cd);
  for (int32_t sq = 0; sq < st.num_seqs(); ++sq) {
    const int32_t first = st.cu_seqlens_q[sq], n = st.cu_seqlens_q[sq + 1] - first;
    float* window = state.conv(st.state_slots[sq]);
    std::vector<float> in(window, window + hist * cd);
    in.insert(in.end(), &x[first * cd], &x[(first + n) * cd]);
    for (int32_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < cd; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < kernel; ++j)
          acc += static_cast<double>(w[c * kernel + j]) * in[(i + j) * cd + c];
        y[(first + i) * cd + c] = Silu(acc);
      }
    }
    std::copy_n(&in[n * cd], hist * cd, window);
  }
  return y;
}

// The gated delta rule's recurrence (spec §3.3.5, the definition) per sequence and value head,
// in fp64, from and into the slot's state; value head h reads key head h / (nv / nk).
std::vector<double> DeltaRuleReference(const std::vector<float>& conv_out,
                                       const std::vector<float>& g, const std::vector<float>& beta,
                                       const HostStep& st, const DeltaNetShape& s,
                                       HostState& state) {
  const int64_t dk = s.key_head_dim, dv = s.value_head_dim, nk = s.num_key_heads,
                nv = s.num_value_heads, cd = s.conv_dim();
  std::vector<double> out(st.num_tokens() * nv * dv);
  auto l2 = [&](const float* x, double scale) {
    double ss = 0;
    for (int64_t e = 0; e < dk; ++e) ss += static_cast<double>(x[e]) * x[e];
    std::vector<double> y(dk);
    for (int64_t e = 0; e < dk; ++e) y[e] = x[e] / std::sqrt(ss + 1e-6) * scale;
    return y;
  };
  for (int32_t sq = 0; sq < st.num_seqs(); ++sq) {
    float* S32 = state.recurrent(st.state_slots[sq]);
    for (int64_t h = 0; h < nv; ++h) {
      const int64_t kh = h / (nv / nk);
      std::vector<double> S(S32 + h * dk * dv, S32 + (h + 1) * dk * dv);
      for (int32_t i = st.cu_seqlens_q[sq]; i < st.cu_seqlens_q[sq + 1]; ++i) {
        const float* row = &conv_out[i * cd];
        const auto q = l2(row + kh * dk, 1.0 / std::sqrt(static_cast<double>(dk)));
        const auto k = l2(row + s.key_dim() + kh * dk, 1.0);
        const float* v = row + 2 * s.key_dim() + h * dv;
        const double alpha = std::exp(static_cast<double>(g[i * nv + h])), bt = beta[i * nv + h];
        for (auto& e : S) e *= alpha;
        for (int64_t c = 0; c < dv; ++c) {
          double m = 0;
          for (int64_t r = 0; r < dk; ++r) m += S[r * dv + c] * k[r];
          const double delta = bt * (v[c] - m);
          for (int64_t r = 0; r < dk; ++r) S[r * dv + c] += k[r] * delta;
        }
        for (int64_t c = 0; c < dv; ++c) {
          double o = 0;
          for (int64_t r = 0; r < dk; ++r) o += S[r * dv + c] * q[r];
          out[(i * nv + h) * dv + c] = o;
        }
      }
      for (int64_t e = 0; e < dk * dv; ++e) S32[h * dk * dv + e] = static_cast<float>(S[e]);
    }
  }
  return out;
}

// Gates: sigmoid, softplus (torch's threshold 20) and exp in fp32: 1e-6.
// Delta rule: the chunked form (a 64 x 64 triangular solve, decays e^(γi-γj)) against the fp64
// recurrence, over ≤ 65 tokens from non-zero states: 1e-4 of the largest output or state value.
constexpr double kDeltaRuleTolerance = 1e-4;

TEST_P(BackendOps, DeltaNetSplitConvGatesRuleNorm) {
  std::mt19937 rng(9);
  for (const DeltaNetShape s : {DeltaNetShape{2, 4, 32, 16, 4}, DeltaNetShape{2, 2, 32, 16, 4}}) {
    const int64_t nv = s.num_value_heads, cd = s.conv_dim(), dv = s.value_head_dim,
                  qkvz_dim = 2 * s.key_dim() + 2 * s.value_dim();
    const auto conv_w = Normal(rng, cd * s.conv_kernel, 0.5f);
    const auto a_log = Uniform(rng, nv, -1.0f, 1.0f), dt_bias = Normal(rng, nv);
    const auto norm_w = Normal(rng, dv, 0.5f);
    for (const StepCase& sc : StepCases()) {
      SCOPED_TRACE(Describe(sc) + " value/key heads=" + std::to_string(nv / s.num_key_heads));
      const HostStep st = BuildStep(sc.seqs, 16, rng);
      const StepMeta meta = UploadStep(st);
      const int64_t t = st.num_tokens();

      // DeltaNetSplit.
      const auto qkvz = Normal(rng, t * qkvz_dim);
      auto ba = Normal(rng, t * 2 * nv);
      // Some a + dt_bias beyond softplus's threshold of 20.
      for (int64_t i = 0; i < t; i += 5) ba[i * 2 * nv + 2 * nv - 1] = 25.0f;
      const float* qkvz_d = Upload(qkvz);
      const float* ba_d = Upload(ba);
      float* mixed_d = Poisoned<float>(t * cd);
      float* z_d = Poisoned<float>(t * s.value_dim());
      float* b_d = Poisoned<float>(t * nv);
      float* a_d = Poisoned<float>(t * nv);
      RunOp("DeltaNetSplit",
            [&] { b().DeltaNetSplit(qkvz_d, ba_d, t, s, mixed_d, z_d, b_d, a_d); });
      const SplitRef split = DeltaNetSplitReference(qkvz, ba, t, s);
      EXPECT_TRUE(Same("DeltaNetSplit mixed_qkv", Download<float>(mixed_d, t * cd), split.mixed));
      EXPECT_TRUE(Same("DeltaNetSplit z", Download<float>(z_d, t * s.value_dim()), split.z));
      EXPECT_TRUE(Same("DeltaNetSplit b", Download<float>(b_d, t * nv), split.b));
      EXPECT_TRUE(Same("DeltaNetSplit a", Download<float>(a_d, t * nv), split.a));

      // CausalConvSilu from and into each sequence's window.
      HostState state = MakeState(st, s, rng);
      const StateLayer layer{Upload(state.values), state.stride};
      const float* conv_w_d = Upload(conv_w);
      float* conv_d = Poisoned<float>(t * cd);
      RunOp("CausalConvSilu",
            [&] { b().CausalConvSilu(mixed_d, meta, s, conv_w_d, layer, conv_d); });
      const auto conv_want = CausalConvReference(split.mixed, st, s, conv_w, state);
      const auto conv_out = Download<float>(conv_d, t * cd);
      EXPECT_TRUE(Close("CausalConvSilu", conv_out, conv_want, kElementwiseTolerance));
      EXPECT_TRUE(Same("CausalConvSilu state arena",
                       Download<float>(layer.base, state.values.size()), state.values));

      // DeltaNetGates.
      const float* a_log_d = Upload(a_log);
      const float* dt_bias_d = Upload(dt_bias);
      float* beta_d = Poisoned<float>(t * nv);
      float* g_d = Poisoned<float>(t * nv);
      RunOp("DeltaNetGates",
            [&] { b().DeltaNetGates(b_d, a_d, t, nv, a_log_d, dt_bias_d, beta_d, g_d); });
      std::vector<double> beta_want(t * nv), g_want(t * nv);
      for (int64_t i = 0; i < t * nv; ++i) {
        beta_want[i] = Sigmoid(split.b[i]);
        const double x = static_cast<double>(split.a[i]) + dt_bias[i % nv];
        g_want[i] =
            -std::exp(static_cast<double>(a_log[i % nv])) * (x > 20 ? x : std::log1p(std::exp(x)));
      }
      const auto beta = Download<float>(beta_d, t * nv), g = Download<float>(g_d, t * nv);
      EXPECT_TRUE(Close("DeltaNetGates beta", beta, beta_want, kElementwiseTolerance));
      EXPECT_TRUE(Close("DeltaNetGates g", g, g_want, kElementwiseTolerance));

      // DeltaRule from and into each sequence's recurrent state.
      float* rule_d = Poisoned<float>(t * s.value_dim());
      RunOp("DeltaRule", [&] { b().DeltaRule(conv_d, g_d, beta_d, meta, s, layer, rule_d); });
      const auto states_before = state.values;
      const auto rule_want = DeltaRuleReference(conv_out, g, beta, st, s, state);
      const auto rule_out = Download<float>(rule_d, t * s.value_dim());
      EXPECT_TRUE(Close("DeltaRule out", rule_out, rule_want, kDeltaRuleTolerance));
      const auto arena = Download<float>(layer.base, state.values.size());
      // The slots of this step's sequences hold the new states; everything else is untouched.
      std::vector<float> got_states, want_states, got_rest, want_rest;
      for (int64_t i = 0; i < static_cast<int64_t>(arena.size()); ++i) {
        const int32_t slot = static_cast<int32_t>(i / state.stride);
        const int64_t off = i % state.stride;
        const bool moved =
            off >= s.conv_floats() && off < s.conv_floats() + s.recurrent_floats() &&
            std::find(st.state_slots.begin(), st.state_slots.end(), slot) != st.state_slots.end();
        (moved ? got_states : got_rest).push_back(arena[i]);
        (moved ? want_states : want_rest).push_back(state.values[i]);
      }
      EXPECT_TRUE(Close("DeltaRule states", got_states, want_states, kDeltaRuleTolerance));
      EXPECT_TRUE(Same("DeltaRule leaves windows and other slots", got_rest, want_rest));
      EXPECT_NE(states_before, state.values);  // the states moved, so the check means something

      // RmsNormGated per value head, in place.
      const auto z = split.z;
      const float* norm_w_d = Upload(norm_w);
      RunOp("RmsNormGated",
            [&] { b().RmsNormGated(rule_d, z_d, t * nv, dv, norm_w_d, 1e-6f, rule_d); });
      std::vector<double> normed = RmsNormReference(rule_out, t * nv, dv, norm_w, 1e-6, false);
      for (int64_t i = 0; i < t * nv * dv; ++i) normed[i] *= Silu(z[i]);
      EXPECT_TRUE(Close("RmsNormGated", Download<float>(rule_d, t * nv * dv), normed,
                        kElementwiseTolerance));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Mixture of experts: RouterTopK, MoeDispatch, MoeGroupByExpert, GroupedExpertMlp,
// MoeWeightedSum, MoeCombine.

struct TopK {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};

// Softmax over all experts, the top_k highest (ties: lower id first, as torch.topk), sorted by id.
TopK RouterTopKReference(const std::vector<float>& logits, int64_t n, int64_t experts,
                         int64_t top_k, bool renormalise) {
  TopK r;
  for (int64_t i = 0; i < n; ++i) {
    const float* l = &logits[i * experts];
    std::vector<int32_t> order(experts);
    std::iota(order.begin(), order.end(), 0);
    // Softmax is monotone: ranking the logits ranks the probabilities.
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
    order.resize(top_k);
    std::sort(order.begin(), order.end());
    const double mx = *std::max_element(l, l + experts);
    double sum = 0, top_sum = 0;
    for (int64_t e = 0; e < experts; ++e) sum += std::exp(l[e] - mx);
    for (int32_t e : order) top_sum += std::exp(l[e] - mx) / sum;
    for (int32_t e : order) {
      const double p = std::exp(l[e] - mx) / sum;
      r.ids.push_back(e);
      r.weights.push_back(renormalise ? p / top_sum : p);
    }
  }
  return r;
}

TEST_P(BackendOps, RouterTopKTiesAndRenormalisation) {
  std::mt19937 rng(10);
  for (const auto& [experts, top_k] : {std::pair<int64_t, int64_t>{32, 4}, {512, 10}}) {
    const int64_t n = 7;
    auto logits = Normal(rng, n * experts, 2.0f);
    // Row 0: all equal, so the lowest ids win. Row 1: a tie for the top among four experts.
    // Row 2: a tie at the k-th place between 20 and 9 (9 must win).
    std::fill_n(&logits[0], experts, 0.5f);
    for (int e : {3, 7, 11, 12}) logits[experts + e] = 9.0f;
    for (int64_t e = 0; e < experts; ++e) logits[2 * experts + e] = -1.0f - (e % 5) * 0.1f;
    for (int64_t j = 0; j < top_k - 1; ++j) logits[2 * experts + 25 + j] = 5.0f + j;
    logits[2 * experts + 20] = logits[2 * experts + 9] = 4.0f;
    const float* ld = Upload(logits);
    for (bool renormalise : {true, false}) {
      SCOPED_TRACE("experts=" + std::to_string(experts) + (renormalise ? " renormalised" : ""));
      int32_t* ids = Poisoned<int32_t>(n * top_k);
      float* weights = Poisoned<float>(n * top_k);
      RunOp("RouterTopK",
            [&] { b().RouterTopK(ld, n, experts, top_k, renormalise, ids, weights); });
      const TopK want = RouterTopKReference(logits, n, experts, top_k, renormalise);
      const auto got_ids = Download<int32_t>(ids, n * top_k);
      EXPECT_TRUE(Same("RouterTopK ids", got_ids, want.ids));
      EXPECT_EQ(got_ids[0], 0);
      EXPECT_EQ(got_ids[top_k], 3);
      // fp32 softmax over ≤ 512 experts and one division: 1e-5 of the largest weight.
      EXPECT_TRUE(
          Close("RouterTopK weights", Download<float>(weights, n * top_k), want.weights, 1e-5));
    }
  }
}

// Host form of the dispatch records.
struct Records {
  RecordFormat f;
  std::vector<uint8_t> bytes;
  int64_t count() const { return static_cast<int64_t>(bytes.size()) / f.bytes(); }
  uint8_t* at(int64_t r) { return &bytes[r * f.bytes()]; }
  const uint8_t* at(int64_t r) const { return &bytes[r * f.bytes()]; }
  int64_t ids_offset() const { return (f.hidden_bytes() + 3) / 4 * 4; }
  int32_t id(int64_t r, int64_t j) const {
    int32_t v;
    std::memcpy(&v, at(r) + ids_offset() + 4 * j, 4);
    return v;
  }
  float weight(int64_t r, int64_t j) const {
    float v;
    std::memcpy(&v, at(r) + ids_offset() + 4 * (f.top_k + j), 4);
    return v;
  }
  std::vector<float> hidden(int64_t r) const {
    return Decode(f.hidden_dtype, std::span(at(r), f.hidden_bytes()));
  }
  void Append(std::span<const float> h, std::span<const int32_t> ids, std::span<const float> w) {
    const size_t base = bytes.size();
    bytes.resize(base + f.bytes(), 0);
    const auto hb = Encode(f.hidden_dtype, h);
    std::memcpy(&bytes[base], hb.data(), hb.size());
    for (int64_t j = 0; j < f.top_k; ++j) {
      const int32_t id = j < static_cast<int64_t>(ids.size()) ? ids[j] : -1;
      const float wt = j < static_cast<int64_t>(w.size()) ? w[j] : 0.0f;
      std::memcpy(&bytes[base + ids_offset() + 4 * j], &id, 4);
      std::memcpy(&bytes[base + ids_offset() + 4 * (f.top_k + j)], &wt, 4);
    }
  }
};

struct DispatchRef {
  Records records;
  std::vector<int32_t> token_of;
  std::vector<int64_t> records_to;
};

// One record per (token, rank holding any of its experts), grouped by rank, tokens in order; the
// slots keep that rank's experts in the order of ids (ascending).
DispatchRef MoeDispatchReference(const std::vector<float>& h, int64_t n,
                                 const std::vector<int32_t>& ids, const std::vector<float>& w,
                                 const std::vector<int32_t>& owner, int ranks,
                                 const RecordFormat& f) {
  DispatchRef d{{f, {}}, {}, std::vector<int64_t>(ranks, 0)};
  for (int r = 0; r < ranks; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int32_t> mine;
      std::vector<float> mine_w;
      for (int64_t j = 0; j < f.top_k; ++j) {
        if (owner[ids[i * f.top_k + j]] == r) {
          mine.push_back(ids[i * f.top_k + j]);
          mine_w.push_back(w[i * f.top_k + j]);
        }
      }
      if (mine.empty()) continue;
      d.records.Append(std::span(&h[i * f.hidden], f.hidden), mine, mine_w);
      d.token_of.push_back(static_cast<int32_t>(i));
      ++d.records_to[r];
    }
  }
  return d;
}

// Records compared field by field: hidden bytes, ids, and the weights of filled slots (what an
// empty slot's weight holds is not part of the contract).
::testing::AssertionResult SameRecords(const Records& got, const Records& want) {
  if (got.bytes.size() != want.bytes.size()) {
    return ::testing::AssertionFailure() << got.count() << " records, expected " << want.count();
  }
  for (int64_t r = 0; r < want.count(); ++r) {
    if (std::memcmp(got.at(r), want.at(r), want.f.hidden_bytes()) != 0) {
      return ::testing::AssertionFailure() << "record " << r << ": hidden row differs";
    }
    for (int64_t j = 0; j < want.f.top_k; ++j) {
      if (got.id(r, j) != want.id(r, j)) {
        return ::testing::AssertionFailure() << "record " << r << " slot " << j << ": expert "
                                             << got.id(r, j) << ", want " << want.id(r, j);
      }
      if (want.id(r, j) >= 0 && got.weight(r, j) != want.weight(r, j)) {
        return ::testing::AssertionFailure() << "record " << r << " slot " << j << ": weight "
                                             << got.weight(r, j) << ", want " << want.weight(r, j);
      }
    }
  }
  return ::testing::AssertionSuccess();
}

struct GroupRef {
  std::vector<float> xs;
  std::vector<int32_t> pair_of;
  std::vector<int64_t> offsets;
};

// Pairs (record, slot) grouped by expert ascending, records in order within an expert.
GroupRef MoeGroupByExpertReference(const Records& rec, int64_t experts) {
  GroupRef g{{}, std::vector<int32_t>(rec.count() * rec.f.top_k, -1), {}};
  int32_t pairs = 0;
  for (int64_t e = 0; e < experts; ++e) {
    g.offsets.push_back(pairs);
    for (int64_t r = 0; r < rec.count(); ++r) {
      for (int64_t j = 0; j < rec.f.top_k; ++j) {
        if (rec.id(r, j) != e) continue;
        const auto x = rec.hidden(r);
        g.xs.insert(g.xs.end(), x.begin(), x.end());
        g.pair_of[r * rec.f.top_k + j] = pairs++;
      }
    }
  }
  g.offsets.push_back(pairs);
  return g;
}

// One routed expert with its weights as stored (bf16, the checkpoint's dtype) and as fp32 values.
struct HostExpert {
  int64_t inter = 0;
  std::vector<float> gate, up, down;  // [inter, hidden], [inter, hidden], [hidden, inter]
};

std::vector<double> ExpertReference(const HostExpert& e, const float* x, int64_t hidden) {
  std::vector<double> act(e.inter), y(hidden, 0.0);
  for (int64_t o = 0; o < e.inter; ++o) {
    double g = 0, u = 0;
    for (int64_t c = 0; c < hidden; ++c) {
      g += static_cast<double>(e.gate[o * hidden + c]) * x[c];
      u += static_cast<double>(e.up[o * hidden + c]) * x[c];
    }
    act[o] = Silu(g) * u;
  }
  for (int64_t o = 0; o < hidden; ++o)
    for (int64_t c = 0; c < e.inter; ++c) y[o] += e.down[o * e.inter + c] * act[c];
  return y;
}

// The whole expert-parallel MoE path on one backend, with R ranks simulated in one process: rank
// r's slice of the dispatched records is what it receives (the exchange is the identity here),
// its partial sums go back in the same order. Every op's output is checked against its own
// reference, and the routed sum against Σ_j w_j E_j(x) directly.
struct MoeCase {
  int ranks;
  DType record_dtype;
  bool shuffled_placement = false;  // owner as an arbitrary table (load-based placement)
};

TEST_P(BackendOps, MoePipelineOverRanks) {
  std::mt19937 rng(11);
  const int64_t n = 9, experts = 32, top_k = 4, hidden = 67;  // odd hidden: bf16 record padding
  std::vector<HostExpert> host_experts(experts);
  std::vector<ExpertMatrices> mats(experts);
  for (int64_t e = 0; e < experts; ++e) {
    HostExpert& he = host_experts[e];
    he.inter = e % 3 == 0 ? 24 : 32;  // experts of different widths: scratch sized by the widest
    he.gate = RoundTo(DType::kBF16, Normal(rng, he.inter * hidden, 0.2f));
    he.up = RoundTo(DType::kBF16, Normal(rng, he.inter * hidden, 0.2f));
    he.down = RoundTo(DType::kBF16, Normal(rng, hidden * he.inter, 0.2f));
    auto bind = [&](const std::vector<float>& v, int64_t rows, int64_t cols) {
      const auto bytes = Encode(DType::kBF16, v);
      return Matrix{DType::kBF16, UploadBytes(bytes.data(), bytes.size()), rows, cols};
    };
    mats[e] = {bind(he.gate, he.inter, hidden), bind(he.up, he.inter, hidden),
               bind(he.down, hidden, he.inter)};
  }
  const int64_t max_inter = 32;

  for (const MoeCase mc :
       {MoeCase{1, DType::kF32}, MoeCase{2, DType::kF32}, MoeCase{4, DType::kF32},
        MoeCase{1, DType::kBF16}, MoeCase{2, DType::kBF16}, MoeCase{4, DType::kBF16},
        MoeCase{2, DType::kF32, true}, MoeCase{4, DType::kBF16, true}}) {
    const int ranks = mc.ranks;
    SCOPED_TRACE("R=" + std::to_string(ranks) + " records " +
                 std::string(DTypeName(mc.record_dtype)) +
                 (mc.shuffled_placement ? " shuffled placement" : ""));
    const RecordFormat f{hidden, top_k, mc.record_dtype};
    // Contiguous placement: rank r holds experts [r E/R, (r+1) E/R); or the same table shuffled.
    std::vector<int32_t> owner(experts);
    for (int64_t e = 0; e < experts; ++e) owner[e] = static_cast<int32_t>(e * ranks / experts);
    if (mc.shuffled_placement) std::shuffle(owner.begin(), owner.end(), rng);

    // Router: the last quarter of the experts is never chosen (with R = 4: a rank with nothing
    // to do), token 0 keeps all its experts on one rank.
    auto logits = Normal(rng, n * experts, 2.0f);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t e = experts * 3 / 4; e < experts; ++e) logits[i * experts + e] = -30.0f;
    for (int64_t e = 0; e < 4; ++e) logits[e] = 20.0f + e;
    const auto h = Normal(rng, n * hidden);
    const float* hd = Upload(h);
    int32_t* ids_d = Poisoned<int32_t>(n * top_k);
    float* w_d = Poisoned<float>(n * top_k);
    const float* logits_d = Upload(logits);
    RunOp("RouterTopK", [&] { b().RouterTopK(logits_d, n, experts, top_k, true, ids_d, w_d); });
    const auto ids = Download<int32_t>(ids_d, n * top_k);
    const auto weights = Download<float>(w_d, n * top_k);

    // MoeDispatch.
    void* records_d = Poisoned<uint8_t>(n * ranks * f.bytes());
    int32_t* token_of_d = Poisoned<int32_t>(n * ranks);
    std::vector<int64_t> records_to(ranks, -7);
    DispatchCounts counts{records_to, -7};
    const int32_t* owner_d = Upload(owner);
    RunOp("MoeDispatch", [&] {
      b().MoeDispatch(hd, n, ids_d, w_d, owner_d, ranks, f, records_d, token_of_d, counts);
    });
    const DispatchRef disp = MoeDispatchReference(h, n, ids, weights, owner, ranks, f);
    ASSERT_EQ(counts.total, disp.records.count());
    ASSERT_EQ(records_to, disp.records_to);
    if (ranks == 4 && !mc.shuffled_placement) {
      ASSERT_EQ(records_to[3], 0);  // a rank that receives nothing
    }
    Records got_records{f, Download<uint8_t>(records_d, counts.total * f.bytes())};
    EXPECT_TRUE(SameRecords(got_records, disp.records)) << "MoeDispatch records";
    EXPECT_TRUE(
        Same("MoeDispatch token_of", Download<int32_t>(token_of_d, counts.total), disp.token_of));

    // Each rank: group by expert, run its experts, weight and sum per record.
    float* partial_d = Poisoned<float>(std::max<int64_t>(counts.total, 1) * hidden);
    int64_t first = 0;
    for (int r = 0; r < ranks; ++r) {
      SCOPED_TRACE("rank " + std::to_string(r));
      const int64_t count = records_to[r];
      Records mine{f, {}};
      mine.bytes.assign(disp.records.bytes.begin() + first * f.bytes(),
                        disp.records.bytes.begin() + (first + count) * f.bytes());
      std::vector<uint8_t> held(experts);
      for (int64_t e = 0; e < experts; ++e) held[e] = owner[e] == r;
      const void* rec_d = static_cast<const uint8_t*>(records_d) + first * f.bytes();
      const int64_t max_pairs = std::max<int64_t>(count * top_k, 1);
      float* xs_d = Poisoned<float>(max_pairs * hidden);
      int32_t* pair_of_d = Poisoned<int32_t>(max_pairs);
      std::vector<int64_t> offsets(experts + 1, -7);
      absl::Status grouped;
      RunOp("MoeGroupByExpert", [&] {
        grouped = b().MoeGroupByExpert(rec_d, count, f, experts,
                                       reinterpret_cast<const bool*>(held.data()), xs_d, pair_of_d,
                                       offsets.data());
      });
      ASSERT_TRUE(grouped.ok()) << grouped;
      const GroupRef group = MoeGroupByExpertReference(mine, experts);
      ASSERT_EQ(offsets, group.offsets);
      const int64_t pairs = offsets[experts];
      EXPECT_TRUE(Same("MoeGroupByExpert xs", Download<float>(xs_d, pairs * hidden), group.xs));
      EXPECT_TRUE(Same("MoeGroupByExpert pair_of", Download<int32_t>(pair_of_d, count * top_k),
                       group.pair_of));

      // Experts without pairs get null weights: the op must not read them.
      std::vector<ExpertMatrices> bound(experts);
      for (int64_t e = 0; e < experts; ++e)
        if (offsets[e + 1] > offsets[e]) bound[e] = mats[e];
      float* scratch_d = Poisoned<float>(std::max<int64_t>(2 * pairs * max_inter, 1));
      float* ys_d = Poisoned<float>(std::max<int64_t>(pairs, 1) * hidden);
      RunOp("GroupedExpertMlp", [&] {
        b().GroupedExpertMlp(xs_d, offsets.data(), experts, bound.data(), scratch_d, ys_d);
      });
      std::vector<double> ys_want;
      for (int64_t e = 0; e < experts; ++e) {
        for (int64_t p = offsets[e]; p < offsets[e + 1]; ++p) {
          const auto y = ExpertReference(host_experts[e], &group.xs[p * hidden], hidden);
          ys_want.insert(ys_want.end(), y.begin(), y.end());
        }
      }
      const auto ys = Download<float>(ys_d, pairs * hidden);
      if (pairs > 0) {
        // Two fp32 GEMM layers over ≤ 67 terms each: 1e-5 of the largest output.
        EXPECT_TRUE(Close("GroupedExpertMlp", ys, ys_want, 1e-5));
      }

      RunOp("MoeWeightedSum", [&] {
        b().MoeWeightedSum(ys_d, rec_d, count, f, pair_of_d, partial_d + first * hidden);
      });
      std::vector<double> partial_want(count * hidden, 0.0);
      for (int64_t rr = 0; rr < count; ++rr)
        for (int64_t j = 0; j < top_k; ++j) {
          const int32_t p = group.pair_of[rr * top_k + j];
          if (p < 0) continue;
          for (int64_t c = 0; c < hidden; ++c)
            partial_want[rr * hidden + c] +=
                static_cast<double>(mine.weight(rr, j)) * ys[p * hidden + c];
        }
      if (count > 0) {
        // ≤ top_k fp32 products and sums per value: 1e-6.
        EXPECT_TRUE(Close("MoeWeightedSum",
                          Download<float>(partial_d + first * hidden, count * hidden), partial_want,
                          kElementwiseTolerance));
      }
      first += count;
    }

    // MoeCombine: the partial sums come back in the order they were sent.
    const auto partial = Download<float>(partial_d, counts.total * hidden);
    float* routed_d = Poisoned<float>(n * hidden);
    RunOp("MoeCombine",
          [&] { b().MoeCombine(partial_d, token_of_d, counts.total, n, hidden, routed_d); });
    std::vector<double> combine_want(n * hidden, 0.0);
    for (int64_t rr = 0; rr < counts.total; ++rr)
      for (int64_t c = 0; c < hidden; ++c)
        combine_want[disp.token_of[rr] * hidden + c] += partial[rr * hidden + c];
    const auto routed = Download<float>(routed_d, n * hidden);
    EXPECT_TRUE(Close("MoeCombine", routed, combine_want, kElementwiseTolerance));

    // End to end: Σ_j w_j E_j(x) from the routing alone (x as the records carry it).
    std::vector<double> direct(n * hidden, 0.0), direct_exact(n * hidden, 0.0);
    const auto h_sent = RoundTo(mc.record_dtype, h);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < top_k; ++j) {
        const HostExpert& he = host_experts[ids[i * top_k + j]];
        const auto y = ExpertReference(he, &h_sent[i * hidden], hidden);
        const auto y_exact = ExpertReference(he, &h[i * hidden], hidden);
        for (int64_t c = 0; c < hidden; ++c) {
          direct[i * hidden + c] += weights[i * top_k + j] * y[c];
          direct_exact[i * hidden + c] += weights[i * top_k + j] * y_exact[c];
        }
      }
    EXPECT_TRUE(Close("MoE routed sum", routed, direct, 1e-5));
    if (mc.record_dtype == DType::kBF16) {
      // bf16 hidden rows (2^-9 relative each) through two layers: under 1% of the largest output
      // (measured on the CPU: 4e-3).
      EXPECT_TRUE(Close("MoE routed sum, bf16 records vs fp32", routed, direct_exact, 1e-2));
    }
  }
}

// Records built by hand: empty slots (-1) in several places (experts 2 and 11 are held but sent
// nothing).
constexpr int64_t kHandExperts = 12;
Records HandMadeRecords(DType dtype, std::mt19937& rng, std::vector<uint8_t>& held) {
  Records rec{RecordFormat{5, 3, dtype}, {}};
  held.assign(kHandExperts, 0);
  for (int e : {1, 2, 4, 5, 7, 11}) held[e] = 1;
  const std::vector<std::vector<int32_t>> slots{{1, 4, 5}, {7}, {1, 5}, {4}, {1, 4, 7}};
  for (const auto& s : slots) {
    rec.Append(Normal(rng, rec.f.hidden), s, Uniform(rng, s.size(), 0.1f, 1.0f));
  }
  return rec;
}

TEST_P(BackendOps, MoeGroupByExpertEmptySlotsAndDataLoss) {
  std::mt19937 rng(12);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    std::vector<uint8_t> held;
    const Records rec = HandMadeRecords(dtype, rng, held);
    const RecordFormat& f = rec.f;
    const int64_t count = rec.count(), experts = kHandExperts;
    const bool* held_ptr = reinterpret_cast<const bool*>(held.data());
    const void* rec_d = UploadBytes(rec.bytes.data(), rec.bytes.size());
    float* xs_d = Poisoned<float>(count * f.top_k * f.hidden);
    int32_t* pair_of_d = Poisoned<int32_t>(count * f.top_k);
    std::vector<int64_t> offsets(experts + 1, -7);
    absl::Status st;
    RunOp("MoeGroupByExpert", [&] {
      st =
          b().MoeGroupByExpert(rec_d, count, f, experts, held_ptr, xs_d, pair_of_d, offsets.data());
    });
    ASSERT_TRUE(st.ok()) << st;
    const GroupRef want = MoeGroupByExpertReference(rec, experts);
    EXPECT_EQ(offsets, want.offsets);
    EXPECT_TRUE(Same("xs", Download<float>(xs_d, want.xs.size()), want.xs));
    EXPECT_TRUE(Same("pair_of", Download<int32_t>(pair_of_d, count * f.top_k), want.pair_of));

    // An expert this rank does not hold, and an id past the last expert: DataLoss, no crash.
    for (int32_t bad : {3, static_cast<int32_t>(experts)}) {
      SCOPED_TRACE("bad expert id " + std::to_string(bad));
      Records broken = rec;
      std::memcpy(broken.at(2) + broken.ids_offset() + 4, &bad, 4);  // record 2, slot 1
      const void* broken_d = UploadBytes(broken.bytes.data(), broken.bytes.size());
      absl::Status lost;
      RunOp("MoeGroupByExpert bad id", [&] {
        lost = b().MoeGroupByExpert(broken_d, count, f, experts, held_ptr, xs_d, pair_of_d,
                                    offsets.data());
      });
      EXPECT_EQ(lost.code(), absl::StatusCode::kDataLoss) << lost;
      EXPECT_NE(lost.message().find(std::to_string(bad)), std::string_view::npos)
          << "the error names the expert: " << lost;
    }
  }
}

// A negative id other than the empty mark -1 is outside [0, experts): DataLoss, naming it.
TEST_P(BackendOps, MoeGroupByExpertNegativeIdIsDataLoss) {
  std::mt19937 rng(15);
  std::vector<uint8_t> held;
  Records rec = HandMadeRecords(DType::kF32, rng, held);
  const int32_t bad = -5;
  std::memcpy(rec.at(2) + rec.ids_offset() + 4, &bad, 4);
  const void* rec_d = UploadBytes(rec.bytes.data(), rec.bytes.size());
  float* xs_d = Poisoned<float>(rec.count() * rec.f.top_k * rec.f.hidden);
  int32_t* pair_of_d = Poisoned<int32_t>(rec.count() * rec.f.top_k);
  std::vector<int64_t> offsets(kHandExperts + 1);
  const absl::Status lost = b().MoeGroupByExpert(rec_d, rec.count(), rec.f, kHandExperts,
                                                 reinterpret_cast<const bool*>(held.data()), xs_d,
                                                 pair_of_d, offsets.data());
  EXPECT_EQ(lost.code(), absl::StatusCode::kDataLoss) << lost;
  EXPECT_NE(lost.message().find("-5"), std::string_view::npos) << lost;
}

// MoeCombine with a token sent nowhere: its row must be exactly zero.
TEST_P(BackendOps, MoeCombineTokensSentNowhereAreZero) {
  std::mt19937 rng(13);
  const int64_t n = 5, hidden = 8;
  const std::vector<int32_t> token_of{0, 3, 0, 4, 3, 0};  // tokens 1 and 2 sent nowhere
  const int64_t records = static_cast<int64_t>(token_of.size());
  const auto combined = Normal(rng, records * hidden);
  const float* combined_d = Upload(combined);
  const int32_t* token_of_d = Upload(token_of);
  float* routed_d = Poisoned<float>(n * hidden);
  RunOp("MoeCombine",
        [&] { b().MoeCombine(combined_d, token_of_d, records, n, hidden, routed_d); });
  std::vector<double> want(n * hidden, 0.0);
  for (int64_t r = 0; r < records; ++r)
    for (int64_t c = 0; c < hidden; ++c) want[token_of[r] * hidden + c] += combined[r * hidden + c];
  const auto routed = Download<float>(routed_d, n * hidden);
  EXPECT_TRUE(Close("MoeCombine", routed, want, kElementwiseTolerance));
  for (int64_t c = hidden; c < 3 * hidden; ++c) EXPECT_EQ(routed[c], 0.0f) << c;
}

// ---------------------------------------------------------------------------------------------
// An idle rank runs every step with zero tokens (architecture.md §2, so that every rank enters
// every collective): each op over an empty step must leave the arenas alone and return cleanly.

TEST_P(BackendOps, EmptyStepTouchesNothing) {
  std::mt19937 rng(16);
  const HostStep st = BuildStep({}, 16, rng);
  const StepMeta meta = UploadStep(st);
  float* none = Poisoned<float>(0);
  int32_t* no_ids = Poisoned<int32_t>(0);

  const AttentionShape as{8, 2, 32, 16, 1e7f};
  const int64_t width = as.num_kv_heads * as.head_dim;
  const auto k_arena = Normal(rng, st.num_blocks * st.block_size * width);
  const KvLayer cache{Upload(k_arena), Upload(k_arena), DType::kF32, st.block_size, width};
  const auto norm_w = Normal(rng, as.head_dim);
  const float* norm_d = Upload(norm_w);
  RunOp("AttentionPrep",
        [&] { b().AttentionPrep(none, none, meta, as, norm_d, norm_d, 1e-6f, none, none); });
  RunOp("AppendKv", [&] { b().AppendKv(none, none, meta, cache); });
  RunOp("PagedAttention", [&] { b().PagedAttention(none, meta, cache, as, none, none); });
  EXPECT_TRUE(Same("keys", Download<float>(cache.k, k_arena.size()), k_arena));
  EXPECT_TRUE(Same("values", Download<float>(cache.v, k_arena.size()), k_arena));

  const DeltaNetShape ds{2, 4, 32, 16, 4};
  HostState state = MakeState(st, ds, rng);
  const StateLayer layer{Upload(state.values), state.stride};
  const auto conv_w = Normal(rng, ds.conv_dim() * ds.conv_kernel);
  const float* conv_w_d = Upload(conv_w);
  RunOp("DeltaNetSplit", [&] { b().DeltaNetSplit(none, none, 0, ds, none, none, none, none); });
  RunOp("CausalConvSilu", [&] { b().CausalConvSilu(none, meta, ds, conv_w_d, layer, none); });
  RunOp("DeltaNetGates", [&] {
    b().DeltaNetGates(none, none, 0, ds.num_value_heads, conv_w_d, conv_w_d, none, none);
  });
  RunOp("DeltaRule", [&] { b().DeltaRule(none, none, none, meta, ds, layer, none); });
  EXPECT_TRUE(Same("state arena", Download<float>(layer.base, state.values.size()), state.values));

  const int64_t experts = 8, top_k = 2;
  const RecordFormat f{16, top_k, DType::kF32};
  const std::vector<int32_t> owner{0, 0, 0, 0, 1, 1, 1, 1};
  const int32_t* owner_d = Upload(owner);
  RunOp("RouterTopK", [&] { b().RouterTopK(none, 0, experts, top_k, true, no_ids, none); });
  std::vector<int64_t> records_to(2, -7);
  DispatchCounts counts{records_to, -7};
  RunOp("MoeDispatch",
        [&] { b().MoeDispatch(none, 0, no_ids, none, owner_d, 2, f, none, no_ids, counts); });
  EXPECT_EQ(records_to, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(counts.total, 0);
  const std::vector<uint8_t> held(experts, 1);
  std::vector<int64_t> offsets(experts + 1, -7);
  absl::Status grouped;
  RunOp("MoeGroupByExpert", [&] {
    grouped = b().MoeGroupByExpert(none, 0, f, experts, reinterpret_cast<const bool*>(held.data()),
                                   none, no_ids, offsets.data());
  });
  EXPECT_TRUE(grouped.ok()) << grouped;
  EXPECT_EQ(offsets, std::vector<int64_t>(experts + 1, 0));
  const std::vector<ExpertMatrices> unbound(experts);  // no pairs: no weights read
  RunOp("GroupedExpertMlp",
        [&] { b().GroupedExpertMlp(none, offsets.data(), experts, unbound.data(), none, none); });
  RunOp("MoeWeightedSum", [&] { b().MoeWeightedSum(none, none, 0, f, no_ids, none); });
  RunOp("MoeCombine", [&] { b().MoeCombine(none, no_ids, 0, 0, f.hidden, none); });
}

// ---------------------------------------------------------------------------------------------
// Sampling: greedy only here (tests/unit/sampling checks SampleRows fully against the sampler).

TEST_P(BackendOps, SampleRowsGreedyArgmaxLowestIdOnTies) {
  std::mt19937 rng(14);
  const int64_t rows = 4, vocab = 1000;
  auto logits = Normal(rng, rows * vocab);
  logits[1 * vocab + 400] = logits[1 * vocab + 17] = 50.0f;  // tie: 17 wins
  logits[2 * vocab + 999] = 50.0f;                           // the last id
  logits[3 * vocab + 5] = -std::numeric_limits<float>::infinity();
  std::vector<SamplingRow> settings(rows);
  for (auto& s : settings) s.temperature = 0.0f;
  std::vector<int32_t> want(rows);
  for (int64_t r = 0; r < rows; ++r) {
    want[r] = static_cast<int32_t>(std::max_element(&logits[r * vocab], &logits[(r + 1) * vocab]) -
                                   &logits[r * vocab]);
  }
  ASSERT_EQ(want[1], 17);
  const float* ld = Upload(logits);
  std::vector<int32_t> tokens(rows, -7);
  absl::Status st;
  RunOp("SampleRows", [&] { st = b().SampleRows(ld, rows, vocab, settings, tokens.data()); });
  if (st.code() == absl::StatusCode::kUnimplemented) GTEST_SKIP() << st;
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(tokens, want);

  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto broken = logits;
    broken[2 * vocab + 123] = bad;
    const float* bd = Upload(broken);
    RunOp("SampleRows bad logits",
          [&] { st = b().SampleRows(bd, rows, vocab, settings, tokens.data()); });
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << st;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::ValuesIn(AvailableBackends()),
                         [](const ::testing::TestParamInfo<BackendEntry>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace nextserve::kernels
