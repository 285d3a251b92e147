// RoPE/YaRN tables, the softmax scale and the MoE router against the float64 oracle's values
// (tests/data/golden/ops.json, written by tools/reference/make_golden.py).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/rope.h"
#include "model/router.h"

namespace dsv2 {
namespace {

using nlohmann::json;

json ops() {
  std::ifstream in(std::string(DSV2_TEST_DATA) + "/golden/ops.json");
  return json::parse(in);
}

ModelConfig yarn_config(const json& y) {
  ModelConfig c;
  c.qk_rope_head_dim = y["dim"];
  c.qk_nope_head_dim = y.value("qk_head_dim", 192) - c.qk_rope_head_dim;
  c.rope_theta = y["base"];
  c.rope_scaling.yarn = true;
  c.rope_scaling.factor = y["factor"];
  c.rope_scaling.original_max_position = y["original_max_position_embeddings"];
  c.rope_scaling.beta_fast = y["beta_fast"];
  c.rope_scaling.beta_slow = y["beta_slow"];
  c.rope_scaling.mscale = y["mscale"];
  c.rope_scaling.mscale_all_dim = y["mscale_all_dim"];
  return c;
}

TEST(Rope, YarnInvFreqAttentionFactorAndSoftmaxScale) {
  for (auto& y : ops()["yarn"]) {
    ModelConfig c = yarn_config(y);
    auto inv = rope_inv_freq(c);
    auto ref = y["inv_freq"].get<std::vector<double>>();
    ASSERT_EQ(inv.size(), ref.size());
    for (size_t i = 0; i < inv.size(); ++i) EXPECT_NEAR(inv[i] / ref[i], 1.0, 1e-12) << y["name"] << " " << i;
    EXPECT_NEAR(c.rope_attention_factor(), y["attention_factor"].get<double>(), 1e-12) << y["name"];
    if (y.contains("softmax_scale")) {
      EXPECT_NEAR(c.softmax_scale(), y["softmax_scale"].get<double>(), 1e-14) << y["name"];
    }
  }
}

TEST(Rope, RotationMatchesOracleAtFarPositions) {
  auto j = ops();
  for (auto& r : j["rope"]) {
    json y;
    for (auto& cand : j["yarn"])
      if (cand["name"] == r["yarn"]) y = cand;
    ModelConfig c = yarn_config(y);
    RopeTable table(c);
    auto in = r["input"].get<std::vector<float>>();
    auto positions = r["positions"].get<std::vector<int64_t>>();
    for (size_t p = 0; p < positions.size(); ++p) {
      std::vector<float> x = in;
      table.apply(x.data(), positions[p]);
      auto ref = r["output"][p].get<std::vector<double>>();
      double num = 0, den = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        num += (x[i] - ref[i]) * (x[i] - ref[i]);
        den += ref[i] * ref[i];
      }
      EXPECT_LE(std::sqrt(num / den), 1e-6) << r["yarn"] << " position " << positions[p];
    }
  }
}

TEST(Router, GreedyGroupLimitedAndNormalizedMatchOracle) {
  for (auto& r : ops()["router"]) {
    ModelConfig c;
    c.n_routed_experts = r["n_routed_experts"];
    c.num_experts_per_tok = r["num_experts_per_tok"];
    c.topk_method = r["topk_method"] == "greedy" ? TopkMethod::greedy : TopkMethod::group_limited_greedy;
    c.n_group = r["n_group"];
    c.topk_group = r["topk_group"];
    c.norm_topk_prob = r["norm_topk_prob"];
    c.routed_scaling_factor = r["routed_scaling_factor"];
    for (size_t t = 0; t < r["logits"].size(); ++t) {
      auto logits = r["logits"][t].get<std::vector<float>>();
      std::vector<int32_t> ids(size_t(c.num_experts_per_tok));
      std::vector<float> w(ids.size()), scratch(size_t(2 * c.n_routed_experts));
      route_token(c, logits.data(), ids.data(), w.data(), scratch.data());
      EXPECT_EQ(ids, r["expert_ids"][t].get<std::vector<int32_t>>()) << r["name"] << " token " << t;
      auto rw = r["weights"][t].get<std::vector<double>>();
      for (size_t k = 0; k < ids.size(); ++k) EXPECT_NEAR(w[k], rw[k], 1e-6 * std::abs(rw[k]) + 1e-7) << r["name"];
    }
  }
}

}  // namespace
}  // namespace dsv2
