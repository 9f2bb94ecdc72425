// Patch gather / scatter between images (any strides, one table row per image) and the
// packed patch matrix (tokens, C*ph*pw). Dtype-agnostic: elements move as 1/2/4/8-byte words.
#include <algorithm>

#include "common.cuh"
#include "patch_embed.h"

namespace adaptkern {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = 1 << 20;  // token chunks along x; blocks stride over the rest
constexpr int64_t kMaxGridY = 65535;

// grid.y strides over images, grid.x over chunks of `chunk` tokens of one image. The threads
// of a block walk the chunk's (token, column) elements column fastest, so writes to the patch
// matrix are coalesced and reads follow the image's rows pw elements at a time. Indices
// within a chunk are 32-bit (the host keeps chunk * patch_numel < 2^31); addresses are 64-bit.
template <typename Word, bool kGather>
__global__ void patch_copy_kernel(const int64_t* __restrict__ table, int64_t num_images, int patch_h, int patch_w,
                                  int patch_numel, int chunk, Word* __restrict__ patches) {
  const int patch_area = patch_h * patch_w;
  for (int64_t image = blockIdx.y; image < num_images; image += gridDim.y) {
    const int64_t* row = table + image * kPatchTableCols;
    Word* pixels = reinterpret_cast<Word*>(static_cast<uintptr_t>(row[kPatchAddress]));
    const int64_t stride_c = row[kPatchStrideC];
    const int64_t stride_h = row[kPatchStrideH];
    const int64_t stride_w = row[kPatchStrideW];
    const int64_t first = row[kPatchFirstToken];
    const int64_t tokens = row[kPatchTokens];
    const int64_t grid_w = row[kPatchGridW];
    for (int64_t start = static_cast<int64_t>(blockIdx.x) * chunk; start < tokens;
         start += static_cast<int64_t>(gridDim.x) * chunk) {
      const int count = static_cast<int>(tokens - start < chunk ? tokens - start : chunk) * patch_numel;
      for (int e = threadIdx.x; e < count; e += blockDim.x) {
        const int local = e / patch_numel;
        const int col = e - local * patch_numel;
        const int chan = col / patch_area;
        const int i = (col - chan * patch_area) / patch_w;
        const int j = col - chan * patch_area - i * patch_w;
        const int64_t token = start + local;
        const int64_t patch_row = token / grid_w;
        const int64_t patch_col = token - patch_row * grid_w;
        const int64_t pixel =
            chan * stride_c + (patch_row * patch_h + i) * stride_h + (patch_col * patch_w + j) * stride_w;
        const int64_t packed = (first + token) * patch_numel + col;
        if (kGather) {
          patches[packed] = pixels[pixel];
        } else {
          pixels[pixel] = patches[packed];
        }
      }
    }
  }
}

template <bool kGather>
cudaError_t patch_copy(const int64_t* table, int64_t num_images, int64_t max_tokens, int64_t channels,
                       int64_t patch_h, int64_t patch_w, void* patches, int64_t element_bytes,
                       cudaStream_t stream) {
  const int64_t patch_numel = channels * patch_h * patch_w;
  if (num_images == 0 || max_tokens == 0 || patch_numel == 0) return cudaSuccess;
  if (patch_numel > (int64_t{1} << 30)) return cudaErrorInvalidValue;
  // About 8 elements per thread and chunk; at least one token.
  const int64_t chunk = std::max<int64_t>(1, 8 * kThreads / patch_numel);
  const int64_t blocks = std::min(kMaxGridX, ceil_div(max_tokens, chunk));
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(std::min(num_images, kMaxGridY)));
#define ADAPTKERN_PATCH_COPY(WORD)                                                                    \
  patch_copy_kernel<WORD, kGather><<<grid, kThreads, 0, stream>>>(                                    \
      table, num_images, static_cast<int>(patch_h), static_cast<int>(patch_w), static_cast<int>(patch_numel), \
      static_cast<int>(chunk), static_cast<WORD*>(patches))
  switch (element_bytes) {
    case 8: ADAPTKERN_PATCH_COPY(uint64_t); break;
    case 4: ADAPTKERN_PATCH_COPY(uint32_t); break;
    case 2: ADAPTKERN_PATCH_COPY(uint16_t); break;
    case 1: ADAPTKERN_PATCH_COPY(uint8_t); break;
    default: return cudaErrorInvalidValue;
  }
#undef ADAPTKERN_PATCH_COPY
  return last_launch_error();
}

}  // namespace

cudaError_t patchify(const int64_t* table, int64_t num_images, int64_t max_tokens, int64_t channels,
                     int64_t patch_h, int64_t patch_w, void* patches, int64_t element_bytes, cudaStream_t stream) {
  return patch_copy<true>(table, num_images, max_tokens, channels, patch_h, patch_w, patches, element_bytes,
                          stream);
}

cudaError_t unpatchify(const int64_t* table, int64_t num_images, int64_t max_tokens, int64_t channels,
                       int64_t patch_h, int64_t patch_w, const void* patches, int64_t element_bytes,
                       cudaStream_t stream) {
  // The scatter only reads the patch matrix; the kernel is shared with the gather.
  return patch_copy<false>(table, num_images, max_tokens, channels, patch_h, patch_w, const_cast<void*>(patches),
                           element_bytes, stream);
}

}  // namespace adaptkern
