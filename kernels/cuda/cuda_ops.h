// CUDA kernels for the ops of kernels/backend.h, checked one by one against the CPU backend
// (tests/unit/kernels/cuda_kernels_test.cc, label gpu). A CudaBackend implementing the whole
// interface is assembled from these once every op is covered. Pointers are device pointers.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/shapes.h"

namespace nextserve::kernels::cuda {

// True when a CUDA device can be used; `why` says what is missing otherwise.
bool DeviceAvailable(std::string* why = nullptr);

// Same contracts as the Backend methods of the same names. Return false on a CUDA error.
bool RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps, bool one_plus,
             float* y);
bool SiluMul(const float* gate, const float* up, int64_t n, float* y);
bool Linear(const float* x, int64_t m, const Matrix& w, float* y, bool accumulate);
// Recurrent gated delta rule over t tokens from already normalised q (scaled) and k [t, nk, dk],
// v [t, nv, dv], g and beta [t, nv]; state [nv, dk, dv] updated; out [t, nv, dv].
bool DeltaRuleRecurrent(const float* q, const float* k, const float* v, const float* g,
                        const float* beta, int64_t t, const DeltaNetShape& s, float* state,
                        float* out);

}  // namespace nextserve::kernels::cuda
