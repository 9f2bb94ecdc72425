// Resampled positional-embedding interpolation (see interp_pos_embed.h).
//
// Forward: one warp per output row (token). The warp finds its sequence by binary search
// on cu_seqlens, computes the 1-D taps of its grid row and column, spreads them into dense
// per-input-index weights in shared memory (clamped border taps add up), then each lane
// sums weight_h(a) * weight_w(b) * pos[a, b, d] for its channels d.
// Backward: one block per base position (a, b) and block of channels; it walks every
// sequence's output rows and columns whose taps reach (a, b) (contiguous ranges found by
// binary search: tap windows move right as the output index grows) and accumulates in a
// fixed order. No atomics, so the result is deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "common.cuh"
#include "interp_pos_embed.h"

namespace adaptkern {
namespace {

constexpr int kWarp = 32;
constexpr int kForwardWarps = 8;
constexpr int kBackwardThreads = 128;
constexpr size_t kMaxSharedBytes = 48 * 1024;  // no opt-in needed below this

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// The 1-D kernels of PyTorch's upsampling: triangle, or Keys' cubic (a = -0.5 with
// antialias as PIL, -0.75 without as OpenCV).
__host__ __device__ __forceinline__ float filter(float x, const InterpOptions& opt) {
  x = fabsf(x);
  if (!opt.bicubic) return fmaxf(1.f - x, 0.f);
  const float a = opt.antialias ? -0.5f : -0.75f;
  if (x < 1.f) return ((a + 2.f) * x - (a + 3.f)) * x * x + 1.f;
  if (x < 2.f) return ((a * x - 5.f * a) * x + 8.f * a) * x - 4.f * a;
  return 0.f;
}

// Taps of output index o of an axis resized in_size -> out_size: tap x in [lo, lo + count)
// reads input clamp(x, 0, in_size - 1) with weight filter((x - pos) * inv) / total.
// last: the largest input index a tap may read (non-decreasing in o).
struct Window {
  int lo, count, last;
  float pos, inv, total;
};

__host__ __device__ Window axis_window(int o, int in_size, int out_size, const InterpOptions& opt, bool with_total = true) {
  const float in_f = static_cast<float>(in_size), out_f = static_cast<float>(out_size);
  const float o_f = static_cast<float>(o);
  const float scale = opt.align_corners ? (out_size > 1 ? (in_f - 1.f) / (out_f - 1.f) : 0.f) : in_f / out_f;
  const int half = opt.bicubic ? 2 : 1;
  Window w;
  if (opt.antialias) {
    const float center = scale * (o_f + 0.5f);
    const float stretch = fmaxf(scale, 1.f);
    const float support = half * stretch;
    w.lo = max(static_cast<int>(floorf(center - support + 0.5f)), 0);
    const int hi = static_cast<int>(fminf(floorf(center + support + 0.5f), in_f));
    const int cap = 2 * static_cast<int>(ceilf(support)) + 1;
    w.count = min(max(hi - w.lo, 0), cap);
    w.last = max(hi - 1, 0);
    w.pos = center - 0.5f;
    w.inv = 1.f / stretch;
    w.total = 0.f;
    if (with_total) {
      for (int k = 0; k < w.count; ++k) w.total += filter((static_cast<float>(w.lo + k) - w.pos) * w.inv, opt);
    }
    if (w.total == 0.f) w.total = 1.f;
  } else {
    float real = opt.align_corners ? scale * o_f : scale * (o_f + 0.5f) - 0.5f;
    if (!opt.bicubic) real = fmaxf(real, 0.f);
    const int fl = min(static_cast<int>(floorf(real)), in_size - 1);
    w.lo = fl - half + 1;
    w.count = 2 * half;
    w.last = min(max(fl + half, 0), in_size - 1);
    w.pos = real;
    w.inv = 1.f;
    w.total = 1.f;
  }
  return w;
}

__host__ __device__ __forceinline__ int clamp_index(int x, int in_size) { return min(max(x, 0), in_size - 1); }

__host__ __device__ __forceinline__ float tap_weight(const Window& w, int k, const InterpOptions& opt) {
  return filter((static_cast<float>(w.lo + k) - w.pos) * w.inv, opt) / w.total;
}

// Weight of input index j in the output whose taps are w (border taps clamped onto j add up).
__host__ __device__ float weight_of(int j, const Window& w, int in_size, const InterpOptions& opt) {
  if (opt.antialias) {
    return (j >= w.lo && j < w.lo + w.count) ? tap_weight(w, j - w.lo, opt) : 0.f;
  }
  float weight = 0.f;
  for (int k = 0; k < w.count; ++k) {
    if (clamp_index(w.lo + k, in_size) == j) weight += tap_weight(w, k, opt);
  }
  return weight;
}

// [begin, end): output indices in [0, n) whose taps may reach input index j.
__host__ __device__ int2 reaching(int j, int n, int in_size, const InterpOptions& opt) {
  int lo = 0, hi = n;  // first o with last(o) >= j
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (axis_window(mid, in_size, n, opt, false).last < j) lo = mid + 1; else hi = mid;
  }
  int begin = lo;
  hi = n;  // first o with max(lo(o), 0) > j
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (max(axis_window(mid, in_size, n, opt, false).lo, 0) <= j) lo = mid + 1; else hi = mid;
  }
  return make_int2(begin, lo);
}

template <typename PosT, typename OutT>
__global__ void interp_forward_kernel(const PosT* __restrict__ pos, const OutT* __restrict__ tokens,
                                      OutT* __restrict__ out, const int32_t* __restrict__ grid_sizes,
                                      const int32_t* __restrict__ cu_seqlens, int64_t num_seqs, int64_t total_rows,
                                      int base_h, int base_w, int64_t dim, int64_t num_prefix, InterpOptions opt) {
  extern __shared__ float weights[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
  float* row_w = weights + warp * (base_h + base_w);
  float* col_w = row_w + base_h;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * warps + warp; t < total_rows;
       t += static_cast<int64_t>(gridDim.x) * warps) {
    int64_t seq = 0, seq_end = num_seqs;  // cu_seqlens[seq] <= t < cu_seqlens[seq_end]
    while (seq_end - seq > 1) {
      const int64_t mid = (seq + seq_end) / 2;
      if (cu_seqlens[mid] <= t) seq = mid; else seq_end = mid;
    }
    const int64_t local = t - cu_seqlens[seq];
    if (local < num_prefix) {
      for (int64_t d = lane; d < dim; d += kWarp) out[t * dim + d] = tokens[t * dim + d];
      continue;
    }
    const int h = grid_sizes[2 * seq], w = grid_sizes[2 * seq + 1];
    const int64_t patch = local - num_prefix;
    const Window wr = axis_window(static_cast<int>(patch / w), base_h, h, opt);
    const Window wc = axis_window(static_cast<int>(patch % w), base_w, w, opt);
    for (int i = lane; i < base_h + base_w; i += kWarp) row_w[i] = 0.f;
    __syncwarp();
    if (lane == 0) {
      for (int k = 0; k < wr.count; ++k) row_w[clamp_index(wr.lo + k, base_h)] += tap_weight(wr, k, opt);
      for (int k = 0; k < wc.count; ++k) col_w[clamp_index(wc.lo + k, base_w)] += tap_weight(wc, k, opt);
    }
    __syncwarp();
    const int a0 = clamp_index(wr.lo, base_h), a1 = clamp_index(wr.lo + wr.count - 1, base_h);
    const int b0 = clamp_index(wc.lo, base_w), b1 = clamp_index(wc.lo + wc.count - 1, base_w);
    for (int64_t d = lane; d < dim; d += kWarp) {
      float acc = 0.f;
      for (int a = a0; a <= a1; ++a) {
        const float wa = row_w[a];
        if (wa == 0.f) continue;
        const PosT* row = pos + (static_cast<int64_t>(a) * base_w) * dim + d;
        float row_acc = 0.f;
        for (int b = b0; b <= b1; ++b) row_acc += col_w[b] * to_float(row[static_cast<int64_t>(b) * dim]);
        acc += wa * row_acc;
      }
      if (tokens != nullptr) acc += to_float(tokens[t * dim + d]);
      out[t * dim + d] = from_float<OutT>(acc);
    }
    __syncwarp();  // the weights are rewritten for the next row
  }
}

template <typename GradT>
__global__ void interp_backward_kernel(const GradT* __restrict__ grad, float* __restrict__ grad_pos,
                                       const int32_t* __restrict__ grid_sizes,
                                       const int32_t* __restrict__ cu_seqlens, int64_t num_seqs, int base_h,
                                       int base_w, int64_t dim, int64_t num_prefix, InterpOptions opt) {
  __shared__ float col_w[kBackwardThreads];
  const int a = blockIdx.x / base_w, b = blockIdx.x % base_w;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  float acc = 0.f;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int h = grid_sizes[2 * s], w = grid_sizes[2 * s + 1];
    const int64_t row0 = cu_seqlens[s] + num_prefix;
    const int2 rows = reaching(a, h, base_h, opt);
    const int2 cols = reaching(b, w, base_w, opt);
    for (int c0 = cols.x; c0 < cols.y; c0 += blockDim.x) {
      const int c = c0 + threadIdx.x;
      __syncthreads();  // col_w of the previous chunk is no longer read
      col_w[threadIdx.x] = c < cols.y ? weight_of(b, axis_window(c, base_w, w, opt), base_w, opt) : 0.f;
      __syncthreads();
      const int n = min(static_cast<int>(blockDim.x), cols.y - c0);
      for (int r = rows.x; r < rows.y; ++r) {
        const float wr = weight_of(a, axis_window(r, base_h, h, opt), base_h, opt);
        if (wr == 0.f || d >= dim) continue;
        const GradT* g = grad + (row0 + static_cast<int64_t>(r) * w + c0) * dim + d;
        float row_acc = 0.f;
        for (int j = 0; j < n; ++j) row_acc += col_w[j] * to_float(g[static_cast<int64_t>(j) * dim]);
        acc += wr * row_acc;
      }
    }
  }
  if (d < dim) grad_pos[(static_cast<int64_t>(a) * base_w + b) * dim + d] = acc;
}

template <typename PosT, typename OutT>
cudaError_t launch_forward(const void* pos, const void* tokens, void* out, const int32_t* grid_sizes,
                           const int32_t* cu_seqlens, int64_t num_seqs, int64_t total_rows, int base_h, int base_w,
                           int64_t dim, int64_t num_prefix, InterpOptions opt, cudaStream_t stream) {
  const size_t per_warp = static_cast<size_t>(base_h + base_w) * sizeof(float);
  const int warps = static_cast<int>(std::min<size_t>(kForwardWarps, kMaxSharedBytes / per_warp));
  if (warps < 1) return cudaErrorInvalidValue;  // a base grid this large does not fit shared memory
  const int64_t blocks = std::min<int64_t>(ceil_div(total_rows, warps), 65535LL * 32);
  interp_forward_kernel<PosT, OutT><<<static_cast<unsigned>(blocks), warps * kWarp, warps * per_warp, stream>>>(
      static_cast<const PosT*>(pos), static_cast<const OutT*>(tokens), static_cast<OutT*>(out), grid_sizes,
      cu_seqlens, num_seqs, total_rows, base_h, base_w, dim, num_prefix, opt);
  return last_launch_error();
}

template <typename PosT>
cudaError_t dispatch_out(int out_dtype, const void* pos, const void* tokens, void* out, const int32_t* grid_sizes,
                         const int32_t* cu_seqlens, int64_t num_seqs, int64_t total_rows, int base_h, int base_w,
                         int64_t dim, int64_t num_prefix, InterpOptions opt, cudaStream_t stream) {
  switch (out_dtype) {
    case kInterpFloat32:
      return launch_forward<PosT, float>(pos, tokens, out, grid_sizes, cu_seqlens, num_seqs, total_rows, base_h,
                                         base_w, dim, num_prefix, opt, stream);
    case kInterpFloat16:
      return launch_forward<PosT, __half>(pos, tokens, out, grid_sizes, cu_seqlens, num_seqs, total_rows, base_h,
                                          base_w, dim, num_prefix, opt, stream);
    case kInterpBFloat16:
      return launch_forward<PosT, __nv_bfloat16>(pos, tokens, out, grid_sizes, cu_seqlens, num_seqs, total_rows,
                                                 base_h, base_w, dim, num_prefix, opt, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t interp_pos_embed_forward(const void* pos, int pos_dtype, const void* tokens, void* out, int out_dtype,
                                     const int32_t* grid_sizes, const int32_t* cu_seqlens, int64_t num_seqs,
                                     int64_t total_rows, int64_t base_h, int64_t base_w, int64_t dim,
                                     int64_t num_prefix, InterpOptions options, cudaStream_t stream) {
  if (num_seqs == 0 || total_rows == 0 || dim == 0) return cudaSuccess;
  const int gh = static_cast<int>(base_h), gw = static_cast<int>(base_w);
  switch (pos_dtype) {
    case kInterpFloat32:
      return dispatch_out<float>(out_dtype, pos, tokens, out, grid_sizes, cu_seqlens, num_seqs, total_rows, gh, gw,
                                 dim, num_prefix, options, stream);
    case kInterpFloat16:
      return dispatch_out<__half>(out_dtype, pos, tokens, out, grid_sizes, cu_seqlens, num_seqs, total_rows, gh, gw,
                                  dim, num_prefix, options, stream);
    case kInterpBFloat16:
      return dispatch_out<__nv_bfloat16>(out_dtype, pos, tokens, out, grid_sizes, cu_seqlens, num_seqs, total_rows,
                                         gh, gw, dim, num_prefix, options, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t interp_pos_embed_backward(const void* grad, int grad_dtype, float* grad_pos, const int32_t* grid_sizes,
                                      const int32_t* cu_seqlens, int64_t num_seqs, int64_t base_h, int64_t base_w,
                                      int64_t dim, int64_t num_prefix, InterpOptions options, cudaStream_t stream) {
  if (base_h * base_w == 0 || dim == 0) return cudaSuccess;
  if (ceil_div(dim, kBackwardThreads) > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(base_h * base_w), static_cast<unsigned>(ceil_div(dim, kBackwardThreads)));
  const int gh = static_cast<int>(base_h), gw = static_cast<int>(base_w);
#define ADAPTKERN_INTERP_BWD(T)                                                                                   \
  interp_backward_kernel<T><<<grid, kBackwardThreads, 0, stream>>>(static_cast<const T*>(grad), grad_pos,       \
                                                                   grid_sizes, cu_seqlens, num_seqs, gh, gw, dim, \
                                                                   num_prefix, options)
  switch (grad_dtype) {
    case kInterpFloat32: ADAPTKERN_INTERP_BWD(float); break;
    case kInterpFloat16: ADAPTKERN_INTERP_BWD(__half); break;
    case kInterpBFloat16: ADAPTKERN_INTERP_BWD(__nv_bfloat16); break;
    default: return cudaErrorInvalidValue;
  }
#undef ADAPTKERN_INTERP_BWD
  return last_launch_error();
}

}  // namespace adaptkern
