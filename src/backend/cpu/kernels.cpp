#include "backend/cpu/kernels.h"

// GCC 12 warns about its own _mm512_reduce_add_ps; the warning is spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/bf16.h"
#include "common/error.h"
#include "common/thread_pool.h"

namespace dsv2::cpu {

namespace {

// ---------------------------------------------------------------- portable versions
template <typename W>
inline float widen(W v);
template <>
inline float widen<uint16_t>(uint16_t v) { return bf16_to_f32(v); }
template <>
inline float widen<float>(float v) { return v; }

template <typename W>
void tile_generic(const W* w, int64_t K, int64_t rows, const float* x, int64_t xs, int64_t T, float* y, int64_t ys) {
  for (int64_t r = 0; r < rows; ++r) {
    const W* wr = w + r * K;
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + t * xs;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 8 <= K; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += widen(wr[i + j]) * xt[i + j];
      float s = 0;
      for (; i < K; ++i) s += widen(wr[i]) * xt[i];
      for (int j = 0; j < 8; ++j) s += acc[j];
      y[t * ys + r] = s;
    }
  }
}

// ---------------------------------------------------------------- AVX-512 versions
#define DSV2_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

DSV2_AVX512 inline __attribute__((always_inline)) __m512 load16(const uint16_t* p, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
DSV2_AVX512 inline __attribute__((always_inline)) __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

// Up to 4 weight rows x 4 tokens per pass: each widened weight vector feeds 4 FMAs.
template <typename W, int R, int TT>
DSV2_AVX512 inline __attribute__((always_inline)) void micro(const W* w, int64_t K, const float* x, int64_t xs,
                                                              float* y, int64_t ys) {
  // The accumulators must live in registers: every loop over them is fully unrolled.
  __m512 acc[R][TT];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= K; i += 16) {
    __m512 xv[TT];
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) xv[t] = _mm512_loadu_ps(x + t * xs + i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m512 wv = load16(w + r * K + i, __mmask16(0xffff));
#pragma GCC unroll 4
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  if (i < K) {
    __mmask16 m = __mmask16((1u << (K - i)) - 1);
    __m512 xv[TT];
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + t * xs + i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m512 wv = load16(w + r * K + i, m);
#pragma GCC unroll 4
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) y[t * ys + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <typename W, int R>
DSV2_AVX512 void rows_avx512(const W* w, int64_t K, const float* x, int64_t xs, int64_t T, float* y, int64_t ys) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) micro<W, R, 4>(w, K, x + t * xs, xs, y + t * ys, ys);
  if (T - t >= 2) {
    micro<W, R, 2>(w, K, x + t * xs, xs, y + t * ys, ys);
    t += 2;
  }
  if (t < T) micro<W, R, 1>(w, K, x + t * xs, xs, y + t * ys, ys);
}

template <typename W>
DSV2_AVX512 void tile_avx512(const W* w, int64_t K, int64_t rows, const float* x, int64_t xs, int64_t T, float* y,
                             int64_t ys) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) rows_avx512<W, 4>(w + r * K, K, x, xs, T, y + r, ys);
  for (; r < rows; ++r) rows_avx512<W, 1>(w + r * K, K, x, xs, T, y + r, ys);
}

DSV2_AVX512 float dot_avx512_f(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

template <typename W>
DSV2_AVX512 void axpy_avx512(const W* w, float a, float* y, int64_t n) {
  __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512 yv = _mm512_maskz_loadu_ps(m, y + i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, load16(w + i, m), yv));
  }
}

const bool g_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");

// Rows [r0, r0+rows) of m against T tokens; y points at output element (token 0, row r0).
void run_tile(const Matrix& m, int64_t r0, int64_t rows, const float* x, int64_t xs, int64_t T, float* y, int64_t ys) {
  const int64_t K = m.cols;
  if (m.dtype == DType::bf16) {
    const uint16_t* w = static_cast<const uint16_t*>(m.data) + r0 * K;
    if (g_avx512)
      tile_avx512(w, K, rows, x, xs, T, y, ys);
    else
      tile_generic(w, K, rows, x, xs, T, y, ys);
  } else {
    const float* w = static_cast<const float*>(m.data) + r0 * K;
    if (g_avx512)
      tile_avx512(w, K, rows, x, xs, T, y, ys);
    else
      tile_generic(w, K, rows, x, xs, T, y, ys);
  }
}

}  // namespace

bool has_avx512() { return g_avx512; }

void matmul_multi(std::span<const MatmulJob> jobs) {
  // Work items: blocks of output rows across all jobs. A block is sized so that its weights
  // (about 64 KB) stay in L2 while every token of the batch streams past them.
  struct Item {
    int32_t job;
    int64_t r0, rows;
  };
  std::vector<Item> items;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Matrix& m = *jobs[j].w;
    DSV2_CHECK(m.dtype == DType::bf16 || m.dtype == DType::f32);
    if (jobs[j].n_tokens == 0) continue;
    int64_t row_bytes = m.cols * int64_t(dtype_size(m.dtype));
    int64_t block = std::max<int64_t>(4, (65536 / std::max<int64_t>(row_bytes, 1)) & ~int64_t(3));
    for (int64_t r = 0; r < m.rows; r += block) items.push_back({int32_t(j), r, std::min(block, m.rows - r)});
  }
  // Token tiles of 64 keep the x rows of one pass in L1/L2.
  ThreadPool::global().parallel_for(int64_t(items.size()), [&](int64_t b, int64_t e, int) {
    for (int64_t k = b; k < e; ++k) {
      const Item& it = items[size_t(k)];
      const MatmulJob& jb = jobs[size_t(it.job)];
      for (int64_t t = 0; t < jb.n_tokens; t += 64) {
        int64_t tt = std::min<int64_t>(64, jb.n_tokens - t);
        run_tile(*jb.w, it.r0, it.rows, jb.x + t * jb.x_stride, jb.x_stride, tt, jb.y + t * jb.y_stride + it.r0, jb.y_stride);
      }
    }
  });
}

void matmul(const Matrix& w, const float* x, int64_t n_tokens, float* y) {
  MatmulJob j{&w, x, w.cols, n_tokens, y, w.rows};
  matmul_multi({&j, 1});
}

float dot_row(const Matrix& w, int64_t r, const float* x) {
  float y;
  run_tile(w, r, 1, x, w.cols, 1, &y, 0);
  return y;
}

void axpy_row(const Matrix& w, int64_t r, float a, float* y) {
  const int64_t K = w.cols;
  if (w.dtype == DType::bf16) {
    const uint16_t* p = static_cast<const uint16_t*>(w.data) + r * K;
    if (g_avx512) return axpy_avx512(p, a, y, K);
    for (int64_t i = 0; i < K; ++i) y[i] += a * bf16_to_f32(p[i]);
  } else {
    const float* p = static_cast<const float*>(w.data) + r * K;
    if (g_avx512) return axpy_avx512(p, a, y, K);
    for (int64_t i = 0; i < K; ++i) y[i] += a * p[i];
  }
}

void load_row(const Matrix& w, int64_t r, float* out) {
  const int64_t K = w.cols;
  if (w.dtype == DType::bf16) {
    const uint16_t* p = static_cast<const uint16_t*>(w.data) + r * K;
    for (int64_t i = 0; i < K; ++i) out[i] = bf16_to_f32(p[i]);
  } else {
    const float* p = static_cast<const float*>(w.data) + r * K;
    std::copy(p, p + K, out);
  }
}

void rmsnorm(const float* x, const float* w, int64_t n, double eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  float inv = float(1.0 / std::sqrt(ss / double(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

float dot(const float* a, const float* b, int64_t n) {
  if (g_avx512) return dot_avx512_f(a, b, n);
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy(float a, const float* x, float* y, int64_t n) {
  if (g_avx512) return axpy_avx512(x, a, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace dsv2::cpu
