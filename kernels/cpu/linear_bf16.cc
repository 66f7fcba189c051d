// bf16 compute for bf16 weights: the activation rows are rounded to bf16 once, then multiplied in
// bf16 with fp32 accumulation. Few rows (decode): an AVX512-BF16 kernel (vdpbf16ps) that streams
// the weights once for up to 8 rows. Many rows: oneDNN's bf16 matmul (brgemm on AVX512-BF16 or
// AMX) on the stored [n, k] weights viewed in place as the transposed [k, n] operand.
// The AVX-512 code is compiled per function (target attributes) and only called after the run-time
// check, so the library still runs on AVX2-only machines, where bf16 compute falls back to fp32.
// GCC 12's _mm512_reduce_add_ps starts from _mm256_undefined_pd, which -Wmaybe-uninitialized
// reports at every use (a false positive, fixed in later GCC).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "dnnl.hpp"
#include "kernels/cpu/cpu_ops.h"

#define NEXTSERVE_TARGET_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace nextserve::kernels::cpu {
namespace {

std::atomic<Compute> g_linear_compute{Compute::kF32};

bool DetectBf16Dot() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq")) {
    return false;
  }
  // oneDNN's view as well: it honours DNNL_MAX_CPU_ISA, so `DNNL_MAX_CPU_ISA=AVX2` makes this
  // machine behave as an AVX2-only one for both bf16 paths (how the fallback is tested).
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;
}

// Round to nearest even, as F32ToBf16 (vcvtneps2bf16 also flushes fp32 subnormals to zero).
NEXTSERVE_TARGET_AVX512_BF16 void RoundToBf16(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), reinterpret_cast<const __m256i&>(h));
  }
  if (i < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
    _mm256_mask_storeu_epi16(out + i, mask, reinterpret_cast<const __m256i&>(h));
  }
}

void RoundRowsToBf16(const float* x, int64_t m, int64_t k, uint16_t* out) {
  // Parallel only when it pays (prefill); inside the experts' parallel loop this runs serially.
#pragma omp parallel for schedule(static) if (m * k >= (int64_t{1} << 16))
  for (int64_t r = 0; r < m; ++r) RoundToBf16(x + r * k, k, out + r * k);
}

// The bf16 activations of the current call, reused across calls on each thread.
std::vector<uint16_t>& ActivationScratch(size_t n) {
  thread_local std::vector<uint16_t> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch;
}

NEXTSERVE_TARGET_AVX512_BF16 inline __m512bh LoadBf16x32(const void* p) {
  const __m512i v = _mm512_loadu_si512(p);
  return reinterpret_cast<const __m512bh&>(v);
}
NEXTSERVE_TARGET_AVX512_BF16 inline __m512bh LoadBf16x32(__mmask32 mask, const void* p) {
  const __m512i v = _mm512_maskz_loadu_epi16(mask, p);
  return reinterpret_cast<const __m512bh&>(v);
}

// R bf16 rows of x (row stride k) against every weight row, two weight rows at a time so that each
// x vector loaded feeds two dot products; R <= 8 keeps the 2R accumulators in registers, so the
// weights are read once for every m <= 8. The k tail (k % 32) is a masked load, zeros past k.
template <int R>
NEXTSERVE_TARGET_AVX512_BF16 void Bf16FewRowsKernel(const uint16_t* xb, const Matrix& w, float* y,
                                                    bool accumulate) {
  const int64_t n = w.rows, k = w.cols, k32 = k & ~int64_t{31};
  const __mmask32 tail = static_cast<__mmask32>((uint64_t{1} << (k - k32)) - 1);
  const char* base = static_cast<const char*>(w.data);
  const size_t row_bytes = static_cast<size_t>(k) * 2;
#pragma omp parallel for schedule(static)
  for (int64_t j0 = 0; j0 < n; j0 += 2) {
    const bool two = j0 + 1 < n;
    const char* w0 = base + static_cast<size_t>(j0) * row_bytes;
    const char* w1 = two ? w0 + row_bytes : w0;
    __m512 acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k32; i += 32) {
      const __m512bh a = LoadBf16x32(w0 + 2 * i), b = LoadBf16x32(w1 + 2 * i);
      for (int r = 0; r < R; ++r) {
        const __m512bh xv = LoadBf16x32(xb + r * k + i);
        acc0[r] = _mm512_dpbf16_ps(acc0[r], xv, a);
        acc1[r] = _mm512_dpbf16_ps(acc1[r], xv, b);
      }
    }
    if (tail) {
      const __m512bh a = LoadBf16x32(tail, w0 + 2 * k32), b = LoadBf16x32(tail, w1 + 2 * k32);
      for (int r = 0; r < R; ++r) {
        const __m512bh xv = LoadBf16x32(tail, xb + r * k + k32);
        acc0[r] = _mm512_dpbf16_ps(acc0[r], xv, a);
        acc1[r] = _mm512_dpbf16_ps(acc1[r], xv, b);
      }
    }
    for (int r = 0; r < R; ++r) {
      float* out = y + r * n + j0;
      const float s0 = _mm512_reduce_add_ps(acc0[r]);
      out[0] = accumulate ? out[0] + s0 : s0;
      if (two) {
        const float s1 = _mm512_reduce_add_ps(acc1[r]);
        out[1] = accumulate ? out[1] + s1 : s1;
      }
    }
  }
}

// oneDNN matmul primitives by shape. M is a compile-time dimension: with DNNL_RUNTIME_DIM_VAL
// oneDNN 2.6 picks its gemm:jit path, 0.5-0.9x of the brgemm kernel a fixed M gets (bench/).
// The scratchpad is the caller's (user mode), so that one primitive can run on several threads.
// oneDNN fixes a primitive's thread count when it is made, so that count is part of the key: one
// thread inside a parallel region (the experts' loop), the OpenMP thread count outside.
struct MatmulKey {
  int64_t m, n, k;
  bool accumulate;
  int threads;
  auto operator<=>(const MatmulKey&) const = default;
};

struct Matmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
};

class MatmulCache {
 public:
  static MatmulCache& Get() {
    static MatmulCache cache;
    return cache;
  }
  const dnnl::engine& engine() const { return engine_; }

  // The primitive for this shape (handles: copies are cheap); throws dnnl::error if oneDNN has
  // none.
  Matmul Find(const MatmulKey& key) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) return it->second;
    // Distinct M values are bounded by the batch sizes the scheduler forms; a cap keeps a server
    // that sees every M from 9 to its prefill budget from growing without limit.
    if (map_.size() >= kMaxEntries) map_.clear();
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc src({key.m, key.k}, dt::bf16, dnnl::memory::format_tag::ab);
    const dnnl::memory::desc weights({key.k, key.n}, dt::bf16, dnnl::memory::dims{1, key.k});
    const dnnl::memory::desc dst({key.m, key.n}, dt::f32, dnnl::memory::format_tag::ab);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (key.accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    // omp_set_num_threads sets this thread's count only (inside a parallel region: its task's).
    const int saved_threads = omp_get_max_threads();
    omp_set_num_threads(key.threads);
    Matmul made;
    try {
      made.pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, dst), attr, engine_);
      made.primitive = dnnl::matmul(made.pd);
    } catch (...) {
      omp_set_num_threads(saved_threads);
      throw;
    }
    omp_set_num_threads(saved_threads);
    return map_.emplace(key, made).first->second;
  }

 private:
  static constexpr size_t kMaxEntries = 512;
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  std::mutex mu_;
  std::map<MatmulKey, Matmul> map_;
};

// m <= 8 rounded rows through the kernel compiled for that row count.
void FewRowsOnRounded(const uint16_t* xb, int64_t m, const Matrix& w, float* y, bool accumulate) {
  switch (m) {
    case 1:
      return Bf16FewRowsKernel<1>(xb, w, y, accumulate);
    case 2:
      return Bf16FewRowsKernel<2>(xb, w, y, accumulate);
    case 3:
      return Bf16FewRowsKernel<3>(xb, w, y, accumulate);
    case 4:
      return Bf16FewRowsKernel<4>(xb, w, y, accumulate);
    case 5:
      return Bf16FewRowsKernel<5>(xb, w, y, accumulate);
    case 6:
      return Bf16FewRowsKernel<6>(xb, w, y, accumulate);
    case 7:
      return Bf16FewRowsKernel<7>(xb, w, y, accumulate);
    default:
      return Bf16FewRowsKernel<8>(xb, w, y, accumulate);
  }
}

}  // namespace

void SetLinearCompute(Compute compute) {
  g_linear_compute.store(compute, std::memory_order_relaxed);
}
Compute LinearCompute() {
  return g_linear_compute.load(std::memory_order_relaxed);
}
bool CpuHasBf16Dot() {
  static const bool has = DetectBf16Dot();
  return has;
}
bool UsesBf16Compute(const Matrix& w) {
  return w.dtype == DType::kBF16 && LinearCompute() == Compute::kBF16 && CpuHasBf16Dot();
}

void LinearFewRowsBf16(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t k = w.cols;
  uint16_t* xb = ActivationScratch(static_cast<size_t>(m * k)).data();
  RoundRowsToBf16(x, m, k, xb);
  // Passes of 8 rows (callers send m <= 8; this keeps any m correct).
  for (int64_t r0 = 0; r0 < m; r0 += 8) {
    FewRowsOnRounded(xb + r0 * k, std::min<int64_t>(8, m - r0), w, y + r0 * w.rows, accumulate);
  }
}

void LinearGemmBf16(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t n = w.rows, k = w.cols;
  MatmulCache& cache = MatmulCache::Get();
  Matmul matmul;
  try {
    matmul = cache.Find({m, n, k, accumulate, omp_in_parallel() ? 1 : omp_get_max_threads()});
  } catch (const dnnl::error&) {
    // No bf16 matmul for this shape: the exact path is always there.
    return LinearGemm(x, m, w, y, accumulate);
  }
  uint16_t* xb = ActivationScratch(static_cast<size_t>(m * k)).data();
  RoundRowsToBf16(x, m, k, xb);
  thread_local std::vector<uint8_t> scratchpad;
  const dnnl::memory::desc pad_desc = matmul.pd.scratchpad_desc();
  if (scratchpad.size() < pad_desc.get_size()) scratchpad.resize(pad_desc.get_size());
  const dnnl::engine& engine = cache.engine();
  thread_local dnnl::stream stream(engine);
  dnnl::memory src(matmul.pd.src_desc(), engine, xb);
  dnnl::memory weights(matmul.pd.weights_desc(), engine, const_cast<void*>(w.data));
  dnnl::memory dst(matmul.pd.dst_desc(), engine, y);
  dnnl::memory pad(pad_desc, engine, scratchpad.data());
  matmul.primitive.execute(stream, {{DNNL_ARG_SRC, src},
                                    {DNNL_ARG_WEIGHTS, weights},
                                    {DNNL_ARG_DST, dst},
                                    {DNNL_ARG_SCRATCHPAD, pad}});
  stream.wait();
}

}  // namespace nextserve::kernels::cpu
