// Packing of variable-length sequences: rows of a padded (batch, padded_len, row) buffer
// to/from a packed (total, row) buffer, driven by cu_seqlens (int32, batch + 1).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace adaptkern {

// packed[cu[b] + r] = padded[b, r] for r < cu[b+1] - cu[b]. max_seqlen bounds the lengths.
cudaError_t pack_rows(const void* padded, void* packed, const int32_t* cu_seqlens, int64_t batch,
                      int64_t padded_len, int64_t max_seqlen, int64_t row_bytes, cudaStream_t stream);

// padded[b, r] = packed[cu[b] + r] for r < length, zeros for length <= r < padded_len.
cudaError_t unpack_rows(const void* packed, void* padded, const int32_t* cu_seqlens, int64_t batch,
                        int64_t padded_len, int64_t row_bytes, cudaStream_t stream);

}  // namespace adaptkern
