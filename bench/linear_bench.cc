// linear_bench: the CPU Linear paths for bf16 weights, per shape and row count, in one run:
//   f32 few-rows   AVX2 kernel widening the bf16 weights (fp32 compute, m <= 8 in Linear)
//   f32 gemm       bf16 tiles widened to fp32 + oneDNN sgemm (fp32 compute, m > 8)
//   bf16 few-rows  AVX512-BF16 vdpbf16ps kernel, weights read once for m <= 8
//   bf16 gemm      the batch-invariant AVX512-BF16 GEMM (4 x 4 tiles on the stored weights)
//   bf16 prepacked oneDNN bf16 matmul on weights reordered once into its blocked layout (what a
//                  load-time prepack would give; costs a second copy of the weights: pack/w is
//                  its size over the stored weights; its sums depend on the row count)
// and oneDNN sgemm on fp32 weights (engine_bench's baseline). GFLOP/s, best of --reps.
// --clock cpu times each call in CPU seconds of the calling thread: with --threads 1 the figures
// then hold on a machine other jobs share (with more threads, use wall time on a quiet machine).
//
//   linear_bench [--threads 1,2] [--rows 1,2,4,8,9,16,32,64,128,512] [--reps 20] [--clock wall|cpu]
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "cli/flags.h"
#include "dnnl.h"
#include "dnnl.hpp"
#include "kernels/cpu/cpu_ops.h"

namespace nextserve {
namespace {

using Clock = std::chrono::steady_clock;

bool g_thread_clock = false;

double Now() {
  if (g_thread_clock) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

double BestSeconds(int reps, const std::function<void()>& fn) {
  fn();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Now();
    fn();
    best = std::min(best, Now() - t0);
  }
  return best;
}

// oneDNN bf16 matmul with the weights reordered once into the layout it chooses.
class PrepackedMatmul {
 public:
  PrepackedMatmul(const uint16_t* w, int64_t m, int64_t n, int64_t k) {
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc src({m, k}, dt::bf16, dnnl::memory::format_tag::ab);
    const dnnl::memory::desc plain({k, n}, dt::bf16, dnnl::memory::dims{1, k});
    const dnnl::memory::desc any({k, n}, dt::bf16, dnnl::memory::format_tag::any);
    const dnnl::memory::desc dst({m, n}, dt::f32, dnnl::memory::format_tag::ab);
    pd_ = dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, any, dst), engine_);
    matmul_ = dnnl::matmul(pd_);
    packed_ = dnnl::memory(pd_.weights_desc(), engine_);
    dnnl::memory user(plain, engine_, const_cast<uint16_t*>(w));
    dnnl::reorder(user, packed_).execute(stream_, user, packed_);
    stream_.wait();
  }
  size_t packed_bytes() const { return pd_.weights_desc().get_size(); }
  void Run(const uint16_t* x, float* y) {
    dnnl::memory src(pd_.src_desc(), engine_, const_cast<uint16_t*>(x));
    dnnl::memory dst(pd_.dst_desc(), engine_, y);
    matmul_.execute(stream_,
                    {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, packed_}, {DNNL_ARG_DST, dst}});
    stream_.wait();
  }

 private:
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream_{engine_};
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul matmul_;
  dnnl::memory packed_;
};

struct Shape {
  const char* name;
  int64_t n, k;
};

int Main(int argc, char** argv) {
  std::string threads_list = "1,2", rows_list = "1,2,4,8,9,16,32,64,128,512";
  int64_t reps = 20;
  cli::Flags flags("linear_bench [--threads 1,2] [--rows 1,2,...] [--reps N]");
  flags.String("threads", &threads_list, "thread counts (default 1,2)");
  flags.String("rows", &rows_list, "row counts m (default 1,2,4,8,9,16,32,64,128,512)");
  flags.Int("reps", &reps, "timed repetitions, best kept (default 20)");
  std::string clock = "wall";
  flags.String("clock", &clock, "wall (default) or cpu: CPU seconds of the calling thread");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return cli::Flags::Report(s, flags);
  if (clock != "wall" && clock != "cpu") {
    return cli::Flags::Report(absl::InvalidArgumentError("--clock: expected wall or cpu"), flags);
  }
  g_thread_clock = clock == "cpu";
  if (!kernels::cpu::CpuHasBf16Dot()) {
    std::printf(
        "this CPU has no AVX512-BF16: bf16 compute falls back to fp32; nothing to compare\n");
    return 0;
  }
  // The small preset's matrices: attention/DeltaNet projections, an expert, the lm_head.
  const Shape shapes[] = {{"in_proj_qkvz", 6144, 1024},
                          {"out_proj", 1024, 2048},
                          {"expert up", 256, 1024},
                          {"expert down", 1024, 256},
                          {"lm_head", 32768, 1024}};
  const auto rows = bench::ParsePositiveList(rows_list);
  for (int64_t threads : bench::ParsePositiveList(threads_list)) {
    omp_set_num_threads(static_cast<int>(threads));
    std::printf("threads %ld (GFLOP/s; f32 = fp32 compute, bf16 = bf16 compute)\n", threads);
    std::printf("  %-13s %5s %9s %9s %9s %9s %9s %9s %6s %5s\n", "shape", "m", "f32 few",
                "f32 gemm", "bf16 few", "bf16 gemm", "bf16 pack", "sgemm f32", "best", "pack/w");
    for (const Shape& s : shapes) {
      std::mt19937 rng(1);
      std::normal_distribution<float> dist(0.0f, 0.05f);
      std::vector<uint16_t> wb(s.n * s.k);
      std::vector<float> wf(s.n * s.k);
      for (size_t i = 0; i < wb.size(); ++i) {
        wb[i] = F32ToBf16(dist(rng));
        wf[i] = Bf16ToF32(wb[i]);
      }
      const kernels::Matrix w{DType::kBF16, wb.data(), s.n, s.k};
      for (int64_t m : rows) {
        std::vector<float> x(m * s.k), y(m * s.n);
        for (auto& v : x) v = dist(rng);
        std::vector<uint16_t> xb(x.size());
        for (size_t i = 0; i < x.size(); ++i) xb[i] = F32ToBf16(x[i]);
        const double flop = 2.0 * m * s.n * s.k;
        auto gflops = [&](const std::function<void()>& fn) {
          return flop / BestSeconds(static_cast<int>(reps), fn) / 1e9;
        };
        const bool few = m <= 8;
        const double f32_few =
            few ? gflops([&] { kernels::cpu::LinearFewRows(x.data(), m, w, y.data(), false); }) : 0;
        const double f32_gemm =
            gflops([&] { kernels::cpu::LinearGemm(x.data(), m, w, y.data(), false); });
        const double bf16_few =
            few ? gflops([&] { kernels::cpu::LinearFewRowsBf16(x.data(), m, w, y.data(), false); })
                : 0;
        const double bf16_mm =
            gflops([&] { kernels::cpu::LinearGemmBf16(x.data(), m, w, y.data(), false); });
        PrepackedMatmul packed(wb.data(), m, s.n, s.k);
        const double bf16_pack = gflops([&] { packed.Run(xb.data(), y.data()); });
        const double sgemm = gflops([&] {
          dnnl_sgemm('N', 'T', m, s.n, s.k, 1.0f, x.data(), s.k, wf.data(), s.k, 0.0f, y.data(),
                     s.n);
        });
        const char* best = bf16_few >= bf16_mm ? "few" : "gemm";
        std::printf("  %-13s %5ld %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %6s %5.2f\n", s.name, m,
                    f32_few, f32_gemm, bf16_few, bf16_mm, bf16_pack, sgemm, few ? best : "gemm",
                    static_cast<double>(packed.packed_bytes()) / (wb.size() * 2));
      }
    }
    // As the MoE layer meets them: many distinct experts (more bytes than the caches hold), each
    // with m rows, so every call reads its weights from memory. The few-rows kernel runs passes of
    // 8 rows beyond m = 8 (later passes find the weights in L2).
    const int64_t experts = 128, en = 256, ek = 1024;
    std::vector<uint16_t> ew(experts * en * ek);
    std::mt19937 rng(2);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    for (auto& v : ew) v = F32ToBf16(dist(rng));
    std::printf("  %ld experts %ldx%ld, cold   m   f32 path  bf16 few bf16 gemm\n", experts, en,
                ek);
    for (int64_t m : rows) {
      std::vector<float> x(m * ek), y(m * en);
      for (auto& v : x) v = dist(rng);
      auto over_experts = [&](auto fn) {
        const double flop = 2.0 * m * en * ek * experts;
        return flop /
               BestSeconds(
                   static_cast<int>(std::max<int64_t>(2, reps / 5)),
                   [&] {
                     for (int64_t e = 0; e < experts; ++e) {
                       const kernels::Matrix w{DType::kBF16, ew.data() + e * en * ek, en, ek};
                       fn(w);
                     }
                   }) /
               1e9;
      };
      const double f32 = over_experts([&](const kernels::Matrix& w) {
        kernels::cpu::Linear(x.data(), m, w, y.data(), false);  // fp32 mode: the default
      });
      const double few = over_experts([&](const kernels::Matrix& w) {
        kernels::cpu::LinearFewRowsBf16(x.data(), m, w, y.data(), false);
      });
      const double mm = over_experts([&](const kernels::Matrix& w) {
        kernels::cpu::LinearGemmBf16(x.data(), m, w, y.data(), false);
      });
      std::printf("  %28ld %9.1f %9.1f %9.1f\n", m, f32, few, mm);
    }
  }
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Main(argc, argv);
}
