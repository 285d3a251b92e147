#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/error.h"

namespace dsv2 {

Sampler::Sampler(const SamplingParams& params, int32_t n_valid_vocab) : params_(params), n_valid_(n_valid_vocab) {
  params_.validate();
  if (n_valid_vocab <= 0) fail("sampler: vocabulary size must be positive, got {}", n_valid_vocab);
  seed_ = params_.has_seed ? params_.seed : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  rng_.seed(seed_);
  if (params_.repetition_penalty != 1.f || params_.presence_penalty != 0.f || params_.frequency_penalty != 0.f) {
    counts_.assign(size_t(n_valid_), 0);  // only requests with penalties pay for the table
  }
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
  const SamplingParams& p = params_;
  std::span<const float> row = logits.first(n);

  if (p.repetition_penalty != 1.f || p.presence_penalty != 0.f || p.frequency_penalty != 0.f) {
    work_.assign(row.begin(), row.end());
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
    row = work_;
  }

  size_t best = 0;
  for (size_t k = 1; k < n; ++k) {
    if (row[k] > row[best]) best = k;
  }
  if (p.greedy()) return finish(logits, int32_t(best));
  const float max_l = row[best];
  if (!std::isfinite(max_l)) fail("sampler: no finite logit to sample from");
  const float inv_t = 1.f / p.temperature;

  // Candidates: tokens within kMaxNats of the best in log-probability (a token further below has
  // probability < 4e-18 of the best one's, under the 2^-53 resolution of the draw, so it could never
  // be drawn anyway), then the top_k best of them (ties: lower id).
  constexpr float kMaxNats = 40.f;
  const float floor_l = max_l - kMaxNats * p.temperature;
  order_.clear();
  for (size_t k = 0; k < n; ++k) {
    if (row[k] >= floor_l) order_.push_back(int32_t(k));
  }
  if (p.top_k > 0 && size_t(p.top_k) < order_.size()) {
    std::nth_element(order_.begin(), order_.begin() + p.top_k - 1, order_.end(), [&](int32_t a, int32_t b) {
      return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
    });
    order_.resize(size_t(p.top_k));
  }
  // Unnormalized probabilities exp((l - l_max) / T); the best token has exactly 1.
  probs_.resize(order_.size());
  double total = 0;
  for (size_t k = 0; k < order_.size(); ++k) {
    probs_[k] = std::exp((row[size_t(order_[k])] - max_l) * inv_t);
    total += probs_[k];
  }

  if (p.top_p < 1.f) {
    // Nucleus without sorting the vocabulary: bucket candidates by (l_max - l) / T, i.e. by
    // log-probability, take whole buckets from the top while their mass stays below the target,
    // and sort only the bucket where the cumulative mass crosses it. A better bucket holds only
    // strictly more probable tokens, so this keeps exactly the sorted prefix.
    constexpr int kBuckets = 2048;
    constexpr float kRange = 32.f;  // log-probability span; everything below lands in the last bucket
    bucket_mass_.assign(kBuckets, 0.0);
    bucket_.resize(order_.size());
    for (size_t k = 0; k < order_.size(); ++k) {
      float d = (max_l - row[size_t(order_[k])]) * inv_t;
      int b = d < kRange ? int(d * (kBuckets / kRange)) : kBuckets - 1;
      bucket_[k] = b;
      bucket_mass_[size_t(b)] += probs_[k];
    }
    const double target = double(p.top_p) * total;
    double cum = 0;
    int boundary = kBuckets - 1;
    for (int b = 0; b < kBuckets; ++b) {
      if (cum + bucket_mass_[size_t(b)] >= target) {
        boundary = b;
        break;
      }
      cum += bucket_mass_[size_t(b)];
    }
    size_t w = 0;
    edge_.clear();
    for (size_t k = 0; k < order_.size(); ++k) {
      if (bucket_[k] < boundary) {
        order_[w] = order_[k];
        probs_[w++] = probs_[k];
      } else if (bucket_[k] == boundary) {
        edge_.emplace_back(probs_[k], order_[k]);
      }
    }
    std::sort(edge_.begin(), edge_.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (const auto& [prob, id] : edge_) {
      order_[w] = id;
      probs_[w++] = prob;
      cum += prob;
      if (cum >= target) break;
    }
    order_.resize(w);
    probs_.resize(w);
  }
  if (p.min_p > 0.f) {
    float top = *std::max_element(probs_.begin(), probs_.end());
    const float threshold = p.min_p * top;
    size_t w = 0;
    for (size_t k = 0; k < order_.size(); ++k) {
      if (probs_[k] >= threshold) {
        order_[w] = order_[k];
        probs_[w++] = probs_[k];
      }
    }
    order_.resize(w);
    probs_.resize(w);
  }

  total = 0;
  for (float x : probs_) total += x;
  double u = uniform() * total, cum = 0;
  int32_t chosen = order_.back();
  for (size_t k = 0; k < order_.size(); ++k) {
    cum += probs_[k];
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
