// cuda_ops_bench: the CUDA backend's kernels at Qwen3-Next shapes, each as a share of a limit
// measured in the same run (issue 13):
//   copy      device-to-device cudaMemcpy, bytes read + written per second (the bandwidth limit);
//   gemm      a dense bf16 cuBLAS GEMM (8192^3), TFLOP/s (the compute limit);
//   decode attention (bf16 KV) and the recurrent delta-rule update: bytes/s as a share of copy;
//   prefill Linear (bf16 weights) and the delta rule over an 8K-token prompt: TFLOP/s as a share
//   of the dense GEMM (the delta rule is still the recurrent form; FLA's chunk_gated_delta_rule
//   took 0.47 ms per layer at this shape on an H200);
//   grouped expert MLP at decode sizes: time against its memory-bound time (weights of the
//   active experts at copy bandwidth).
// Each figure is the median of --reps timed runs after two warm-ups; prints one JSON object.
//   cuda_ops_bench [--reps N]
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace nextserve {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::Backend;
using kernels::Buffer;

int g_reps = 10;

// Median seconds of `run` (which queues work), synchronising around each repetition.
double Time(Backend& b, const std::function<void()>& run) {
  for (int i = 0; i < 2; ++i) run();
  if (!b.Synchronize().ok()) return -1;
  std::vector<double> t;
  for (int i = 0; i < g_reps; ++i) {
    const auto t0 = Clock::now();
    run();
    const absl::Status st = b.Synchronize();
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return -1;
    }
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Bench {
  Backend& b;
  std::vector<std::unique_ptr<Buffer>> keep;
  std::mt19937 rng{1};

  void* Raw(size_t bytes) {
    keep.push_back(b.Allocate(bytes));
    return keep.back()->data();
  }
  float* Random(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> h(n);
    for (auto& v : h) v = d(rng);
    float* p = static_cast<float*>(Raw(n * 4));
    b.CopyFromHost(h.data(), p, n * 4);
    return p;
  }
  void* RandomBf16(size_t n, float scale) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<uint16_t> h(n);
    for (auto& v : h) v = F32ToBf16(d(rng));
    void* p = Raw(n * 2);
    b.CopyFromHost(h.data(), p, n * 2);
    return p;
  }
  int32_t* Ints(const std::vector<int32_t>& h) {
    int32_t* p = static_cast<int32_t*>(Raw(std::max<size_t>(h.size(), 1) * 4));
    b.CopyFromHost(h.data(), p, h.size() * 4);
    return p;
  }
};

// Decode-only step metadata: `seqs` sequences of `context` keys each, one new token, blocks laid
// out contiguously per sequence.
kernels::StepMeta UploadDecodeStep(Bench& bench, int32_t seqs, int32_t context, int32_t block) {
  const int32_t blocks = (context + block - 1) / block;
  std::vector<int32_t> positions, cu{0}, ctx, slots, table, state;
  for (int32_t s = 0; s < seqs; ++s) {
    positions.push_back(context - 1);
    cu.push_back(s + 1);
    ctx.push_back(context);
    slots.push_back((s * blocks) * block + (context - 1));
    for (int32_t j = 0; j < blocks; ++j) table.push_back(s * blocks + j);
    state.push_back(s);
  }
  kernels::StepMeta m;
  m.num_seqs = seqs;
  m.num_tokens = seqs;
  m.max_blocks_per_seq = blocks;
  m.max_query_len = 1;
  m.max_context_len = context;
  m.block_size = block;
  m.positions = bench.Ints(positions);
  m.token_ids = m.positions;
  m.cu_seqlens_q = bench.Ints(cu);
  m.context_lens = bench.Ints(ctx);
  m.slot_mapping = bench.Ints(slots);
  m.block_table = bench.Ints(table);
  m.state_slots = bench.Ints(state);
  m.logit_rows = m.cu_seqlens_q;
  return m;
}

int Main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0) g_reps = std::max(1, std::atoi(argv[i + 1]));
  }
  auto made = kernels::CreateCudaBackend();
  if (!made.ok()) {
    std::fprintf(stderr, "cuda_ops_bench: %s\n", made.status().ToString().c_str());
    return 77;
  }
  Backend& b = **made;
  Bench bench{b, {}};
  std::string json = "{";
  auto add = [&](const std::string& key, double v) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s\"%s\": %.4g", json.size() > 1 ? ", " : "", key.c_str(), v);
    json += buf;
  };

  // ---- limits
  const size_t copy_bytes = size_t{1} << 30;
  void* src = bench.Raw(copy_bytes);
  void* dst = bench.Raw(copy_bytes);
  const double copy_s =
      Time(b, [&] { cudaMemcpy(dst, src, copy_bytes, cudaMemcpyDeviceToDevice); });
  const double copy_bw = 2.0 * copy_bytes / copy_s;  // read + write
  add("copy_GBps", copy_bw / 1e9);
  bench.keep.pop_back();
  bench.keep.pop_back();

  cublasHandle_t blas;
  cublasCreate(&blas);
  const int64_t g = 8192;
  void* ga = bench.RandomBf16(g * g, 0.1f);
  void* gb = bench.RandomBf16(g * g, 0.1f);
  void* gc = bench.Raw(g * g * 2);
  const float one = 1.0f, zero = 0.0f;
  const double gemm_s = Time(b, [&] {
    cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, g, g, g, &one, ga, CUDA_R_16BF, g, gb, CUDA_R_16BF,
                 g, &zero, gc, CUDA_R_16BF, g, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaDeviceSynchronize();
  });
  const double gemm_flops = 2.0 * g * g * g / gemm_s;
  add("dense_gemm_TFLOPs", gemm_flops / 1e12);
  bench.keep.resize(bench.keep.size() - 3);
  cublasDestroy(blas);

  // ---- decode attention: 64 sequences x 4096 keys, 16 q heads, 2 kv heads, head_dim 256, bf16 KV
  {
    const int32_t seqs = 64, context = 4096, block = 64;
    const kernels::AttentionShape s{16, 2, 256, 64, 1e7f};
    const int64_t width = s.num_kv_heads * s.head_dim;
    const int64_t rows = int64_t{seqs} * context;
    kernels::KvLayer kv{bench.RandomBf16(rows * width, 1.0f), bench.RandomBf16(rows * width, 1.0f),
                        DType::kBF16, block, width};
    const kernels::StepMeta m = UploadDecodeStep(bench, seqs, context, block);
    float* q = bench.Random(seqs * s.num_heads * s.head_dim);
    float* gate = bench.Random(seqs * s.num_heads * s.head_dim);
    float* out = static_cast<float*>(bench.Raw(seqs * s.num_heads * s.head_dim * 4));
    const double t = Time(b, [&] { b.PagedAttention(q, m, kv, s, gate, out); });
    const double bytes = 2.0 * rows * width * 2;  // K and V read once
    add("decode_attention_ms", t * 1e3);
    add("decode_attention_share_of_copy", bytes / t / copy_bw);
  }

  // ---- DeltaNet: Qwen3-Next-80B shapes (16 key heads, 32 value heads, 128 x 128, kernel 4)
  const kernels::DeltaNetShape dn{16, 32, 128, 128, 4};
  const int64_t slot_floats = dn.conv_floats() + dn.recurrent_floats();
  {
    const int32_t seqs = 64;
    float* state_base = bench.Random(seqs * slot_floats, 0.01f);
    kernels::StateLayer state{state_base, slot_floats};
    const kernels::StepMeta m = UploadDecodeStep(bench, seqs, 100, 64);
    float* conv_out = bench.Random(seqs * dn.conv_dim());
    float* gg = bench.Random(seqs * dn.num_value_heads, 0.1f);
    float* beta = bench.Random(seqs * dn.num_value_heads, 0.1f);
    float* out = static_cast<float*>(bench.Raw(seqs * dn.value_dim() * 4));
    const double t = Time(b, [&] { b.DeltaRule(conv_out, gg, beta, m, dn, state, out); });
    const double bytes = 2.0 * seqs * dn.recurrent_floats() * 4;  // state read + written
    add("recurrent_update_ms", t * 1e3);
    add("recurrent_update_share_of_copy", bytes / t / copy_bw);
  }
  {
    const int32_t tokens = 8192;
    float* state_base = bench.Random(slot_floats, 0.0f);
    kernels::StateLayer state{state_base, slot_floats};
    std::vector<int32_t> positions(tokens);
    std::iota(positions.begin(), positions.end(), 0);
    kernels::StepMeta m;
    m.num_seqs = 1;
    m.num_tokens = tokens;
    m.max_query_len = tokens;
    m.max_context_len = tokens;
    m.positions = bench.Ints(positions);
    m.cu_seqlens_q = bench.Ints({0, tokens});
    m.state_slots = bench.Ints({0});
    float* conv_out = bench.Random(int64_t{tokens} * dn.conv_dim());
    float* gg = bench.Random(int64_t{tokens} * dn.num_value_heads, 0.1f);
    float* beta = bench.Random(int64_t{tokens} * dn.num_value_heads, 0.1f);
    float* out = static_cast<float*>(bench.Raw(int64_t{tokens} * dn.value_dim() * 4));
    const double t = Time(b, [&] { b.DeltaRule(conv_out, gg, beta, m, dn, state, out); });
    // The chunked form's FLOPs (C = 64) as FLA counts them, roughly 4 t dk dv per head + the
    // intra-chunk products: 2 t (C dk + C dv + 2 dk dv) per head.
    const double flops = 2.0 * tokens * dn.num_value_heads *
                         (64.0 * dn.key_head_dim + 64.0 * dn.value_head_dim +
                          2.0 * dn.key_head_dim * dn.value_head_dim);
    add("delta_rule_prefill_8k_ms", t * 1e3);
    add("delta_rule_prefill_vs_fla_0.47ms", t * 1e3 / 0.47);
    add("delta_rule_prefill_share_of_gemm", flops / t / gemm_flops);
  }

  // ---- prefill Linear: 8192 tokens x in_proj_qkvz-like [12288, 2048] bf16
  {
    const int64_t m = 8192, n = 12288, k = 2048;
    const kernels::Matrix w{DType::kBF16, bench.RandomBf16(n * k, 0.02f), n, k};
    float* x = bench.Random(m * k);
    float* y = static_cast<float*>(bench.Raw(m * n * 4));
    const double t = Time(b, [&] { b.Linear(x, m, w, y); });
    add("prefill_linear_TFLOPs", 2.0 * m * n * k / t / 1e12);
    add("prefill_linear_share_of_gemm", 2.0 * m * n * k / t / gemm_flops);
  }

  // ---- grouped expert MLP at decode: 64 tokens, top 10 of 512 experts, hidden 2048, inter 512
  {
    const int64_t experts = 512, hidden = 2048, inter = 512, tokens = 64, top_k = 10;
    std::vector<kernels::ExpertMatrices> w(experts);
    for (auto& e : w) {
      e.gate = {DType::kBF16, bench.RandomBf16(inter * hidden, 0.02f), inter, hidden};
      e.up = {DType::kBF16, bench.RandomBf16(inter * hidden, 0.02f), inter, hidden};
      e.down = {DType::kBF16, bench.RandomBf16(hidden * inter, 0.02f), hidden, inter};
    }
    std::vector<int64_t> counts(experts, 0);
    std::uniform_int_distribution<int64_t> pick(0, experts - 1);
    for (int64_t i = 0; i < tokens * top_k; ++i) ++counts[pick(bench.rng)];
    std::vector<int64_t> offsets(experts + 1, 0);
    int64_t active = 0;
    for (int64_t e = 0; e < experts; ++e) {
      offsets[e + 1] = offsets[e] + counts[e];
      active += counts[e] > 0;
    }
    const int64_t pairs = offsets[experts];
    float* xs = bench.Random(pairs * hidden);
    float* scratch = static_cast<float*>(bench.Raw(2 * pairs * inter * 4));
    float* ys = static_cast<float*>(bench.Raw(pairs * hidden * 4));
    const double t =
        Time(b, [&] { b.GroupedExpertMlp(xs, offsets.data(), experts, w.data(), scratch, ys); });
    const double bound = active * 3.0 * inter * hidden * 2 / (copy_bw / 2);  // weights read once
    add("grouped_mlp_decode_ms", t * 1e3);
    add("grouped_mlp_decode_x_memory_bound", t / bound);
    add("grouped_mlp_active_experts", static_cast<double>(active));
  }
  json += "}";
  std::printf("%s\n", json.c_str());
  return 0;
}

}  // namespace
}  // namespace nextserve

int main(int argc, char** argv) {
  return nextserve::Main(argc, argv);
}
