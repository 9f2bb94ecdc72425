// Resampled positional-embedding interpolation: a (base_h, base_w, dim) grid resized to each
// packed sequence's own (h, w) grid, as F.interpolate(mode=bilinear|bicubic, antialias,
// align_corners) does, optionally added to the tokens; and its gradient for the grid.
// Interpolation weights are computed in the kernels; see adaptkern/reference/interp_pos_embed.py.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace adaptkern {

// Element types of the pointers below.
enum InterpDtype : int { kInterpFloat32 = 0, kInterpFloat16 = 1, kInterpBFloat16 = 2 };

struct InterpOptions {
  bool bicubic;        // else bilinear
  bool antialias;      // widen the filter when downsampling (PyTorch / PIL)
  bool align_corners;  // as F.interpolate
};

// Sequence s covers rows [cu_seqlens[s], cu_seqlens[s+1]) of out: num_prefix rows copied
// from tokens, then grid_sizes[s] = (h, w) patch rows, row-major, that get the resampled grid
// (plus tokens when tokens != nullptr). Rows are contiguous (stride dim). Sums in float32.
cudaError_t interp_pos_embed_forward(const void* pos, int pos_dtype, const void* tokens, void* out, int out_dtype,
                                     const int32_t* grid_sizes, const int32_t* cu_seqlens, int64_t num_seqs,
                                     int64_t total_rows, int64_t base_h, int64_t base_w, int64_t dim,
                                     int64_t num_prefix, InterpOptions options, cudaStream_t stream);

// grad_pos (base_h, base_w, dim) float32 = the transposed map applied to grad's patch rows
// (same layout as the forward's out). Deterministic: one writer per element, fixed order.
cudaError_t interp_pos_embed_backward(const void* grad, int grad_dtype, float* grad_pos, const int32_t* grid_sizes,
                                      const int32_t* cu_seqlens, int64_t num_seqs, int64_t base_h, int64_t base_w,
                                      int64_t dim, int64_t num_prefix, InterpOptions options, cudaStream_t stream);

}  // namespace adaptkern
