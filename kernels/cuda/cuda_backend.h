// The CUDA backend: kernels/backend.h on one NVIDIA GPU (device memory, one stream, cuBLASLt GEMMs,
// the kernels of cuda_kernels.cu). Built whenever nvcc is found; needs a device only to run.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace nextserve::kernels {

// FailedPrecondition with the reason (no device, driver too old, ...) when no GPU can be used.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device = 0);
// The same as a plain factory (beside MakeCpuBackend): nullptr when no GPU can be used.
std::unique_ptr<Backend> MakeCudaBackend();
// True when a CUDA device can be used; `why` says what is missing otherwise.
bool CudaBackendAvailable(std::string* why = nullptr);

}  // namespace nextserve::kernels
