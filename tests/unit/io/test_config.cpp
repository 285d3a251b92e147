#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "model/config.h"

namespace dsv2 {
namespace {

using nlohmann::json;

// DeepSeek-V2-Lite's published config.json (the fields the engine reads).
json lite_config() {
  return json::parse(R"({
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
    "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
    "n_shared_experts": 2, "n_routed_experts": 64, "num_experts_per_tok": 6, "routed_scaling_factor": 1.0,
    "topk_method": "greedy", "n_group": 1, "topk_group": 1, "scoring_func": "softmax", "norm_topk_prob": false,
    "kv_lora_rank": 512, "q_lora_rank": null, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "hidden_act": "silu", "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-06, "rope_theta": 10000, "attention_bias": false, "tie_word_embeddings": false,
    "bos_token_id": 100000, "eos_token_id": 100001, "torch_dtype": "bfloat16", "aux_loss_alpha": 0.001,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"}
  })");
}

std::string error_of(const json& j) {
  try {
    parse_config(j, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Config, PublishedLiteConfig) {
  ModelConfig c = parse_config(lite_config(), "config.json");
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.kv_cache_dim(), 576);
  EXPECT_EQ(c.topk_method, TopkMethod::greedy);
  EXPECT_TRUE(c.rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c.rope_attention_factor(), 1.0);
  // The classic bug: the softmax scale includes m^2 from mscale_all_dim.
  EXPECT_NEAR(c.softmax_scale(), 0.11472138679292611, 1e-15);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
}

TEST(Config, V2StyleAndOldModelType) {
  json j = lite_config();
  j["model_type"] = "deepseek";
  j["q_lora_rank"] = 1536;
  j["topk_method"] = "group_limited_greedy";
  j["n_group"] = 8;
  j["topk_group"] = 3;
  j["n_routed_experts"] = 160;
  j["routed_scaling_factor"] = 16.0;
  j["moe_layer_freq"] = 2;
  ModelConfig c = parse_config(j, "config.json");
  EXPECT_EQ(c.model_type, "deepseek");
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.topk_method, TopkMethod::group_limited_greedy);
  EXPECT_FALSE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(2));
  j["rope_scaling"] = nullptr;
  c = parse_config(j, "config.json");
  EXPECT_FALSE(c.rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c.softmax_scale(), 1.0 / std::sqrt(192.0));
}

TEST(Config, UnsupportedValuesAreRefusedWithKeyAndValue) {
  struct Case {
    const char* key;
    json value;
    const char* expect;
  };
  std::vector<Case> cases = {
      {"scoring_func", "sigmoid", "\"scoring_func\": \"sigmoid\""},
      {"topk_method", "noaux_tc", "\"topk_method\": \"noaux_tc\""},
      {"model_type", "llama", "\"model_type\": \"llama\""},
      {"hidden_act", "gelu", "\"hidden_act\": \"gelu\""},
      {"qk_rope_head_dim", 63, "qk_rope_head_dim"},
      {"hidden_size", "big", "\"hidden_size\" must be an integer"},
      {"num_experts_per_tok", 100, "num_experts_per_tok"},
      {"attention_bias", true, "attention_bias"},
  };
  for (auto& c : cases) {
    json j = lite_config();
    j[c.key] = c.value;
    std::string e = error_of(j);
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.key << ": " << e;
  }
  json j = lite_config();
  j["rope_scaling"]["type"] = "dynamic";
  EXPECT_NE(error_of(j).find("\"rope_scaling.type\": \"dynamic\""), std::string::npos);
  j = lite_config();
  j.erase("kv_lora_rank");
  EXPECT_NE(error_of(j).find("\"kv_lora_rank\" is missing"), std::string::npos);
  j = lite_config();
  j["topk_method"] = "group_limited_greedy";
  j["n_group"] = 7;
  EXPECT_NE(error_of(j).find("n_group"), std::string::npos);
}

}  // namespace
}  // namespace dsv2
