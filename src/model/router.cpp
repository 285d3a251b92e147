#include "model/router.h"

#include <algorithm>
#include <cmath>

namespace dsv2 {

void route_token(const ModelConfig& c, const float* logits, int32_t* ids, float* weights, float* scratch) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
  float* s = scratch;
  float mx = logits[0];
  for (int64_t e = 1; e < E; ++e) mx = std::max(mx, logits[e]);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) {
    s[e] = std::exp(logits[e] - mx);
    sum += s[e];
  }
  for (int64_t e = 0; e < E; ++e) s[e] = float(s[e] / sum);

  if (c.topk_method == TopkMethod::group_limited_greedy && c.n_group > 1) {
    // Group score = max of its experts; keep topk_group groups, zero the rest.
    const int64_t G = c.n_group, per = E / G;
    float* gscore = scratch + E;
    for (int64_t g = 0; g < G; ++g) gscore[g] = *std::max_element(s + g * per, s + (g + 1) * per);
    int64_t order[1024];
    for (int64_t g = 0; g < G; ++g) order[g] = g;
    std::stable_sort(order, order + G, [&](int64_t a, int64_t b) { return gscore[a] > gscore[b]; });
    for (int64_t r = c.topk_group; r < G; ++r) std::fill(s + order[r] * per, s + (order[r] + 1) * per, 0.0f);
  }
  // top-k by repeated selection (K is small): the highest score, lowest id on ties.
  for (int64_t k = 0; k < K; ++k) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int64_t q = 0; q < k; ++q) taken |= ids[q] == e;
      if (!taken && (best < 0 || s[e] > s[best])) best = e;
    }
    ids[k] = int32_t(best);
    weights[k] = s[best];
  }
  if (K > 1 && c.norm_topk_prob) {
    float tot = 0;
    for (int64_t k = 0; k < K; ++k) tot += weights[k];
    for (int64_t k = 0; k < K; ++k) weights[k] = weights[k] / (tot + 1e-20f);
  } else {
    for (int64_t k = 0; k < K; ++k) weights[k] = float(weights[k] * c.routed_scaling_factor);
  }
}

}  // namespace dsv2
