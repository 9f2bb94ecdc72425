// Patchify for the patch embedding: the gather of image patches into a (tokens, C*ph*pw)
// matrix and its inverse scatter, for images of any sizes and strides in one launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace adaptkern {

// Columns of one row of the per-image table (int64, device memory): the address of pixel
// [0, 0, 0], the channel / row / column strides in elements, the image's first packed
// token, its token count and its number of patches per row.
enum PatchTableColumn : int {
  kPatchAddress = 0,
  kPatchStrideC = 1,
  kPatchStrideH = 2,
  kPatchStrideW = 3,
  kPatchFirstToken = 4,
  kPatchTokens = 5,
  kPatchGridW = 6,
  kPatchTableCols = 8,
};

// patches[first + t, (c*ph + i)*pw + j] = image[c, r*ph + i, q*pw + j] with t = r*grid_w + q,
// for every image of the table. max_tokens bounds the token counts. element_bytes: 1, 2, 4 or 8.
cudaError_t patchify(const int64_t* table, int64_t num_images, int64_t max_tokens, int64_t channels,
                     int64_t patch_h, int64_t patch_w, void* patches, int64_t element_bytes, cudaStream_t stream);

// The inverse: image[c, r*ph + i, q*pw + j] = patches[first + t, (c*ph + i)*pw + j]. Patches do
// not overlap, so every pixel of a divisible image is written exactly once.
cudaError_t unpatchify(const int64_t* table, int64_t num_images, int64_t max_tokens, int64_t channels,
                       int64_t patch_h, int64_t patch_w, const void* patches, int64_t element_bytes,
                       cudaStream_t stream);

}  // namespace adaptkern
