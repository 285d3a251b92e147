#pragma once
// CPU kernels: fp32 activations against bf16 or f32 weights, fp32 accumulation everywhere.
// The inner loops have an AVX-512 version chosen at run time from the CPU's features and a
// portable version; both compute the same sums (up to summation order).
#include <cstdint>
#include <span>

#include "model/weights.h"

namespace dsv2::cpu {

// y[t, o] = sum_i x[t, i] * W[o, i] for t < n_tokens, o < W.rows.
struct MatmulJob {
  const Matrix* w = nullptr;
  const float* x = nullptr;
  int64_t x_stride = 0;  // floats between token rows of x (>= W.cols)
  int64_t n_tokens = 0;
  float* y = nullptr;
  int64_t y_stride = 0;  // floats between token rows of y (>= W.rows)
};

// Runs all jobs, splitting their output rows over the global thread pool in one pass.
void matmul_multi(std::span<const MatmulJob> jobs);
void matmul(const Matrix& w, const float* x, int64_t n_tokens, float* y);

// Dot product of row r of W with x[W.cols].
float dot_row(const Matrix& w, int64_t r, const float* x);
// y[W.cols] += a * row r of W.
void axpy_row(const Matrix& w, int64_t r, float a, float* y);
// Row r of W widened to f32.
void load_row(const Matrix& w, int64_t r, float* out);

// out = w * x / sqrt(mean(x^2) + eps), computed in fp32 with a double sum.
void rmsnorm(const float* x, const float* w, int64_t n, double eps, float* out);
// out[i] = silu(gate[i]) * up[i]
void silu_mul(const float* gate, const float* up, int64_t n, float* out);
float dot(const float* a, const float* b, int64_t n);
// y += a * x
void axpy(float a, const float* x, float* y, int64_t n);

bool has_avx512();

}  // namespace dsv2::cpu
