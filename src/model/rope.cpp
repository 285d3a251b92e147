#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace dsv2 {

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim, half = dim / 2;
  const double base = c.rope_theta;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv[size_t(i)] = std::pow(base, -double(2 * i) / double(dim));
  if (!c.rope_scaling.yarn) return inv;
  const auto& y = c.rope_scaling;
  const double L = double(y.original_max_position);
  auto corr = [&](double r) { return double(dim) * std::log(L / (r * 2.0 * M_PI)) / (2.0 * std::log(base)); };
  double low = std::max(std::floor(corr(y.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(y.beta_slow)), double(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    double extra = inv[size_t(i)], inter = extra / y.factor;
    double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    double mask = 1.0 - ramp;
    inv[size_t(i)] = inter * (1.0 - mask) + extra * mask;
  }
  return inv;
}

RopeTable::RopeTable(const ModelConfig& c)
    : half_(c.qk_rope_head_dim / 2), inv_freq_(rope_inv_freq(c)), attention_factor_(c.rope_attention_factor()) {}

void RopeTable::at(int64_t pos, float* cos_out, float* sin_out) const {
  for (int64_t i = 0; i < half_; ++i) {
    // The angle in double: positions reach 1e5+, where a float angle loses digits.
    double a = double(pos) * inv_freq_[size_t(i)];
    cos_out[i] = float(std::cos(a) * attention_factor_);
    sin_out[i] = float(std::sin(a) * attention_factor_);
  }
}

void RopeTable::apply(float* x, int64_t pos) const {
  float cs[256], sn[256];
  float tmp[512];
  at(pos, cs, sn);
  for (int64_t i = 0; i < half_; ++i) {
    float a = x[2 * i], b = x[2 * i + 1];
    tmp[i] = a * cs[i] - b * sn[i];
    tmp[i + half_] = b * cs[i] + a * sn[i];
  }
  for (int64_t i = 0; i < 2 * half_; ++i) x[i] = tmp[i];
}

}  // namespace dsv2
