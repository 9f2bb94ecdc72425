// Variable-length attention on CPU: a tiled flash-attention forward and backward over packed
// (total, heads, head_dim) tensors, built on first use by adaptkern.cpu.native.
//
// Why not PyTorch's CPU flash kernel alone: it splits keys in blocks of 512, so for sequences
// up to 512 tokens a causal call computes every (query, key) pair, and its backward zero-fills
// three gradient buffers before accumulating into them. Here queries and keys are cut in tiles
// of TILE rows, a tile pair that the mask hides entirely is skipped (causal and sliding
// windows, bottom-right aligned as in DESIGN.md), and every output row is written once.
// Each matrix product is one BLAS gemm on the packed layout (row stride heads * head_dim), so
// nothing is copied or padded; all sequences and heads are one parallel loop.
//
// Semantics are adaptkern.reference.varlen_attention's: query i of a sequence with Lq queries
// and Lk keys sees key j iff i + Lk - Lq - left <= j <= i + Lk - Lq + right (-1: unbounded); a
// row that sees no key gets out 0, lse -inf and no gradient; query head h reads kv head
// h / (Hq / Hkv). The backward gives dk and dv per query head (Python sums a GQA group).
//
// No autograd and no tensors here: raw pointers to contiguous buffers, like adaptkern._C.

#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
// The Fortran BLAS symbols of the BLAS torch links (MKL in the x86 wheels); column-major.
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*);
}

namespace {

constexpr int64_t TILE = 64;

// Row-major C (m x n) = alpha op(A) op(B) + beta C, as the column-major product C^T = op(B)^T op(A)^T.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  if constexpr (sizeof(T) == 4) {
    sgemm_(&tb, &ta, &ni, &mi, &ki, &alpha, b, &lb, a, &la, &beta, c, &lc);
  } else {
    dgemm_(&tb, &ta, &ni, &mi, &ki, &alpha, b, &lb, a, &la, &beta, c, &lc);
  }
}

// exp for float32, vectorisable (the loops below are `omp simd`): 2^n * p(r), r = x - n ln 2 in
// [-ln2/2, ln2/2], p a degree-6 Taylor polynomial (relative error < 3e-7 there). Below the
// smallest normal result it returns 0; NaN stays NaN; above 88 it saturates at e^88 (scores
// minus their row maximum are <= 0, so only an inconsistent lse gets there).
inline float exp_approx(float x) {
  x = x > 88.f ? 88.f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  float scale;
  const int32_t bits = (e < 1 ? 1 : e) << 23;
  __builtin_memcpy(&scale, &bits, sizeof(float));
  return x < -87.3f ? 0.f : p * scale;
}

inline float exp_t(float x) { return exp_approx(x); }
inline double exp_t(double x) { return std::exp(x); }

struct Mask {
  int64_t len_q, len_k, left, right;
  // First and one-past-last key that query row r sees (empty when lo >= hi).
  int64_t lo(int64_t r) const { return left < 0 ? 0 : std::max<int64_t>(0, r + len_k - len_q - left); }
  int64_t hi(int64_t r) const { return right < 0 ? len_k : std::min<int64_t>(len_k, r + len_k - len_q + right + 1); }
};

struct Task {
  int64_t seq, head, tile, cost;
};

// Runs body(task) for every task on torch's intra-op threads, the costliest first, each thread
// taking the next task when it finishes one (lengths vary, so a static split would idle).
template <typename F>
void run_tasks(std::vector<Task>& tasks, const F& body) {
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  std::atomic<int64_t> next{0};
  const int64_t count = tasks.size();
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < count; i = next++) body(tasks[i]);
  });
}

// Key tiles [first, last] that some row of query tile [r0, r0 + rows) sees; first > last if none.
inline void key_tiles(const Mask& mask, int64_t r0, int64_t rows, int64_t& first, int64_t& last) {
  const int64_t lo = mask.lo(r0), hi = mask.hi(r0 + rows - 1);  // both non-decreasing in r
  if (lo >= hi) {
    first = 1, last = 0;
    return;
  }
  first = lo / TILE, last = (hi - 1) / TILE;
}

template <typename T>
struct Args {
  const T *q, *k, *v;
  const int32_t *cu_q, *cu_k;
  int64_t heads, kv_heads, dim;
  T scale;
  int64_t left, right;

  Mask mask(int64_t s) const { return {cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s], left, right}; }
  const T* q_row(int64_t s, int64_t r, int64_t h) const { return q + ((cu_q[s] + r) * heads + h) * dim; }
  const T* k_row(int64_t s, int64_t r, int64_t h) const {
    return k + ((cu_k[s] + r) * kv_heads + h / (heads / kv_heads)) * dim;
  }
  const T* v_row(int64_t s, int64_t r, int64_t h) const {
    return v + ((cu_k[s] + r) * kv_heads + h / (heads / kv_heads)) * dim;
  }
};

// Visible columns [a, b) of row r in the key tile starting at c0 with `cols` keys;
// 0 <= a <= b <= cols (a == b: none).
inline void visible(const Mask& mask, int64_t r, int64_t c0, int64_t cols, int64_t& a, int64_t& b) {
  a = std::min<int64_t>(std::max<int64_t>(mask.lo(r) - c0, 0), cols);
  b = std::max<int64_t>(std::min<int64_t>(mask.hi(r) - c0, cols), a);
}

template <typename T>
void forward(const Args<T>& args, int64_t num_seqs, int64_t total_q, T* out, T* lse) {
  const int64_t H = args.heads, D = args.dim, q_ld = H * D, kv_ld = args.kv_heads * D;
  std::vector<Task> tasks;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const Mask mask = args.mask(s);
    for (int64_t t = 0; t * TILE < mask.len_q; ++t) {
      int64_t first, last;
      key_tiles(mask, t * TILE, std::min(TILE, mask.len_q - t * TILE), first, last);
      for (int64_t h = 0; h < H; ++h) tasks.push_back({s, h, t, 1 + std::max<int64_t>(0, last - first + 1)});
    }
  }
  const T neg_inf = -std::numeric_limits<T>::infinity();
  run_tasks(tasks, [&](const Task& task) {
    thread_local std::vector<T> scores, acc, row_max, row_sum;
    scores.resize(TILE * TILE), acc.resize(TILE * D), row_max.resize(TILE), row_sum.resize(TILE);
    const Mask mask = args.mask(task.seq);
    const int64_t r0 = task.tile * TILE, rows = std::min(TILE, mask.len_q - r0), h = task.head;
    std::fill(acc.begin(), acc.begin() + rows * D, T(0));
    std::fill(row_max.begin(), row_max.end(), neg_inf);
    std::fill(row_sum.begin(), row_sum.end(), T(0));
    int64_t first, last;
    key_tiles(mask, r0, rows, first, last);
    const T* q = args.q_row(task.seq, r0, h);
    for (int64_t j = first; j <= last; ++j) {
      const int64_t c0 = j * TILE, cols = std::min(TILE, mask.len_k - c0);
      T* s = scores.data();
      gemm<T>(false, true, rows, cols, D, args.scale, q, q_ld, args.k_row(task.seq, c0, h), kv_ld, T(0), s, cols);
      for (int64_t r = 0; r < rows; ++r, s += cols) {
        int64_t a, b;
        visible(mask, r0 + r, c0, cols, a, b);
        if (a >= b) {
          std::fill(s, s + cols, T(0));
          continue;
        }
        T m = row_max[r];
        for (int64_t c = a; c < b; ++c) m = s[c] > m ? s[c] : m;
        T sum = 0;
        std::fill(s, s + a, T(0));
#pragma omp simd reduction(+ : sum)
        for (int64_t c = a; c < b; ++c) {
          s[c] = exp_t(s[c] - m);
          sum += s[c];
        }
        std::fill(s + b, s + cols, T(0));
        if (row_max[r] != m) {
          const T shrink = row_max[r] == neg_inf ? T(0) : exp_t(row_max[r] - m);
          T* o = acc.data() + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) o[d] *= shrink;
          row_sum[r] *= shrink;
          row_max[r] = m;
        }
        row_sum[r] += sum;
      }
      gemm<T>(false, false, rows, D, cols, T(1), scores.data(), cols, args.v_row(task.seq, c0, h), kv_ld, T(1),
              acc.data(), D);
    }
    const int64_t row = args.cu_q[task.seq] + r0;
    for (int64_t r = 0; r < rows; ++r) {
      T* o = out + ((row + r) * H + h) * D;
      const bool seen = row_sum[r] > 0 || std::isnan(row_sum[r]);
      const T inv = seen ? T(1) / row_sum[r] : T(0);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = acc[r * D + d] * inv;
      lse[h * total_q + row + r] = seen ? row_max[r] + std::log(row_sum[r]) : neg_inf;
    }
  });
}

template <typename T>
void backward(const Args<T>& args, int64_t num_seqs, int64_t total_q, const T* dout, const T* out, const T* lse,
              const T* dlse, T* dq, T* dk, T* dv) {
  const int64_t H = args.heads, D = args.dim, q_ld = H * D, kv_ld = args.kv_heads * D;
  std::vector<Task> tasks;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const Mask mask = args.mask(s);
    int64_t cost = 1 + mask.len_k / TILE;
    for (int64_t t = 0; t * TILE < mask.len_q; ++t) {
      int64_t first, last;
      key_tiles(mask, t * TILE, std::min(TILE, mask.len_q - t * TILE), first, last);
      cost += std::max<int64_t>(0, last - first + 1);
    }
    for (int64_t h = 0; h < H; ++h) tasks.push_back({s, h, 0, cost});
  }
  run_tasks(tasks, [&](const Task& task) {
    thread_local std::vector<T> probs, dprobs, dq_tile, dk_acc, dv_acc, delta;
    const Mask mask = args.mask(task.seq);
    const int64_t h = task.head, q0 = args.cu_q[task.seq], k0 = args.cu_k[task.seq];
    probs.resize(TILE * TILE), dprobs.resize(TILE * TILE), dq_tile.resize(TILE * D);
    dk_acc.assign(mask.len_k * D, T(0)), dv_acc.assign(mask.len_k * D, T(0)), delta.resize(mask.len_q);
    // delta_r = rowsum(dout * out) - dlse: d loss / d score_rc = p_rc (dp_rc - delta_r).
    for (int64_t r = 0; r < mask.len_q; ++r) {
      const T* g = dout + ((q0 + r) * H + h) * D;
      const T* o = out + ((q0 + r) * H + h) * D;
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < D; ++d) sum += g[d] * o[d];
      delta[r] = sum - (dlse ? dlse[h * total_q + q0 + r] : T(0));
    }
    for (int64_t r0 = 0; r0 < mask.len_q; r0 += TILE) {
      const int64_t rows = std::min(TILE, mask.len_q - r0);
      const T* q = args.q_row(task.seq, r0, h);
      const T* g = dout + ((q0 + r0) * H + h) * D;
      std::fill(dq_tile.begin(), dq_tile.begin() + rows * D, T(0));
      int64_t first, last;
      key_tiles(mask, r0, rows, first, last);
      for (int64_t j = first; j <= last; ++j) {
        const int64_t c0 = j * TILE, cols = std::min(TILE, mask.len_k - c0);
        const T* k = args.k_row(task.seq, c0, h);
        const T* v = args.v_row(task.seq, c0, h);
        T* p = probs.data();
        gemm<T>(false, true, rows, cols, D, args.scale, q, q_ld, k, kv_ld, T(0), p, cols);
        for (int64_t r = 0; r < rows; ++r, p += cols) {
          int64_t a, b;
          visible(mask, r0 + r, c0, cols, a, b);
          const T row_lse = lse[h * total_q + q0 + r0 + r];
          std::fill(p, p + a, T(0));
#pragma omp simd
          for (int64_t c = a; c < b; ++c) p[c] = exp_t(p[c] - row_lse);
          std::fill(p + b, p + cols, T(0));
        }
        gemm<T>(true, false, cols, D, rows, T(1), probs.data(), cols, g, q_ld, T(1), dv_acc.data() + c0 * D, D);
        gemm<T>(false, true, rows, cols, D, T(1), g, q_ld, v, kv_ld, T(0), dprobs.data(), cols);
        for (int64_t r = 0; r < rows; ++r) {
          T* pr = probs.data() + r * cols;
          const T* dpr = dprobs.data() + r * cols;
          const T dr = delta[r0 + r];
#pragma omp simd
          for (int64_t c = 0; c < cols; ++c) pr[c] = pr[c] == T(0) ? T(0) : pr[c] * (dpr[c] - dr);
        }
        gemm<T>(false, false, rows, D, cols, args.scale, probs.data(), cols, k, kv_ld, T(1), dq_tile.data(), D);
        gemm<T>(true, false, cols, D, rows, args.scale, probs.data(), cols, q, q_ld, T(1), dk_acc.data() + c0 * D, D);
      }
      for (int64_t r = 0; r < rows; ++r)
        std::copy(dq_tile.data() + r * D, dq_tile.data() + (r + 1) * D, dq + ((q0 + r0 + r) * H + h) * D);
    }
    for (int64_t r = 0; r < mask.len_k; ++r) {
      std::copy(dk_acc.data() + r * D, dk_acc.data() + (r + 1) * D, dk + ((k0 + r) * H + h) * D);
      std::copy(dv_acc.data() + r * D, dv_acc.data() + (r + 1) * D, dv + ((k0 + r) * H + h) * D);
    }
  });
}

template <typename T>
Args<T> make_args(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t cu_q, uintptr_t cu_k, int64_t heads,
                  int64_t kv_heads, int64_t dim, double scale, int64_t left, int64_t right) {
  return {reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(k), reinterpret_cast<const T*>(v),
          reinterpret_cast<const int32_t*>(cu_q), reinterpret_cast<const int32_t*>(cu_k), heads, kv_heads, dim,
          static_cast<T>(scale), left, right};
}

// The kernels index memory by cu_seqlens: out-of-range offsets would read or write outside
// the tensors, so they are checked here even when adaptkern's own checks are switched off.
void check_offsets(const char* name, uintptr_t cu, int64_t num_seqs, int64_t total) {
  const int32_t* offsets = reinterpret_cast<const int32_t*>(cu);
  bool valid = offsets[0] == 0 && offsets[num_seqs] == total;
  for (int64_t s = 0; valid && s < num_seqs; ++s) valid = offsets[s] <= offsets[s + 1];
  if (!valid) {
    throw std::invalid_argument(std::string("adaptkern cpu attention kernel: ") + name +
                                " must start at 0, never decrease and end at the tensor's length " +
                                std::to_string(total));
  }
}

template <typename T>
void forward_typed(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t cu_q, uintptr_t cu_k, int64_t num_seqs,
                   int64_t total_q, int64_t heads, int64_t kv_heads, int64_t dim, double scale, int64_t left,
                   int64_t right, uintptr_t out, uintptr_t lse) {
  forward(make_args<T>(q, k, v, cu_q, cu_k, heads, kv_heads, dim, scale, left, right), num_seqs, total_q,
          reinterpret_cast<T*>(out), reinterpret_cast<T*>(lse));
}

template <typename T>
void backward_typed(uintptr_t dout, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
                    uintptr_t dlse, uintptr_t cu_q, uintptr_t cu_k, int64_t num_seqs, int64_t total_q, int64_t heads,
                    int64_t kv_heads, int64_t dim, double scale, int64_t left, int64_t right, uintptr_t dq,
                    uintptr_t dk, uintptr_t dv) {
  backward(make_args<T>(q, k, v, cu_q, cu_k, heads, kv_heads, dim, scale, left, right), num_seqs, total_q,
           reinterpret_cast<const T*>(dout), reinterpret_cast<const T*>(out), reinterpret_cast<const T*>(lse),
           reinterpret_cast<const T*>(dlse), reinterpret_cast<T*>(dq), reinterpret_cast<T*>(dk),
           reinterpret_cast<T*>(dv));
}

}  // namespace

// q (total_q, heads, dim), k / v (total_k, kv_heads, dim), out like q, lse (heads, total_q): all
// contiguous, float32 or float64 (`is_double`), cu_seqlens int32; every row of out and lse is written.
void varlen_attention_forward(bool is_double, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t cu_q, uintptr_t cu_k,
                              int64_t num_seqs, int64_t total_q, int64_t total_k, int64_t heads, int64_t kv_heads,
                              int64_t dim, double scale, int64_t left, int64_t right, uintptr_t out, uintptr_t lse) {
  check_offsets("cu_seqlens_q", cu_q, num_seqs, total_q);
  check_offsets("cu_seqlens_k", cu_k, num_seqs, total_k);
  pybind11::gil_scoped_release release;
  (is_double ? forward_typed<double> : forward_typed<float>)(q, k, v, cu_q, cu_k, num_seqs, total_q, heads, kv_heads,
                                                             dim, scale, left, right, out, lse);
}

// Gradients of the forward: dq like q; dk / dv (total_k, heads, dim), one slice per query head;
// dlse (heads, total_q) or 0 for none. Every row of dq, dk and dv is written.
void varlen_attention_backward(bool is_double, uintptr_t dout, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out,
                               uintptr_t lse, uintptr_t dlse, uintptr_t cu_q, uintptr_t cu_k, int64_t num_seqs,
                               int64_t total_q, int64_t total_k, int64_t heads, int64_t kv_heads, int64_t dim,
                               double scale, int64_t left, int64_t right, uintptr_t dq, uintptr_t dk, uintptr_t dv) {
  check_offsets("cu_seqlens_q", cu_q, num_seqs, total_q);
  check_offsets("cu_seqlens_k", cu_k, num_seqs, total_k);
  pybind11::gil_scoped_release release;
  (is_double ? backward_typed<double> : backward_typed<float>)(dout, q, k, v, out, lse, dlse, cu_q, cu_k, num_seqs,
                                                               total_q, heads, kv_heads, dim, scale, left, right, dq,
                                                               dk, dv);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("varlen_attention_forward", &varlen_attention_forward);
  m.def("varlen_attention_backward", &varlen_attention_backward);
}
