#pragma once
// The model contract: every DeepSeek-V2 hyperparameter the forward pass reads, one line each.
// Filled from a checkpoint's config.json by load_config() (io/config.cpp), which refuses values
// the engine does not implement instead of falling back silently.
#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace dsv2 {

enum class TopkMethod { greedy, group_limited_greedy };

struct RopeScaling {
  bool yarn = false;                      // rope_scaling.type == "yarn"; false: plain RoPE
  double factor = 1.0;                    // context extension factor f
  int64_t original_max_position = 4096;   // original_max_position_embeddings L
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 1.0;                    // cos/sin are scaled by m(f, mscale) / m(f, mscale_all_dim)
  double mscale_all_dim = 0.0;            // 0 = not set; softmax scale gets m(f, mscale_all_dim)^2
};

struct ModelConfig {
  std::string model_type;        // "deepseek_v2" or "deepseek"
  int64_t vocab_size = 0;        // embedding rows (may exceed the tokenizer's ids: padding rows)
  int64_t hidden_size = 0;       // H
  int64_t intermediate_size = 0; // dense MLP width
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;    // input/post/final norms; q_a/kv_a norms always use 1e-6
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;

  // MLA
  int64_t q_lora_rank = 0;       // 0: plain q_proj [heads*(nope+rope), H]
  int64_t kv_lora_rank = 0;      // latent width c
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;  // one k_pe of this width is shared by all heads
  int64_t v_head_dim = 0;

  // DeepSeekMoE
  int64_t n_routed_experts = 0;  // 0: every layer dense
  int64_t n_shared_experts = 0;  // shared MLP width n_shared * moe_intermediate_size
  int64_t moe_intermediate_size = 0;
  int64_t num_experts_per_tok = 0;
  TopkMethod topk_method = TopkMethod::greedy;
  int64_t n_group = 1;           // contiguous expert groups (group_limited_greedy)
  int64_t topk_group = 1;        // groups kept
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;

  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1, eos_token_id = -1;
  std::string torch_dtype;       // as written in config.json ("bfloat16", ...), informational

  // Derived quantities.
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int64_t kv_cache_dim() const { return kv_lora_rank + qk_rope_head_dim; }  // 576 for published models
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // softmax scale = (nope+rope)^-0.5 * m^2 with m from mscale_all_dim (reference section 3).
  double softmax_scale() const;
  // Scale applied to cos/sin: m(f, mscale) / m(f, mscale_all_dim); 1 without YaRN.
  double rope_attention_factor() const;
  std::string summary() const;
};

// YaRN helper m(f, mscale) = 0.1 * mscale * ln(f) + 1 for f > 1, else 1.
double yarn_mscale(double factor, double mscale);

ModelConfig parse_config(const nlohmann::json& j, const std::string& source_name);
ModelConfig load_config(const std::filesystem::path& config_json);

}  // namespace dsv2
