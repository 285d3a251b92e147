#include "runtime/engine_sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace dsv2 {

TokenSampler::TokenSampler(const SamplingOptions& opts, int32_t n_valid) : o_(opts), n_valid_(n_valid) {
  DSV2_CHECK(n_valid > 0);
  rng_.seed(o_.seed ? *o_.seed : std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32));
}

SampledToken TokenSampler::sample(std::span<const float> logits) {
  const int32_t V = std::min<int32_t>(n_valid_, int32_t(logits.size()));
  SampledToken out;
  const bool want_lp = o_.logprobs || o_.top_logprobs > 0;
  double lse = 0;
  if (want_lp) {
    float mx = *std::max_element(logits.begin(), logits.begin() + V);
    double sum = 0;
    for (int32_t i = 0; i < V; ++i) sum += std::exp(double(logits[size_t(i)]) - mx);
    lse = double(mx) + std::log(sum);
    if (o_.top_logprobs > 0) {
      int32_t k = std::min(o_.top_logprobs, V);
      order_.resize(size_t(V));
      std::iota(order_.begin(), order_.end(), 0);
      std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), [&](int32_t a, int32_t b) {
        return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
      });
      for (int32_t i = 0; i < k; ++i)
        out.top.push_back({order_[size_t(i)], float(double(logits[size_t(order_[size_t(i)])]) - lse)});
    }
  }
  work_.assign(logits.begin(), logits.begin() + V);
  std::vector<float>& z = work_;
  for (auto [id, n] : counts_) {
    if (id >= V) continue;
    z[size_t(id)] -= float(o_.presence_penalty + o_.frequency_penalty * n);
  }
  int32_t chosen = 0;
  if (o_.temperature <= 0.0) {
    chosen = int32_t(std::max_element(z.begin(), z.end()) - z.begin());
  } else {
    const float inv_t = float(1.0 / o_.temperature);
    float mx = *std::max_element(z.begin(), z.end());
    // Candidate set: all ids, or the top-k by logit.
    order_.resize(size_t(V));
    std::iota(order_.begin(), order_.end(), 0);
    size_t n = size_t(V);
    auto by_logit = [&](int32_t a, int32_t b) { return z[size_t(a)] > z[size_t(b)] || (z[size_t(a)] == z[size_t(b)] && a < b); };
    if (o_.top_k > 0 && o_.top_k < V) {
      n = size_t(o_.top_k);
      std::partial_sort(order_.begin(), order_.begin() + std::ptrdiff_t(n), order_.end(), by_logit);
    } else if (o_.top_p < 1.0) {
      std::sort(order_.begin(), order_.end(), by_logit);
    }
    std::vector<double> p(n);
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
      p[i] = std::exp(double((z[size_t(order_[i])] - mx) * inv_t));
      sum += p[i];
    }
    if (o_.top_p < 1.0) {
      // Candidates are sorted: keep the smallest prefix whose mass reaches top_p (at least one).
      double acc = 0;
      size_t keep = n;
      for (size_t i = 0; i < n; ++i) {
        acc += p[i] / sum;
        if (acc >= o_.top_p) {
          keep = i + 1;
          break;
        }
      }
      n = keep;
      sum = std::accumulate(p.begin(), p.begin() + std::ptrdiff_t(n), 0.0);
    }
    double r = std::uniform_real_distribution<double>(0.0, sum)(rng_);
    chosen = order_[n - 1];
    for (size_t i = 0; i < n; ++i) {
      r -= p[i];
      if (r < 0) {
        chosen = order_[i];
        break;
      }
    }
  }
  out.id = chosen;
  if (want_lp) out.logprob = float(double(logits[size_t(chosen)]) - lse);
  ++counts_[chosen];
  return out;
}

}  // namespace dsv2
