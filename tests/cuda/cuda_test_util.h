#pragma once
// Helpers for the CUDA tests: skip without a GPU, device buffers from host vectors, bf16 rounding,
// and the error metrics the tests assert on.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cuda/cuda_model.h"
#include "backend/cuda/ops.h"
#include "common/bf16.h"
#include "model/config.h"
#include "model/router.h"

#define DSV2_REQUIRE_GPU()                                              \
  do {                                                                  \
    if (!::dsv2::cuda::available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

namespace dsv2::test {

using cuda::bf16;

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { DSV2_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T))); }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) { put(h); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void put(const std::vector<T>& h) {
    DSV2_CUDA_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> get() const {
    std::vector<T> h(n);
    DSV2_CUDA_CHECK(cudaDeviceSynchronize());
    DSV2_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  // NaN-poisons the buffer (0xFFFF bf16 / 0xFFFFFFFF f32 and int -1) so unwritten outputs show.
  void poison() { DSV2_CUDA_CHECK(cudaMemset(p, 0xFF, n * sizeof(T))); }
};

// bf16 values as raw bits in device-compatible storage.
inline std::vector<bf16> to_bf16(const std::vector<float>& f) {
  std::vector<bf16> out(f.size());
  for (size_t i = 0; i < f.size(); ++i) {
    __nv_bfloat16_raw r;
    r.x = f32_to_bf16(f[i]);
    out[i] = r;
  }
  return out;
}
inline float bf(const bf16& v) {
  return bf16_to_f32(static_cast<__nv_bfloat16_raw>(v).x);
}
inline std::vector<float> from_bf16(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf(v[i]);
  return out;
}
// Rounds through bf16 (what the device sees after upload).
inline std::vector<float> round_bf16(std::vector<float> f) {
  for (auto& x : f) x = bf16_to_f32(f32_to_bf16(x));
  return f;
}

inline std::vector<float> randn(size_t n, std::mt19937_64& g, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Large weight tensors: mean 0, standard deviation `scale`, roughly normal (the sum of four uniforms
// from a counter hash, seeded from g), about 20x faster than randn, which dominated the run time of
// the tests with expert-sized tensors.
inline std::vector<float> randw(size_t n, std::mt19937_64& g, float scale = 1.0f) {
  const uint64_t seed = g();
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  // four 16-bit uniforms per hash; their sum has variance 4/12, hence the factor sqrt(3)
  const float k = scale * 1.7320508f / 65536.0f;
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t z = mix(seed + 0x9E3779B97F4A7C15ull * (i + 1));
    const float sum = float(z & 0xFFFF) + float((z >> 16) & 0xFFFF) + float((z >> 32) & 0xFFFF) + float(z >> 48);
    v[i] = k * (sum - 2.0f * 65535.0f);
  }
  return v;
}

// ||a - b|| / ||b||; infinite when any value of a is not finite.
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// A router configuration (the MoE router tests).
struct RouterCase {
  int E, K, n_group, topk_group;
  bool group, norm;
  double scaling;
  ModelConfig config() const {
    ModelConfig c;
    c.n_routed_experts = E;
    c.num_experts_per_tok = K;
    c.topk_method = group ? TopkMethod::group_limited_greedy : TopkMethod::greedy;
    c.n_group = n_group;
    c.topk_group = topk_group;
    c.norm_topk_prob = norm;
    c.routed_scaling_factor = scaling;
    return c;
  }
};

// Compares device routing (ids / weights of T tokens, row stride `stride`, the first K entries) with
// the CPU router on logits [T, E]: expects equal weights where the ids agree and returns the number
// of tokens whose ids differ (a near-tie the device's exp and sum rounded the other way).
inline int routing_mismatches(const RouterCase& rc, const std::vector<float>& logits, int T,
                              const std::vector<int32_t>& ids, const std::vector<float>& wts, int stride) {
  const ModelConfig c = rc.config();
  int mismatched = 0;
  for (int t = 0; t < T; ++t) {
    std::vector<float> scratch(size_t(2 * rc.E + 8)), rw(size_t(rc.K));
    std::vector<int32_t> rid(size_t(rc.K));
    route_token(c, &logits[size_t(t) * rc.E], rid.data(), rw.data(), scratch.data());
    bool same = true;
    for (int k = 0; k < rc.K; ++k) same &= ids[size_t(t) * stride + k] == rid[size_t(k)];
    if (!same) {
      ++mismatched;
      continue;
    }
    for (int k = 0; k < rc.K; ++k)
      EXPECT_NEAR(wts[size_t(t) * stride + k], rw[size_t(k)], 1e-4 * (1 + rw[size_t(k)])) << "token " << t;
  }
  return mismatched;
}

}  // namespace dsv2::test
