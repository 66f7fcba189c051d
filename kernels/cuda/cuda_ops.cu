#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_ops.h"

namespace nextserve::kernels::cuda {
namespace {

constexpr int kWarp = 32;

__device__ float WarpSum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per row; the block reduces the sum of squares through shared memory.
__global__ void RmsNormKernel(const float* x, int64_t dim, const float* w, float eps, bool one_plus,
                              float* y) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float partial[32];
  ss = WarpSum(ss);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = ss;
  __syncthreads();
  if (threadIdx.x < kWarp) {
    float v = threadIdx.x < blockDim.x / kWarp ? partial[threadIdx.x] : 0.0f;
    v = WarpSum(v);
    if (threadIdx.x == 0) partial[0] = v;
  }
  __syncthreads();
  const float inv = rsqrtf(partial[0] / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = xr[i] * inv * (one_plus ? 1.0f + w[i] : w[i]);
  }
}

__global__ void SiluMulKernel(const float* gate, const float* up, int64_t n, float* y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = gate[i] / (1.0f + __expf(-gate[i])) * up[i];
}

template <typename T>
__device__ float ToFloat(T v);
template <>
__device__ float ToFloat<float>(float v) {
  return v;
}
template <>
__device__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ float ToFloat<__half>(__half v) {
  return __half2float(v);
}

// One warp per (row of x, output feature): streams the weight row in its stored dtype.
template <typename T>
__global__ void LinearKernel(const float* x, int64_t m, const T* w, int64_t n, int64_t k, float* y,
                             bool accumulate) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= m * n) return;
  const int64_t r = warp / n, j = warp % n;
  float s = 0;
  for (int64_t i = lane; i < k; i += kWarp) s += x[r * k + i] * ToFloat(w[j * k + i]);
  s = WarpSum(s);
  if (lane == 0) y[r * n + j] = accumulate ? y[r * n + j] + s : s;
}

// One block per value head, one thread per value column: the column of S lives in registers'
// worth of local memory, reductions over dk happen per thread.
__global__ void DeltaRuleRecurrentKernel(const float* q, const float* k, const float* v,
                                         const float* g, const float* beta, int64_t t, int64_t nk,
                                         int64_t nv, int64_t dk, int64_t dv, float* state,
                                         float* out) {
  const int64_t h = blockIdx.x, c = threadIdx.x, kh = h / (nv / nk);
  if (c >= dv) return;
  float* S = state + h * dk * dv;
  for (int64_t i = 0; i < t; ++i) {
    const float* qi = q + (i * nk + kh) * dk;
    const float* ki = k + (i * nk + kh) * dk;
    const float a = __expf(g[i * nv + h]), b = beta[i * nv + h];
    float m = 0;
    for (int64_t r = 0; r < dk; ++r) {
      S[r * dv + c] *= a;
      m += S[r * dv + c] * ki[r];
    }
    const float delta = b * (v[(i * nv + h) * dv + c] - m);
    float o = 0;
    for (int64_t r = 0; r < dk; ++r) {
      S[r * dv + c] += ki[r] * delta;
      o += S[r * dv + c] * qi[r];
    }
    out[(i * nv + h) * dv + c] = o;
  }
}

bool Ok() {
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace

bool DeviceAvailable(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why) *why = err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device";
    return false;
  }
  return true;
}

bool RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps, bool one_plus,
             float* y) {
  if (rows > 0) RmsNormKernel<<<static_cast<unsigned>(rows), 256>>>(x, dim, w, eps, one_plus, y);
  return Ok();
}

bool SiluMul(const float* gate, const float* up, int64_t n, float* y) {
  if (n > 0) SiluMulKernel<<<static_cast<unsigned>((n + 255) / 256), 256>>>(gate, up, n, y);
  return Ok();
}

bool Linear(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate) {
  const int64_t warps = m * w.rows;
  if (warps == 0) return true;
  const unsigned blocks = static_cast<unsigned>((warps * kWarp + 255) / 256);
  switch (w.dtype) {
    case DType::kF32:
      LinearKernel<<<blocks, 256>>>(x, m, static_cast<const float*>(w.data), w.rows, w.cols, y,
                                    accumulate);
      break;
    case DType::kBF16:
      LinearKernel<<<blocks, 256>>>(x, m, static_cast<const __nv_bfloat16*>(w.data), w.rows, w.cols,
                                    y, accumulate);
      break;
    case DType::kF16:
      LinearKernel<<<blocks, 256>>>(x, m, static_cast<const __half*>(w.data), w.rows, w.cols, y,
                                    accumulate);
      break;
    default:
      return false;
  }
  return Ok();
}

bool DeltaRuleRecurrent(const float* q, const float* k, const float* v, const float* g,
                        const float* beta, int64_t t, const DeltaNetShape& s, float* state,
                        float* out) {
  if (s.value_head_dim > 1024) return false;
  DeltaRuleRecurrentKernel<<<static_cast<unsigned>(s.num_value_heads),
                             static_cast<unsigned>(s.value_head_dim)>>>(
      q, k, v, g, beta, t, s.num_key_heads, s.num_value_heads, s.key_head_dim, s.value_head_dim,
      state, out);
  return Ok();
}

}  // namespace nextserve::kernels::cuda
