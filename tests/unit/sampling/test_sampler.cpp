// Sampler tests. The stochastic paths are checked with a chi-square goodness-of-fit test against
// the target distribution computed independently here in double precision; seeds are fixed, so
// every run draws the same tokens and the tests are deterministic.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "common/error.h"
#include "sampling/sampler.h"

namespace {

using dsv2::Sampler;
using dsv2::SamplingParams;

// Chi-square critical values at alpha = 0.001 for 1..12 degrees of freedom.
double chi2_critical(int df) {
  static const double table[] = {10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26, 32.91};
  EXPECT_GE(df, 1);
  EXPECT_LE(df, 12);
  return table[std::clamp(df, 1, 12) - 1];
}

// Pearson statistic of observed counts against target probabilities; a draw of a token with zero
// target probability is a hard failure.
double chi2(const std::vector<int>& counts, const std::vector<double>& target, int n, int* df) {
  double stat = 0;
  int support = 0;
  for (size_t k = 0; k < target.size(); ++k) {
    if (target[k] == 0) {
      EXPECT_EQ(counts[k], 0) << "token " << k << " has target probability 0";
      continue;
    }
    ++support;
    double e = target[k] * n;
    stat += (counts[k] - e) * (counts[k] - e) / e;
  }
  *df = support - 1;
  return stat;
}

std::vector<double> softmax(const std::vector<double>& l) {
  double m = *std::max_element(l.begin(), l.end());
  std::vector<double> p(l.size());
  double s = 0;
  for (size_t k = 0; k < l.size(); ++k) s += p[k] = std::exp(l[k] - m);
  for (auto& x : p) x /= s;
  return p;
}

// Keeps the given ids, renormalized.
std::vector<double> restrict_to(const std::vector<double>& p, const std::vector<bool>& keep) {
  std::vector<double> q(p.size(), 0);
  double s = 0;
  for (size_t k = 0; k < p.size(); ++k) {
    if (keep[k]) s += q[k] = p[k];
  }
  for (auto& x : q) x /= s;
  return q;
}

std::vector<size_t> by_prob_desc(const std::vector<double>& p) {
  std::vector<size_t> idx(p.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  return idx;
}

// Eight valid tokens plus two padding rows with huge logits that must never be drawn.
const std::vector<float> kLogits = {2.0f, 1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f, -3.0f, 100.f, 100.f};
constexpr int32_t kValid = 8;

std::vector<int> draw(SamplingParams p, int n, std::span<const int32_t> context = {},
                      const std::vector<float>& logits = kLogits, int32_t valid = kValid) {
  Sampler s(p, valid);
  std::vector<int> counts(size_t(valid), 0);
  for (int k = 0; k < n; ++k) {
    int32_t id = s.sample(logits, context).id;
    EXPECT_GE(id, 0);
    EXPECT_LT(id, valid);
    if (id >= 0 && id < valid) ++counts[size_t(id)];
  }
  return counts;
}

std::vector<double> valid_logits(double temperature = 1.0) {
  std::vector<double> l;
  for (int k = 0; k < kValid; ++k) l.push_back(kLogits[size_t(k)] / temperature);
  return l;
}

void expect_fits(const std::vector<int>& counts, const std::vector<double>& target, int n) {
  int df = 0;
  double stat = chi2(counts, target, n, &df);
  EXPECT_LT(stat, chi2_critical(df)) << "chi-square " << stat << " with " << df << " degrees of freedom";
}

SamplingParams seeded(uint64_t seed) {
  SamplingParams p;
  p.seed = seed;
  p.has_seed = true;
  return p;
}

constexpr int kDraws = 20000;

TEST(Sampler, TemperatureOneMatchesSoftmax) {
  SamplingParams p = seeded(1);
  expect_fits(draw(p, kDraws), softmax(valid_logits()), kDraws);
}

TEST(Sampler, TemperatureScalesLogits) {
  for (float t : {0.5f, 0.7f, 1.8f}) {
    SamplingParams p = seeded(2);
    p.temperature = t;
    SCOPED_TRACE(t);
    expect_fits(draw(p, kDraws), softmax(valid_logits(t)), kDraws);
  }
}

// The chi-square check has power: samples at temperature 0.7 do not fit temperature 1.
TEST(Sampler, ChiSquareRejectsTheWrongDistribution) {
  SamplingParams p = seeded(3);
  p.temperature = 0.7f;
  int df = 0;
  double stat = chi2(draw(p, kDraws), softmax(valid_logits()), kDraws, &df);
  EXPECT_GT(stat, 10 * chi2_critical(df));
}

TEST(Sampler, TopK) {
  SamplingParams p = seeded(4);
  p.top_k = 3;
  p.temperature = 0.8f;
  std::vector<bool> keep = {true, true, true, false, false, false, false, false};
  expect_fits(draw(p, kDraws), restrict_to(softmax(valid_logits(0.8)), keep), kDraws);
}

TEST(Sampler, TopP) {
  for (float top_p : {0.5f, 0.8f, 0.95f}) {
    SCOPED_TRACE(top_p);
    SamplingParams p = seeded(5);
    p.top_p = top_p;
    std::vector<double> probs = softmax(valid_logits());
    std::vector<bool> keep(kValid, false);
    double cum = 0;
    for (size_t id : by_prob_desc(probs)) {
      keep[id] = true;
      cum += probs[id];
      if (cum >= top_p) break;
    }
    expect_fits(draw(p, kDraws), restrict_to(probs, keep), kDraws);
  }
}

TEST(Sampler, MinP) {
  SamplingParams p = seeded(6);
  p.min_p = 0.2f;
  std::vector<double> probs = softmax(valid_logits());
  double top = *std::max_element(probs.begin(), probs.end());
  std::vector<bool> keep(kValid);
  for (int k = 0; k < kValid; ++k) keep[size_t(k)] = probs[size_t(k)] >= 0.2 * top;
  ASSERT_EQ(std::count(keep.begin(), keep.end(), true), 4);  // exp(-1.5) > 0.2 > exp(-2)
  expect_fits(draw(p, kDraws), restrict_to(probs, keep), kDraws);
}

TEST(Sampler, TopKThenTopPThenMinP) {
  SamplingParams p = seeded(7);
  p.top_k = 5;
  p.top_p = 0.9f;
  p.min_p = 0.3f;
  std::vector<double> probs = softmax(valid_logits());
  std::vector<bool> keep(kValid, false);
  for (int k = 0; k < 5; ++k) keep[size_t(k)] = true;
  std::vector<double> q = restrict_to(probs, keep);
  std::fill(keep.begin(), keep.end(), false);
  double cum = 0;
  for (size_t id : by_prob_desc(q)) {
    keep[id] = true;
    cum += q[id];
    if (cum >= 0.9) break;
  }
  q = restrict_to(q, keep);
  double top = *std::max_element(q.begin(), q.end());
  for (int k = 0; k < kValid; ++k) keep[size_t(k)] = keep[size_t(k)] && q[size_t(k)] >= 0.3 * top;
  expect_fits(draw(p, kDraws), restrict_to(q, keep), kDraws);
}

TEST(Sampler, PenaltiesShapeTheDistribution) {
  SamplingParams p = seeded(8);
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.4f;
  p.frequency_penalty = 0.25f;
  std::vector<int32_t> context = {0, 0, 0, 5, 7, 2, 9, 100000};  // 9 is padding, 100000 out of range
  std::vector<double> l = valid_logits();
  std::map<int, int> seen = {{0, 3}, {5, 1}, {7, 1}, {2, 1}};
  for (auto [id, c] : seen) {
    double& x = l[size_t(id)];
    x = x > 0 ? x / 1.3 : x * 1.3;
    x -= 0.4 + 0.25 * c;
  }
  expect_fits(draw(p, kDraws, context), softmax(l), kDraws);
}

TEST(Sampler, PresenceAndFrequencyCountOutputOnlyInTheSplitForm) {
  SamplingParams p;
  p.temperature = 0;
  p.presence_penalty = 2.f;
  Sampler s(p, kValid);
  std::vector<int32_t> prompt = {0}, output = {};
  EXPECT_EQ(s.sample(kLogits, prompt, output).id, 0);  // prompt tokens carry no presence penalty
  output = {0};
  EXPECT_EQ(s.sample(kLogits, prompt, output).id, 1);  // 2.0 - 2 < 1.5
}

TEST(Sampler, GreedyIsArgmaxOfValidRows) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p, kValid);
  EXPECT_EQ(s.sample(kLogits, {}).id, 0);
  std::vector<float> tie = {1.f, 3.f, 3.f, 0.f, 0.f, 0.f, 0.f, 0.f, 9.f};
  EXPECT_EQ(s.sample(tie, {}).id, 1);
  // Repetition penalty 2 on token 0: 2.0 / 2 = 1.0 < 1.5.
  p.repetition_penalty = 2.f;
  Sampler r(p, kValid);
  std::vector<int32_t> ctx = {0};
  EXPECT_EQ(r.sample(kLogits, ctx).id, 1);
  // Negative logits are multiplied: -0.5 * 2 = -1.0 drops token 0 below token 1 (-0.6).
  std::vector<float> neg = {-0.5f, -0.6f, -5.f, -5.f, -5.f, -5.f, -5.f, -5.f};
  EXPECT_EQ(r.sample(neg, ctx).id, 1);
}

TEST(Sampler, TopKOneAndTinyTopPAreGreedy) {
  SamplingParams k1 = seeded(9);
  k1.top_k = 1;
  SamplingParams p0 = seeded(9);
  p0.top_p = 1e-6f;
  std::vector<int> a = draw(k1, 500), b = draw(p0, 500);
  EXPECT_EQ(a[0], 500);
  EXPECT_EQ(b[0], 500);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  auto run = [](uint64_t seed) {
    SamplingParams p = seeded(seed);
    p.temperature = 1.5f;
    Sampler s(p, kValid);
    std::vector<int32_t> out;
    for (int k = 0; k < 300; ++k) out.push_back(s.sample(kLogits, out).id);
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
  // Unseeded samplers draw their own seeds.
  SamplingParams p;
  Sampler a(p, kValid), b(p, kValid);
  EXPECT_NE(a.seed(), b.seed());
}

TEST(Sampler, LargeVocabularyNucleus) {
  // 1000 tokens with a slowly decaying distribution: the nucleus holds hundreds of tokens, more
  // than the sampler's first partial sort, and padding rows sit past the valid vocabulary.
  const int32_t valid = 1000;
  std::vector<float> logits(1024, 50.f);
  std::mt19937_64 g(11);
  std::vector<double> l(valid);
  for (int k = 0; k < valid; ++k) l[size_t(k)] = logits[size_t(k)] = float(-0.004 * k + 0.3 * double(g() % 1000) / 1000);
  std::vector<double> probs = softmax(l);
  std::vector<bool> keep(valid, false);
  double cum = 0;
  std::vector<size_t> order = by_prob_desc(probs);
  size_t nucleus = 0;
  for (size_t id : order) {
    keep[id] = true;
    ++nucleus;
    cum += probs[id];
    if (cum >= 0.9) break;
  }
  ASSERT_GT(nucleus, 300u);
  std::vector<double> q = restrict_to(probs, keep);
  SamplingParams p = seeded(12);
  p.top_p = 0.9f;
  const int n = 20000;
  std::vector<int> counts = draw(p, n, {}, logits, valid);
  // Group the nucleus by rank into 10 buckets of equal size for the chi-square test.
  std::vector<int> bucket_counts(10, 0);
  std::vector<double> bucket_p(10, 0);
  for (size_t r = 0; r < order.size(); ++r) {
    size_t id = order[r];
    if (!keep[id]) {
      EXPECT_EQ(counts[id], 0) << "token outside the nucleus drawn: " << id;
      continue;
    }
    size_t b = r * 10 / nucleus;
    bucket_counts[b] += counts[id];
    bucket_p[b] += q[id];
  }
  expect_fits(bucket_counts, bucket_p, n);
}

TEST(Sampler, LogprobsAreRawLogSoftmaxOverValidRows) {
  SamplingParams p = seeded(13);
  p.temperature = 0.5f;
  p.repetition_penalty = 1.5f;
  p.logprobs = true;
  p.top_logprobs = 3;
  Sampler s(p, kValid);
  std::vector<double> lp = softmax(valid_logits());
  for (auto& x : lp) x = std::log(x);
  std::vector<int32_t> ctx = {0, 1};
  for (int k = 0; k < 50; ++k) {
    auto r = s.sample(kLogits, ctx);
    EXPECT_NEAR(r.logprob, lp[size_t(r.id)], 1e-5);
    ASSERT_EQ(r.top.size(), 3u);
    for (int t = 0; t < 3; ++t) {
      EXPECT_EQ(r.top[size_t(t)].id, t);  // logits are sorted by id, so the top ids are 0, 1, 2
      EXPECT_NEAR(r.top[size_t(t)].logprob, lp[size_t(t)], 1e-5);
    }
  }
  SamplingParams plain;
  plain.temperature = 0;
  auto r = Sampler(plain, kValid).sample(kLogits, {});
  EXPECT_TRUE(r.top.empty());
}

TEST(Sampler, RejectsBadParameters) {
  auto bad = [](auto mutate, const char* name) {
    SamplingParams p;
    mutate(p);
    try {
      Sampler s(p, kValid);
      ADD_FAILURE() << "accepted bad " << name;
    } catch (const dsv2::Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  bad([](SamplingParams& p) { p.temperature = -1; }, "temperature");
  bad([](SamplingParams& p) { p.temperature = NAN; }, "temperature");
  bad([](SamplingParams& p) { p.top_p = 0; }, "top_p");
  bad([](SamplingParams& p) { p.top_p = 1.5f; }, "top_p");
  bad([](SamplingParams& p) { p.top_k = -2; }, "top_k");
  bad([](SamplingParams& p) { p.min_p = 2; }, "min_p");
  bad([](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty");
  bad([](SamplingParams& p) { p.presence_penalty = 3; }, "presence_penalty");
  bad([](SamplingParams& p) { p.frequency_penalty = -3; }, "frequency_penalty");
  bad([](SamplingParams& p) { p.max_tokens = 0; }, "max_tokens");
  bad([](SamplingParams& p) { p.top_logprobs = 21; }, "top_logprobs");
  bad([](SamplingParams& p) { p.stop = {""}; }, "stop");
  SamplingParams ok;
  Sampler s(ok, kValid);
  std::vector<float> short_row(4, 0.f);
  EXPECT_THROW(s.sample(short_row, {}), dsv2::Error);
}

TEST(Sampler, FinishReasons) {
  using dsv2::FinishReason;
  SamplingParams p;
  p.max_tokens = 3;
  p.stop_token_ids = {7};
  std::vector<int32_t> eos = {100001};
  EXPECT_EQ(dsv2::finish_reason_after_token(p, eos, 5, 1), FinishReason::None);
  EXPECT_EQ(dsv2::finish_reason_after_token(p, eos, 100001, 1), FinishReason::Stop);
  EXPECT_EQ(dsv2::finish_reason_after_token(p, eos, 7, 1), FinishReason::Stop);
  EXPECT_EQ(dsv2::finish_reason_after_token(p, eos, 5, 3), FinishReason::Length);
  p.ignore_eos = true;
  EXPECT_EQ(dsv2::finish_reason_after_token(p, eos, 100001, 1), FinishReason::None);
  EXPECT_EQ(dsv2::finish_reason_after_token(p, eos, 7, 1), FinishReason::Stop);
}

}  // namespace
