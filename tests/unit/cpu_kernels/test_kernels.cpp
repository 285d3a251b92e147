// CPU kernels against double-precision loops over a sweep of shapes (tails included), for both
// weight dtypes and both code paths the CPU may take.
#include <gtest/gtest.h>

#include <cmath>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "backend/cpu/kernels.h"
#include "common/bf16.h"
#include "common/thread_pool.h"

namespace dsv2::cpu {
namespace {

struct Owned {
  std::vector<uint16_t> bf;
  std::vector<float> f;
  Matrix m;
};

Owned random_matrix(int64_t rows, int64_t cols, DType dt, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  Owned o;
  o.m.rows = rows;
  o.m.cols = cols;
  o.m.dtype = dt;
  if (dt == DType::bf16) {
    o.bf.resize(size_t(rows * cols));
    for (auto& v : o.bf) v = f32_to_bf16(nd(rng));
    o.m.data = o.bf.data();
  } else {
    o.f.resize(size_t(rows * cols));
    for (auto& v : o.f) v = nd(rng);
    o.m.data = o.f.data();
  }
  return o;
}

double wat(const Matrix& m, int64_t r, int64_t c) {
  return m.dtype == DType::bf16 ? bf16_to_f32(static_cast<const uint16_t*>(m.data)[r * m.cols + c])
                                : static_cast<const float*>(m.data)[r * m.cols + c];
}

TEST(CpuKernels, MatmulSweepAgainstFloat64) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (DType dt : {DType::bf16, DType::f32})
    for (int64_t rows : {1, 3, 4, 17, 130})
      for (int64_t cols : {1, 15, 16, 33, 512})
        for (int64_t T : {1, 2, 5, 70}) {
          Owned w = random_matrix(rows, cols, dt, rng);
          std::vector<float> x(size_t(T * cols)), y(size_t(T * rows), NAN);
          for (auto& v : x) v = nd(rng);
          matmul(w.m, x.data(), T, y.data());
          double num = 0, den = 0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t r = 0; r < rows; ++r) {
              double ref = 0;
              for (int64_t i = 0; i < cols; ++i) ref += wat(w.m, r, i) * double(x[size_t(t * cols + i)]);
              double d = double(y[size_t(t * rows + r)]) - ref;
              ASSERT_FALSE(std::isnan(y[size_t(t * rows + r)])) << "unwritten output";
              num += d * d;
              den += ref * ref;
            }
          EXPECT_LE(std::sqrt(num / den), 1e-6) << dtype_name(dt) << " " << rows << "x" << cols << " T=" << T;
        }
}

TEST(CpuKernels, MatmulMultiWritesEveryJobWithStrides) {
  std::mt19937 rng(3);
  Owned a = random_matrix(40, 24, DType::bf16, rng), b = random_matrix(7, 24, DType::f32, rng);
  std::vector<float> x(3 * 32, 0.5f), y(3 * 50, NAN);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 7) - 3.f;
  MatmulJob jobs[2] = {{&a.m, x.data(), 32, 3, y.data(), 50}, {&b.m, x.data(), 32, 3, y.data() + 40, 50}};
  matmul_multi(jobs);
  for (int t = 0; t < 3; ++t)
    for (int r = 0; r < 47; ++r) {
      const Matrix& m = r < 40 ? a.m : b.m;
      int rr = r < 40 ? r : r - 40;
      double ref = 0;
      for (int i = 0; i < 24; ++i) ref += wat(m, rr, i) * x[size_t(t * 32 + i)];
      EXPECT_NEAR(y[size_t(t * 50 + r)], ref, 1e-4 * (1 + std::abs(ref)));
    }
}

TEST(CpuKernels, RowHelpersNormAndSilu) {
  std::mt19937 rng(11);
  Owned w = random_matrix(5, 37, DType::bf16, rng);
  std::vector<float> x(37), acc(37, 1.f), row(37);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) / 10.f - 1.f;
  double ref = 0;
  for (int i = 0; i < 37; ++i) ref += wat(w.m, 3, i) * x[size_t(i)];
  EXPECT_NEAR(dot_row(w.m, 3, x.data()), ref, 1e-4);
  axpy_row(w.m, 2, 0.5f, acc.data());
  load_row(w.m, 2, row.data());
  for (int i = 0; i < 37; ++i) EXPECT_FLOAT_EQ(acc[size_t(i)], 1.f + 0.5f * row[size_t(i)]);

  std::vector<float> nw(37), out(37);
  for (size_t i = 0; i < nw.size(); ++i) nw[i] = 1.f + float(i) * 0.01f;
  rmsnorm(x.data(), nw.data(), 37, 1e-6, out.data());
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  double inv = 1.0 / std::sqrt(ss / 37 + 1e-6);
  for (int i = 0; i < 37; ++i) EXPECT_NEAR(out[size_t(i)], nw[size_t(i)] * x[size_t(i)] * inv, 1e-6);

  std::vector<float> g = {-3.f, -0.5f, 0.f, 0.7f, 4.f}, u = {1.f, 2.f, 3.f, -1.f, 0.5f}, s(5);
  silu_mul(g.data(), u.data(), 5, s.data());
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(s[size_t(i)], g[size_t(i)] / (1 + std::exp(-double(g[size_t(i)]))) * u[size_t(i)], 1e-6);
}

TEST(ThreadPool, CoversEveryIndexOnce) {
  ThreadPool pool(4);
  for (int64_t n : {1, 7, 1000}) {
    std::vector<int> hits(size_t(n), 0);
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) ++hits[size_t(i)];
    });
    for (int h : hits) EXPECT_EQ(h, 1);
  }
}

// Many short loops back to back (the spin-then-sleep hand-off between them), nested calls running
// serially inside a worker, and pauses long enough for the workers to fall asleep in between.
TEST(ThreadPool, BackToBackNestedAndAfterSleep) {
  ThreadPool pool(3);
  std::vector<int64_t> sums;
  for (int round = 0; round < 2000; ++round) {
    std::atomic<int64_t> sum{0};
    pool.parallel_for(17, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) sum += i + round;
    });
    ASSERT_EQ(sum.load(), 136 + 17 * round) << round;
    if (round % 500 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::atomic<int64_t> inner{0};
  pool.parallel_for(4, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i)
      pool.parallel_for(10, [&](int64_t ib, int64_t ie, int) { inner += ie - ib; });
  });
  EXPECT_EQ(inner.load(), 40);
}

}  // namespace
}  // namespace dsv2::cpu
