#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"

namespace dsv2 {

Sampler::Sampler(const SamplingParams& params, int32_t n_valid_vocab) : params_(params), n_valid_(n_valid_vocab) {
  params_.validate();
  if (n_valid_vocab <= 0) fail("sampler: vocabulary size must be positive, got {}", n_valid_vocab);
  seed_ = params_.has_seed ? params_.seed : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  rng_.seed(seed_);
  counts_.assign(size_t(n_valid_), 0);
}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

SampleResult Sampler::sample(std::span<const float> logits, std::span<const int32_t> context_ids) {
  return sample(logits, context_ids, context_ids);
}

SampleResult Sampler::sample(std::span<const float> logits, std::span<const int32_t> prompt_ids,
                             std::span<const int32_t> output_ids) {
  if (logits.size() < size_t(n_valid_)) {
    fail("sampler: logits row has {} entries but the vocabulary has {}", logits.size(), n_valid_);
  }
  const size_t n = size_t(n_valid_);
  work_.assign(logits.begin(), logits.begin() + long(n));
  const SamplingParams& p = params_;

  auto count = [&](std::span<const int32_t> ids) {
    for (int32_t id : ids) {
      if (id < 0 || id >= n_valid_) continue;  // padding or special ids outside the vocabulary
      if (counts_[size_t(id)]++ == 0) touched_.push_back(id);
    }
  };
  auto reset = [&] {
    for (int32_t id : touched_) counts_[size_t(id)] = 0;
    touched_.clear();
  };
  if (p.repetition_penalty != 1.f) {
    count(prompt_ids);
    if (prompt_ids.data() != output_ids.data() || prompt_ids.size() != output_ids.size()) count(output_ids);
    for (int32_t id : touched_) {
      float& l = work_[size_t(id)];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
    reset();
  }
  if (p.presence_penalty != 0.f || p.frequency_penalty != 0.f) {
    count(output_ids);
    for (int32_t id : touched_) {
      work_[size_t(id)] -= p.presence_penalty + p.frequency_penalty * float(counts_[size_t(id)]);
    }
    reset();
  }

  if (p.greedy()) {
    size_t best = 0;
    for (size_t k = 1; k < n; ++k) {
      if (work_[k] > work_[best]) best = k;
    }
    return finish(logits, int32_t(best));
  }

  const float inv_t = 1.f / p.temperature;
  float max_l = -std::numeric_limits<float>::infinity();
  for (size_t k = 0; k < n; ++k) {
    work_[k] *= inv_t;
    max_l = std::max(max_l, work_[k]);
  }
  if (!std::isfinite(max_l)) fail("sampler: no finite logit to sample from");
  // Unnormalized probabilities exp(l - max) in work_ from here on.
  for (size_t k = 0; k < n; ++k) work_[k] = std::exp(work_[k] - max_l);

  auto by_prob = [&](int32_t a, int32_t b) { return work_[size_t(a)] > work_[size_t(b)] || (work_[size_t(a)] == work_[size_t(b)] && a < b); };
  order_.resize(n);
  for (size_t k = 0; k < n; ++k) order_[k] = int32_t(k);
  size_t kept = n;     // candidates are order_[0, kept)
  size_t sorted = 0;   // order_[0, sorted) is sorted by probability, descending
  if (p.top_k > 0 && size_t(p.top_k) < n) {
    std::nth_element(order_.begin(), order_.begin() + p.top_k - 1, order_.end(), by_prob);
    kept = size_t(p.top_k);
  }
  auto sort_prefix = [&](size_t want) {
    want = std::min(want, kept);
    if (want <= sorted) return;
    std::partial_sort(order_.begin() + long(sorted), order_.begin() + long(want), order_.begin() + long(kept), by_prob);
    sorted = want;
  };
  if (p.top_p < 1.f) {
    double total = 0;
    for (size_t k = 0; k < kept; ++k) total += work_[size_t(order_[k])];
    const double target = double(p.top_p) * total;
    double cum = 0;
    size_t k = 0, chunk = 64;
    // Sort only as much of the head as the nucleus needs.
    while (true) {
      sort_prefix(k + chunk);
      for (; k < sorted; ++k) {
        cum += work_[size_t(order_[k])];
        if (cum >= target) break;
      }
      if (k < sorted || sorted == kept) break;
      chunk *= 4;
    }
    kept = std::min(kept, k + 1);
  }
  if (p.min_p > 0.f) {
    float top = 0;
    for (size_t k = 0; k < kept; ++k) top = std::max(top, work_[size_t(order_[k])]);
    const float threshold = p.min_p * top;
    size_t w = 0;
    for (size_t k = 0; k < kept; ++k) {
      if (work_[size_t(order_[k])] >= threshold) order_[w++] = order_[k];
    }
    kept = w;
  }
  double total = 0;
  for (size_t k = 0; k < kept; ++k) total += work_[size_t(order_[k])];
  double u = uniform() * total, cum = 0;
  int32_t chosen = order_[kept - 1];
  for (size_t k = 0; k < kept; ++k) {
    cum += work_[size_t(order_[k])];
    if (u < cum) {
      chosen = order_[k];
      break;
    }
  }
  return finish(logits, chosen);
}

SampleResult Sampler::finish(std::span<const float> logits, int32_t id) {
  SampleResult r{id, 0.f, {}};
  const size_t n = size_t(n_valid_);
  const bool want_top = params_.logprobs && params_.top_logprobs > 0;
  if (!params_.logprobs && !want_top) return r;
  double max_l = -std::numeric_limits<double>::infinity();
  for (size_t k = 0; k < n; ++k) max_l = std::max(max_l, double(logits[k]));
  double sum = 0;
  for (size_t k = 0; k < n; ++k) sum += std::exp(double(logits[k]) - max_l);
  const double log_z = max_l + std::log(sum);
  r.logprob = float(double(logits[size_t(id)]) - log_z);
  if (want_top) {
    size_t k_top = std::min(size_t(params_.top_logprobs), n);
    order_.resize(n);
    for (size_t k = 0; k < n; ++k) order_[k] = int32_t(k);
    std::partial_sort(order_.begin(), order_.begin() + long(k_top), order_.end(), [&](int32_t a, int32_t b) {
      return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
    });
    for (size_t k = 0; k < k_top; ++k) {
      r.top.push_back({order_[k], float(double(logits[size_t(order_[k])]) - log_z)});
    }
  }
  return r;
}

FinishReason finish_reason_after_token(const SamplingParams& params, std::span<const int32_t> eos_ids, int32_t id,
                                       int n_generated) {
  if (!params.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), id) != eos_ids.end()) return FinishReason::Stop;
  if (std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), id) != params.stop_token_ids.end()) {
    return FinishReason::Stop;
  }
  if (n_generated >= params.max_tokens) return FinishReason::Length;
  return FinishReason::None;
}

}  // namespace dsv2
