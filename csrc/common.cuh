// Shared by the .cu files: launch checks and small index helpers. No torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace adaptkern {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Returns the first error of the launch just made (configuration or asynchronous).
inline cudaError_t last_launch_error() { return cudaGetLastError(); }

}  // namespace adaptkern
