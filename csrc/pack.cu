// Row copies between padded and packed layouts. Dtype-agnostic: rows are moved as words of
// the widest size (16, 8, 4, 2 or 1 bytes) that divides the row and both base addresses.
#include <algorithm>

#include "common.cuh"
#include "pack.h"

namespace adaptkern {
namespace {

constexpr int kThreads = 256;

struct alignas(16) Word16 {
  uint4 v;
};

// Blocks tile (rows, sequences): grid.x over row tiles, grid.y strides over sequences
// (gridDim.y is capped at 65535, batches may be larger).
template <typename Word, bool kPack>
__global__ void copy_rows_kernel(const Word* __restrict__ src, Word* __restrict__ dst,
                                 const int32_t* __restrict__ cu_seqlens, int64_t batch, int64_t padded_len,
                                 int64_t rows_per_block, int64_t row_words) {
  const int64_t row_begin = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const int64_t start = cu_seqlens[b];
    const int64_t length = cu_seqlens[b + 1] - start;
    // Packing only visits real rows; unpacking also writes the zero padding.
    const int64_t row_end = min(row_begin + rows_per_block, kPack ? length : padded_len);
    const int64_t words = (row_end - row_begin) * row_words;
    for (int64_t i = threadIdx.x; i < words; i += blockDim.x) {
      const int64_t r = row_begin + i / row_words;
      const int64_t c = i % row_words;
      const int64_t padded_index = (b * padded_len + r) * row_words + c;
      const int64_t packed_index = (start + r) * row_words + c;
      if (kPack) {
        dst[packed_index] = src[padded_index];
      } else {
        dst[padded_index] = r < length ? src[packed_index] : Word{};
      }
    }
  }
}

int word_bytes(const void* a, const void* b, int64_t row_bytes) {
  const auto bits = reinterpret_cast<std::uintptr_t>(a) | reinterpret_cast<std::uintptr_t>(b) |
                    static_cast<std::uintptr_t>(row_bytes);
  for (int w = 16; w > 1; w /= 2) {
    if (bits % w == 0) return w;
  }
  return 1;
}

template <bool kPack>
cudaError_t copy_rows(const void* src, void* dst, const int32_t* cu_seqlens, int64_t batch,
                      int64_t padded_len, int64_t rows_bound, int64_t row_bytes, cudaStream_t stream) {
  if (batch == 0 || rows_bound == 0 || row_bytes == 0) return cudaSuccess;
  const int w = word_bytes(src, dst, row_bytes);
  const int64_t row_words = row_bytes / w;
  // About 4 words per thread per block; at least one row.
  const int64_t rows_per_block = std::max<int64_t>(1, (4 * kThreads) / std::max<int64_t>(row_words, 1));
  const dim3 grid(static_cast<unsigned>(ceil_div(rows_bound, rows_per_block)),
                  static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
#define ADAPTKERN_COPY(WORD)                                                                   \
  copy_rows_kernel<WORD, kPack><<<grid, kThreads, 0, stream>>>(                                \
      static_cast<const WORD*>(src), static_cast<WORD*>(dst), cu_seqlens, batch, padded_len,   \
      rows_per_block, row_words)
  switch (w) {
    case 16: ADAPTKERN_COPY(Word16); break;
    case 8: ADAPTKERN_COPY(uint64_t); break;
    case 4: ADAPTKERN_COPY(uint32_t); break;
    case 2: ADAPTKERN_COPY(uint16_t); break;
    default: ADAPTKERN_COPY(uint8_t); break;
  }
#undef ADAPTKERN_COPY
  return last_launch_error();
}

}  // namespace

cudaError_t pack_rows(const void* padded, void* packed, const int32_t* cu_seqlens, int64_t batch,
                      int64_t padded_len, int64_t max_seqlen, int64_t row_bytes, cudaStream_t stream) {
  return copy_rows<true>(padded, packed, cu_seqlens, batch, padded_len, max_seqlen, row_bytes, stream);
}

cudaError_t unpack_rows(const void* packed, void* padded, const int32_t* cu_seqlens, int64_t batch,
                        int64_t padded_len, int64_t row_bytes, cudaStream_t stream) {
  return copy_rows<false>(packed, padded, cu_seqlens, batch, padded_len, padded_len, row_bytes, stream);
}

}  // namespace adaptkern
